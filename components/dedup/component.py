"""KFP component of the dedup stage: the pool without near-duplicates of the test set."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import image


@dsl.component(base_image=image("dedup"), install_kfp_package=False)
def dedup(pool: Input[Dataset], pool_embeddings: Input[Dataset], eval_embeddings: Input[Dataset],
          deduped: Output[Dataset], result: Output[Dataset], metrics: Output[Metrics],
          threshold: float = 0.998, calibrate: bool = False, calibration_images: int = 1000,
          target_fpr: float = 0.001, index: str = "auto", nprobe: int = 0, seed: int = 0,
          enabled: bool = True, verifier: str = "", verify_candidates: int = 5,
          verifier_model: Input[Model] = None, known_duplicates: list = []):
    """Near-duplicates of the evaluation set in the pool, removed.

    Args:
        pool: the unlabelled pool.
        pool_embeddings: the embed output of the pool.
        eval_embeddings: the embed output of the evaluation set (same embedder).
        threshold: cosine similarity at and above which a pair is a near-duplicate (with a
            verifier: its logit margin); with calibrate, a negative value takes the calibrated
            threshold.
        calibrate: measure recall per transform and the false-positive rate first.
        calibration_images: evaluation images copied by the calibration.
        target_fpr: calibration: the largest share of distinct images flagged.
        index: auto | flat | ivf_flat | ivf_pq.
        nprobe: IVF lists visited per query (0: from the size).
        seed: seed of the calibration draw and the IVF training sample.
        enabled: false passes the pool through unchanged.
        verifier: a trained pair_verifier's model directory URI ("": none): each pool image's
            nearest evaluation images are verified pair by pair.
        verify_candidates: with a verifier, nearest evaluation images verified per pool image.
        verifier_model: the verifier as a train task's output (instead of verifier).
        known_duplicates: calibration: pairs [key, key] of evaluation images a person judged to
            be the same image (the calibration's calibration_flags.png); not false flags.

    Returns:
        deduped: the pool as the next steps read it (its shards, minus the removed keys).
        result: pairs.parquet, removed.parquet, manifest.parquet, contact_sheet.png, summary.json.
        metrics: removed, kept, threshold.
    """
    from components.dedup.runner import run
    run(pool=pool, pool_embeddings=pool_embeddings, eval_embeddings=eval_embeddings,
        deduped=deduped, result=result, metrics=metrics, threshold=threshold, calibrate=calibrate,
        calibration_images=calibration_images, target_fpr=target_fpr, index=index,
        nprobe=nprobe, seed=seed, enabled=enabled, verifier=verifier,
        verify_candidates=verify_candidates, verifier_model=verifier_model,
        known_duplicates=known_duplicates)


@dsl.component(base_image=image("dedup"), install_kfp_package=False)
def verify_pairs(pool: Input[Dataset], pool_embeddings: Input[Dataset], pairs: Output[Dataset],
                 images: int = 50000, pairs_per_image: int = 2, neighbours: int = 10,
                 seed: int = 0):
    """Training pairs of dedup's copy verifier: a pool image and an edit of it (copy), or an
    edit of one of its nearest other images by the descriptor (distinct), side by side.

    Args:
        pool: the unlabelled pool.
        pool_embeddings: the embed output of the pool by the copy descriptor.
        images: pool images drawn (held in memory).
        pairs_per_image: positive pairs per image, and as many negatives.
        neighbours: a negative is an edit of one of the image's this many nearest others.
        seed: seed of the draw and the edits.

    Returns:
        pairs: a labelled dataset (classes distinct, copy) for the train component.
    """
    from components.dedup.runner import run_pairs
    run_pairs(pool=pool, pool_embeddings=pool_embeddings, pairs=pairs, images=images,
              pairs_per_image=pairs_per_image, neighbours=neighbours, seed=seed)
