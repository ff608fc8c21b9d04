"""The ``import``, ``split`` and ``materialise`` stages: typed config in, dataset directories out."""

from __future__ import annotations

from semisup_core import config
from semisup_core import storage
from semisup_core.data.config import SOURCE_FIELDS, ImportConfig, MaterialiseConfig, SplitConfig
from semisup_core.data.dataset import read_meta
from semisup_core.data.importers import import_dataset
from semisup_core.data.manifest import manifest_dataset
from semisup_core.data.split import split_labelled
from semisup_core.data.split_hash import split_hashed
from semisup_core.tables import read_table


def run_import(cfg: ImportConfig) -> dict:
    """Import ``cfg.src`` into shards under ``cfg.out``; returns a summary (with the tag
    report for the tagged sources)."""
    kw = {"samples_per_shard": cfg.samples_per_shard}
    kw.update({f: getattr(cfg, f) for f in SOURCE_FIELDS[cfg.source]})
    meta = import_dataset(cfg.source, cfg.src, cfg.out, **kw)
    config.save(cfg, cfg.out, "import-config.yaml")
    summary = {"out": cfg.out, "name": meta.name, "num_samples": meta.num_samples,
               "num_classes": meta.num_classes, "shards": len(meta.shards)}
    if "tags" in meta.extra:
        summary["tags"] = meta.extra["tags"]
    return summary


def run_split(cfg: SplitConfig) -> dict:
    """Write ``labelled/``, ``unlabelled/`` and ``oracle.parquet`` under ``cfg.out``."""
    if cfg.order == "hash":
        result = split_hashed(cfg.dataset, cfg.out, cfg.labels_per_class, cfg.seed,
                              pool_extra=cfg.distractors, samples_per_shard=cfg.samples_per_shard,
                              phase=cfg.phase, worker=cfg.worker, num_workers=cfg.num_workers,
                              spill_mb=cfg.spill_mb)
        if isinstance(result, dict):  # one phase of several tasks: its marker or plan
            return {"phase": cfg.phase, **{k: v for k, v in result.items() if k != "labelled_keys"}}
    else:
        result = split_labelled(cfg.dataset, cfg.out, cfg.labels_per_class, cfg.seed,
                                pool_extra=cfg.distractors, samples_per_shard=cfg.samples_per_shard)
    config.save(cfg, cfg.out, "split-config.yaml")
    return {"labelled": result.labelled_uri, "labelled_samples": result.labelled.num_samples,
            "unlabelled": result.unlabelled_uri, "unlabelled_samples": result.unlabelled.num_samples,
            "oracle": result.oracle_uri}


def run_materialise(cfg: MaterialiseConfig) -> dict:
    """This worker's share of the student's training set from a manifest (``manifest_dataset``)."""
    uri = cfg.manifest if cfg.manifest.endswith(".parquet") else storage.join(cfg.manifest,
                                                                               "manifest.parquet")
    manifest = read_table(uri, columns=["key", "class_id", "shard"])
    manifest_dataset(manifest, cfg.pool, cfg.out, cfg.samples_per_shard, cfg.worker,
                     cfg.num_workers)
    done = storage.exists(storage.join(cfg.out, "dataset.json"))
    return {"out": cfg.out, "worker": cfg.worker, "num_workers": cfg.num_workers,
            "complete": done, "samples": read_meta(cfg.out).num_samples if done else None}
