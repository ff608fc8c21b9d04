"""KFP component of the score stage: one worker's share of the pool."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import image


@dsl.component(base_image=image("score"), install_kfp_package=False)
def score(teacher: Input[Model], pool: Input[Dataset], scores: Output[Dataset], top_p: int = 10,
          partial_k: int = 16000, use_logits: bool = False, worker: int = 0,
          num_workers: int = 1, batch_size: int = 512, decoder: str = "auto",
          decode_threads: int = 2):
    """Teacher softmax over the pool: top-P classes per image and a partial top-K per class.

    Args:
        teacher: the teacher model.
        pool: the unlabelled pool.
        top_p: classes kept per image (paper: 10; small label spaces: 1-2).
        partial_k: per-class candidates this worker keeps (>= the K you will select).
        use_logits: rank by raw logits instead of softmax (the paper's ablation).
        worker: this worker's index; it scores shards worker, worker+num_workers, ...
        num_workers: how many workers share the pool (a ParallelFor over range(num_workers)).
        batch_size: inference batch.
        decoder: auto (DALI if installed, else PIL), dali (mixed on GPU) or pil (reference).
        decode_threads: DALI CPU decoding threads per worker (recommended: the pod's CPUs).

    Returns:
        scores: per-shard Parquet tables (key, shard, id, class_id, score, p_rank), done
            markers and this worker's partial top-K (class_id, score, id).
    """
    from components.score.runner import run
    run(teacher=teacher, pool=pool, scores=scores, top_p=top_p, partial_k=partial_k,
        use_logits=use_logits, worker=worker, num_workers=num_workers, batch_size=batch_size,
        decoder=decoder, decode_threads=decode_threads)
