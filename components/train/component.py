"""KFP component of the train stage (teacher, baseline, student pre-training, fine-tuning)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import image


@dsl.component(base_image=image("train"), install_kfp_package=False)
def train(data: Input[Dataset], recipe: dict, model: Output[Model], seed: int = 0,
          init_from: Input[Model] = None, inferred: Input[Dataset] = None,
          checkpoints: str = "", launcher: dict = {}, head_mlp: int = -1):
    """Train one model on labelled shards, in this pod or through the PyTorchJob launcher.

    Args:
        data: the dataset to train on (a split output, or a select step's selected set).
        recipe: the training recipe: model, model_kwargs, epochs, batch_size, optim, augment,
            checkpoint, amp, threads (see `semisup stage train --help`); with init_from also
            enabled (false = pass init_from through) and labels (true | inferred).
        seed: seed of the initialisation, data order and augmentation.
        init_from: start from this model (fine-tuning); its architecture is used.
        inferred: the selected set, added to data when recipe.labels is 'inferred'.
        checkpoints: store URI for step checkpoints, so a restarted step resumes
            ('' = inside the output artifact, which does not survive a pod restart).
        launcher: where it trains (LauncherSpec): backend pod (this pod, one process),
            pytorchjob (a PyTorchJob through the training operator: workers, nproc_per_node,
            gpus_per_node, cpu, memory, elastic_min/max, namespace; checkpoints must be a
            store URI) or torchrun (the launcher's local backend); {} = pod.
        head_mlp: fine-tuning from a SimCLR pre-training: how many of its projection head's
            hidden layers the model keeps (0: the encoder; -1: the recipe's model_kwargs).

    Returns:
        model: the trained model (model.safetensors, state.json, metrics.json).
    """
    from components.train.runner import run
    if head_mlp >= 0:
        recipe = dict(recipe, model_kwargs=dict(recipe.get("model_kwargs") or {}, head_mlp=head_mlp))
    run(data=data, recipe=recipe, model=model, seed=seed, init_from=init_from, inferred=inferred,
        checkpoints=checkpoints, launcher=launcher)
