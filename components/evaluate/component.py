"""KFP component of the evaluate stage."""

from typing import List

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import image


@dsl.component(base_image=image("evaluate"), install_kfp_package=False)
def evaluate(model: Input[Model], data: Input[Dataset], metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], name: str = "",
             selection: Input[Metrics] = None) -> float:
    """Top-1/top-5, per-class recall and the confusion matrix of a model on a labelled set.

    Args:
        model: the model to evaluate.
        data: a labelled dataset (e.g. the test set).
        name: the row name in reports, e.g. 'supervised baseline'.
        selection: the select step's metrics for the set this model was pre-trained on
            (recorded beside the accuracy: K, strategy, precision).

    Returns:
        metrics: top1/top5 in the UI; metrics.json inside holds everything.
        confusion: the confusion matrix (rows = true class).
        Output: top-1 accuracy.
    """
    from components.evaluate.runner import run
    return run(model=model, data=data, metrics=metrics, confusion=confusion, name=name,
               selection=selection)


@dsl.component(base_image=image("evaluate"), install_kfp_package=False)
def gather_metrics(items: Input[List[Metrics]], gathered: Output[Metrics]):
    """Reduce the evaluations of a ParallelFor (dsl.Collected) into one artifact, so that steps
    inside a dsl.If can use them (the compiler cannot route a Collected list into a condition).

    Args:
        items: the evaluations of every iteration.

    Returns:
        gathered: metrics.json holding {"items": [each evaluation's metrics.json]}.
    """
    from components.evaluate.runner import gather
    gather(items, gathered)
