"""What the dedup component runs: semisup_core.dedup.stage, and the deduplicated pool as a reference."""

from __future__ import annotations

from semisup_core import config, storage
from semisup_core.dedup.stage import DedupConfig, dedup

from components.artifacts import dataset_uri, location, write_ref


def run(pool, pool_embeddings, eval_embeddings, deduped, result, metrics, threshold: float,
        calibrate: bool, calibration_images: int, target_fpr: float, index: str, nprobe: int,
        seed: int, enabled: bool = True, verifier: str = "", verify_candidates: int = 5,
        verifier_model=None, known_duplicates: list | None = None) -> dict:
    """``deduped`` refers to the pool's shards with ``exclude`` = this run's removed keys."""
    if not enabled:
        write_ref(deduped, dataset_uri(pool))
        summary = {"enabled": False}
        storage.write_json(storage.join(location(result), "summary.json"), summary)
        return summary
    cfg = config.build(DedupConfig, {
        "pool": location(pool_embeddings), "eval_sets": [location(eval_embeddings)],
        "out": location(result), "threshold": None if calibrate and threshold < 0 else threshold,
        "calibrate": calibrate, "calibration_images": calibration_images,
        "target_fpr": target_fpr, "index": index, "nprobe": nprobe or None, "seed": seed,
        "verifier": location(verifier_model) if verifier_model is not None else verifier or None,
        "verify_candidates": verify_candidates,
        "known_duplicates": [tuple(p) for p in known_duplicates or []]},
        "dedup component")
    summary = dedup(cfg)
    write_ref(deduped, dataset_uri(pool), exclude=location(result))
    for k in ("removed", "kept", "threshold", "removed_fraction"):
        metrics.log_metric(k, summary[k])
    return summary


def run_pairs(pool, pool_embeddings, pairs, images: int, pairs_per_image: int, neighbours: int,
              seed: int) -> dict:
    """The verify-pairs stage on the pool's shards, written into ``pairs``."""
    from semisup_core.dedup.verifier import VerifyPairsConfig, verify_pairs
    cfg = config.build(VerifyPairsConfig, {
        "dataset": dataset_uri(pool), "embeddings": location(pool_embeddings),
        "out": location(pairs), "images": images, "pairs_per_image": pairs_per_image,
        "neighbours": neighbours, "seed": seed}, "verify_pairs component")
    return verify_pairs(cfg)
