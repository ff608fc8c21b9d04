"""KFP component of the distill stage: a fixed teacher's soft labels into a student."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import image


@dsl.component(base_image=image("distill"), install_kfp_package=False)
def distill(labelled: Input[Dataset], pool: Input[Dataset], teacher: Input[Model], recipe: dict,
            model: Output[Model], seed: int = 0, temperature: float = 1.0,
            checkpoints: str = "", launcher: dict = {}):
    """Distillation (SimCLRv2's third step): the student minimises the cross-entropy between the
    teacher's and its own temperature-scaled softmax on every image.

    Args:
        labelled: the labelled split (its images are distilled too; their labels count only
            with recipe.distill.label_weight > 0).
        pool: the unlabelled pool (a dedup step's deduplicated pool: its removed images are
            left out).
        teacher: the teacher (e.g. the fine-tuned SimCLR model); it runs on the fly on each
            augmented batch, so its soft labels need no storage.
        recipe: the student's training recipe (model: the teacher's for self-distillation, a
            smaller one for big-to-small) with objective distill; see `semisup stage distill
            --help`.
        seed: seed of the initialisation, data order and augmentation.
        temperature: tau of both softmaxes.
        checkpoints: store URI for step checkpoints, so a restarted step resumes ('' = inside
            the output artifact).
        launcher: where it trains (LauncherSpec), as for the train component.

    Returns:
        model: the distilled student.
    """
    from components.distill.runner import run
    run(labelled=labelled, pool=pool, teacher=teacher, recipe=recipe, model=model, seed=seed,
        temperature=temperature, checkpoints=checkpoints, launcher=launcher)
