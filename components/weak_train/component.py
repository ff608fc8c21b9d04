"""KFP component of the weak-train stage: weak pre-training on the synsets' soft targets (its
own image, which the PyTorchJob pods of a weak recipe run too)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import image


@dsl.component(base_image=image("weak-train"), install_kfp_package=False)
def weak_train(data: Input[Dataset], recipe: dict, model: Output[Model], seed: int = 0,
               checkpoints: str = "", launcher: dict = {}):
    """Weak pre-training (Mahajan et al. 2018): softmax cross-entropy against 1/k soft targets,
    k the image's labels (its tags' synsets).

    Args:
        data: the synsets step's resampled training set (its train output: targets.parquet
            beside the shards gives every image its labels).
        recipe: the training recipe with objective weak (model, model_kwargs, epochs: one epoch
            is synsets' draws passes, batch_size, optim); see `semisup stage weak-train --help`.
        seed: seed of the initialisation, data order and augmentation.
        checkpoints: store URI for step checkpoints, so a restarted step resumes ('' = inside
            the output artifact).
        launcher: where it trains (LauncherSpec), as for the train component; its PyTorchJob
            pods run `semisup stage weak-train` in images/weak-train.

    Returns:
        model: the weak-pre-trained network (its head: the synset vocabulary), to fine-tune
            with the train component's init_from.
    """
    from components.weak_train.runner import run
    run(data=data, recipe=recipe, model=model, seed=seed, checkpoints=checkpoints,
        launcher=launcher)
