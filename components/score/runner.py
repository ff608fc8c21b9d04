"""What the score component runs: one worker's share of semisup_core.teacher_student.score."""

from __future__ import annotations

from semisup_core import config
from semisup_core.teacher_student.score import ScoreConfig, score

from components.artifacts import dataset_exclude, dataset_uri, location


def run(teacher, pool, scores, top_p: int, partial_k: int, use_logits: bool, worker: int,
        num_workers: int, batch_size: int, decoder: str = "auto", decode_threads: int = 2) -> dict:
    """Score shards ``worker::num_workers`` of ``pool`` into the ``scores`` artifact."""
    cfg = config.build(ScoreConfig, {  # a bad parameter is one line naming it
        "model": location(teacher), "pool": dataset_uri(pool), "out": location(scores),
        "top_p": top_p, "partial_k": partial_k, "use_logits": use_logits, "worker": worker,
        "num_workers": num_workers, "batch_size": batch_size, "decoder": decoder,
        "decode_threads": decode_threads, "exclude": dataset_exclude(pool)}, "score component")
    summary = score(cfg)
    scores.metadata.update(worker=worker, num_workers=num_workers, top_p=top_p)
    return summary
