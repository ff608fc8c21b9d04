"""What the synsets component runs: the pool without dedup's removed images, its SIMULATED
tags when asked (semisup_core.wsl.simulate), then semisup_core.wsl.synsets.run_synsets; the
training set and the tag candidates become references into the result."""

from __future__ import annotations

from semisup_core import config, storage
from semisup_core.data.manifest import without_keys
from semisup_core.errors import ConfigError
from semisup_core.tables import read_table
from semisup_core.wsl import wordnet
from semisup_core.wsl.simulate import SimulatedTags, simulate_tags as simulate
from semisup_core.wsl.synsets import SynsetsConfig, run_synsets

from components.artifacts import dataset_exclude, dataset_uri, integral, location, write_ref


def _deduplicated(data, where: str) -> str:
    """``data``'s URI; a deduplicated pool (a reference with ``exclude``) is first copied to
    ``where`` without its removed images. (artifacts.pool_for_training does the same through
    dedup's module, which imports torch: this image has none.)"""
    uri, exclude = dataset_uri(data), dataset_exclude(data)
    if not exclude:
        return uri
    removed = read_table(storage.join(exclude, "removed.parquet"), ["key"])["key"].to_pylist()
    return without_keys(uri, set(removed), where)


def run(data, result, train, candidates, metrics, spec: dict | None = None, seed: int = 0,
        simulate_tags: bool = False, oracle=None, noise_rate: float = 0.3,
        confusion_share: float = 0.5, own_weight: float = 0.7) -> dict:
    out = location(result)
    fields = integral(dict(spec or {}))
    pool = _deduplicated(data, storage.join(out, "pool-deduped"))
    if simulate_tags:
        if oracle is None:
            raise ConfigError("synsets: simulate_tags needs the oracle (the pool's hidden labels)")
        tags = config.build(SimulatedTags, {"noise_rate": noise_rate, "own_weight": own_weight,
                                            "confusion_share": confusion_share},
                            "synsets component (simulated tags)")
        tagged = storage.join(out, "pool-tagged")
        simulate(pool, dataset_uri(oracle), tagged, tags, seed,
                 fields.get("wordnet", wordnet.DEFAULT_ROOT))
        pool = tagged
    cfg = config.build(SynsetsConfig, dict(fields, data=pool, out=out, seed=seed),
                       "synsets component")
    summary = run_synsets(cfg)
    write_ref(train, storage.join(out, "train") if "train" in summary else "")
    write_ref(candidates,
              storage.join(out, "candidates.parquet") if "candidates" in summary else "")
    for key in ("vocabulary_size", "mapped_tags", "distinct_tags", "images_with_labels"):
        metrics.log_metric(key, summary[key])
    if summary.get("candidates"):
        metrics.log_metric("candidate_pairs", summary["candidates"]["rows"])
    if summary.get("tags_simulated"):
        metrics.log_metric("simulated_noise_measured", summary["tags_simulated"]["noise_measured"])
    result.metadata.update(vocabulary=cfg.vocabulary, vocabulary_size=summary["vocabulary_size"],
                           tags_simulated=bool(summary.get("tags_simulated")))
    return summary
