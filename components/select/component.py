"""KFP component of the select stage: the ranked manifest and the student's training set."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import image


@dsl.component(base_image=image("select"), install_kfp_package=False)
def select(pool: Input[Dataset], manifest: Output[Dataset], selected: Output[Dataset],
           metrics: Output[Metrics], scores: Input[List[Dataset]] = None,
           reuse: Input[Dataset] = None, strategy: str = "balanced", k: int = 16000,
           k_law: str = "frequency", threshold: float = 0.5, seed: int = 0,
           oracle: Input[Dataset] = None, restrict: str = "none",
           candidates: Input[Dataset] = None, materialise: bool = True):
    """Merge every scoring worker's output into the top-K images per class.

    Args:
        scores: the score outputs of all workers (dsl.Collected over the scoring ParallelFor).
        reuse: instead of scores: another select step's manifest; its scores are read again
            (a K sweep in a ParallelFor cannot consume another loop's Collected outputs).
        pool: the unlabelled pool the scores refer to.
        strategy: balanced (paper default), unbalanced, random (balanced-with-tags) or threshold.
        k: images per class (paper: 16k of 1B for 1000 classes).
        k_law: unbalanced: frequency (predicted class frequency) or zipf.
        threshold: threshold strategy: minimum score kept.
        seed: random strategy: seed of the draw.
        oracle: the pool's hidden labels (oracle.parquet) for precision analysis (optional).
        restrict: none, tags (an image stays a candidate for class c only if candidates pairs
            it with c: with strategy random the paper's balanced-with-tags; needs the scores of
            every class, score top_p >= the class count) or targeted (only images with any
            candidate class: the paper's IG-1B-Targeted pool).
        candidates: the tag candidates (a synsets step's candidates output, or a reference to
            a Parquet table key, class_id); required unless restrict is none; with the oracle
            their precision and recall are analysed too.
        materialise: copy the selected images into ``selected`` here (one task); false leaves
            it to parallel materialise tasks after this one (the pipelines' materialise_workers).

    Returns:
        manifest: manifest.parquet (class_id, rank, score, shard, key, id), summary.json and
            scores.json (the score directories read).
        selected: the student's training set: one sample per (image, class) pair (with
            materialise false: written by the materialise tasks).
        metrics: selected count, precision and distractor share (with an oracle).
    """
    from components.select.runner import run
    run(scores=scores, pool=pool, manifest=manifest, selected=selected, metrics=metrics,
        strategy=strategy, k=k, k_law=k_law, threshold=threshold, seed=seed, oracle=oracle,
        reuse=reuse, restrict=restrict, candidates=candidates, materialise=materialise)
