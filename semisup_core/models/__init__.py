"""Model registry: ``create_model(name, num_classes, ...)`` and ``list_models()``.

Every registered model is an ``nn.Module`` whose ``forward(x)`` returns logits
``N x num_classes`` and whose ``forward_features(x)`` returns the penultimate
embedding ``N x feature_dim`` (used by dedup, LLP and SimCLR later).
"""

from semisup_core.models.registry import create_model, list_models, model_info, register_model
from semisup_core.models import pair_verifier, small_resnet, torchvision_models  # noqa: F401,E501  (registers models)

__all__ = ["create_model", "list_models", "model_info", "register_model"]
