"""KFP component of the llp stage: LLP training (its own image: the kNN core needs faiss)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import image


@dsl.component(base_image=image("llp"), install_kfp_package=False)
def llp(labelled: Input[Dataset], pool: Input[Dataset], recipe: dict, model: Output[Model],
        seed: int = 0, checkpoints: str = "", launcher: dict = {},
        baseline: Input[Model] = None, warm_start: str = "none"):
    """Train with Local Label Propagation (Zhuang et al. 2019) on the labels and the pool.

    Args:
        labelled: the labelled split.
        pool: the unlabelled pool (a dedup step's deduplicated pool: its removed images are
            left out).
        recipe: the training recipe with objective llp and its llp section (K, T, tau, density,
            warm_epochs, softmax_support; see `semisup stage llp --help`).
        seed: seed of the initialisation, the memory bank, data order and augmentation.
        checkpoints: store URI for step checkpoints (with the memory bank and label store), so a
            restarted step resumes ('' = inside the output artifact).
        launcher: where it trains (LauncherSpec), as for the train component.
        baseline: the supervised baseline's model (its architecture must be the recipe's).
        warm_start: baseline (start from the baseline's weights: the demo's warm start) or none.

    Returns:
        model: the trained classifier (model.safetensors, state.json, metrics.json) with
            pseudo_labels.parquet and pseudo_labels/epoch-NNN.parquet (one per round).
    """
    from components.llp.runner import run
    run(labelled=labelled, pool=pool, recipe=recipe, model=model, seed=seed,
        checkpoints=checkpoints, launcher=launcher, baseline=baseline, warm_start=warm_start)
