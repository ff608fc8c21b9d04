"""What the select component runs: merge the scoring partials into the ranked manifest and the
student's training set (semisup_core.teacher_student.select + manifest_dataset), with the oracle analysis."""

from __future__ import annotations

from semisup_core import config, storage
from semisup_core.analysis import selection_analysis
from semisup_core.data.manifest import manifest_dataset
from semisup_core.errors import ConfigError
from semisup_core.teacher_student.select import SelectConfig, read_manifest, select

from components.artifacts import dataset_uri, location


SCORES_INDEX = "scores.json"


def _score_dirs(scores, reuse) -> list[str]:
    if (scores is None) == (reuse is None):
        raise ConfigError("select needs either the scoring outputs or another select step to "
                          "reuse, not both")
    if reuse is not None:
        return storage.read_json(storage.join(location(reuse), SCORES_INDEX))["scores"]
    return [location(s) for s in scores]


def run(scores, pool, manifest, selected, metrics, strategy: str, k: int, k_law: str,
        threshold: float, seed: int, oracle=None, reuse=None, restrict: str = "none",
        candidates=None, materialise: bool = True) -> dict:
    """``scores``: the score artifacts of every worker (a KFP ``dsl.Collected`` list); or
    ``reuse``: another select step's manifest artifact, whose scores are read again (a K sweep
    inside a ParallelFor cannot consume the scoring loop's Collected outputs). ``candidates``:
    the tag candidates table's artifact (a reference to '' = none) for ``restrict``;
    ``materialise`` false leaves ``selected`` to the materialise tasks."""
    out = location(manifest)
    pool = dataset_uri(pool)
    oracle = dataset_uri(oracle) if oracle is not None else ""
    candidates = (dataset_uri(candidates) if candidates is not None else "") or None
    dirs = _score_dirs(scores, reuse)
    summary = select(config.build(SelectConfig, {
        "scores": dirs, "out": out, "strategy": strategy, "k": k, "k_law": k_law,
        "threshold": threshold, "seed": seed, "restrict": restrict, "candidates": candidates},
        "select component"))
    storage.write_json(storage.join(out, SCORES_INDEX), {"scores": dirs})
    table = read_manifest(storage.join(out, "manifest.parquet"))
    if materialise:
        manifest_dataset(table, pool, location(selected))
    doc = {"k": k, "strategy": strategy, "k_law": k_law, "restrict": restrict,
           "selected": summary["selected"],
           "unique_images": summary["unique_images"], "per_class": summary["per_class"],
           "pool_images": summary["pool_images"], "corrupt": summary["corrupt"],
           "manifest": storage.join(out, "manifest.parquet")}
    if oracle:
        doc.update(selection_analysis(table, oracle, candidates=candidates))
    storage.write_json(storage.join(location(metrics), "selection.json"), doc)
    for key in ("selected", "unique_images", "corrupt", "precision", "distractor_share"):
        if doc.get(key) is not None:
            metrics.log_metric(key, round(doc[key], 6) if isinstance(doc[key], float) else doc[key])
    manifest.metadata.update(k=k, strategy=strategy, restrict=restrict, rows=summary["selected"])
    return doc
