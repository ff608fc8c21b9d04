"""KFP component of the contrastive stage: SimCLR pre-training on the labelled images and the
pool, labels unused (its own image: timm's LARS)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import image


@dsl.component(base_image=image("contrastive"), install_kfp_package=False)
def contrastive(labelled: Input[Dataset], pool: Input[Dataset], recipe: dict,
                model: Output[Model], seed: int = 0, checkpoints: str = "", launcher: dict = {}):
    """Contrastive pre-training (SimCLR: two views per image, NT-Xent over the global batch).

    Args:
        labelled: the labelled split (its images join the pool; labels unused).
        pool: the unlabelled pool (a dedup step's deduplicated pool: its removed images are
            left out).
        recipe: the training recipe with objective contrastive and its contrastive section
            (views simclr, proj_layers, proj_dim, temperature, memory) and optim (optimizer lars,
            lr_scaling sqrt); see `semisup stage contrastive --help`.
        seed: seed of the initialisation, data order and views.
        checkpoints: store URI for step checkpoints (with the projection head), so a restarted
            step resumes ('' = inside the output artifact).
        launcher: where it trains (LauncherSpec), as for the train component.

    Returns:
        model: the pre-trained encoder with the projection head's hidden layers
            (model_kwargs.head_mlp), and snapshots/epoch-NNN (snapshot_every_epochs).
    """
    from components.contrastive.runner import run
    run(labelled=labelled, pool=pool, recipe=recipe, model=model, seed=seed,
        checkpoints=checkpoints, launcher=launcher)
