"""What the data components run: semisup_core's import and split stages, skipped when their
output already exists (data is imported once and shared by every run)."""

from __future__ import annotations

import logging

from semisup_core import config, storage
from semisup_core.errors import ConfigError

from components.artifacts import dataset_uri, write_ref
from semisup_core.data.config import ImportConfig, SplitConfig
from semisup_core.data.stages import run_import, run_split

log = logging.getLogger(__name__)


def _done(cfg, marker: str, saved: str) -> bool:
    """True when ``cfg``'s output exists from the same config; a different one is an error."""
    if not storage.exists(marker):
        return False
    old = config.read_yaml(saved) if storage.exists(saved) else {}
    new = cfg.model_dump(mode="json")
    # paths (out, src, dataset, distractors) may be spelled relative or absolute; what decides
    # the content is the rest (source, split, labels_per_class, seed, samples_per_shard)
    paths = {"out", "src", "dataset", "distractors"}
    # nor how the work was split (the hash-order split is the same for any number of workers)
    paths |= {"phase", "worker", "num_workers", "spill_mb"}
    diff = sorted(k for k in new if k in old and k not in paths and old[k] != new[k])
    if diff:
        raise ConfigError(f"{cfg.out} holds data made with another {diff[0]} ({old[diff[0]]!r}, "
                         f"not {new[diff[0]]!r}); choose another output directory")
    log.info("%s already exists; skipping", cfg.out)
    return True


def import_data(source: str, src: str, root: str, name: str, split: str, dataset) -> str:
    """Import ``src`` into ``root/name``; ``dataset`` becomes a reference to it. An empty
    ``src`` imports nothing (a reference to '')."""
    if not src:
        write_ref(dataset, "")
        return ""
    out = storage.join(root, name)
    cfg = config.build(ImportConfig, {"source": source, "src": src, "out": out, "split": split},
                       "import component")
    if not _done(cfg, storage.join(out, "dataset.json"), storage.join(out, "import-config.yaml")):
        run_import(cfg)
    write_ref(dataset, out)
    return out


def split_dir(root: str, labels_per_class: int, seed: int, distractors: bool,
              order: str = "permutation") -> str:
    """Where a split lives: one directory per (N, seed, distractors, order), shared by every run."""
    return storage.join(root, f"split-n{labels_per_class}-s{seed}"
                              f"{'' if distractors else '-nodistract'}"
                              f"{'-hash' if order == 'hash' else ''}")


def _split_config(dataset, root, labels_per_class, seed, distractor, **kw) -> SplitConfig:
    dataset = dataset_uri(dataset)
    distractors = [d for d in [dataset_uri(distractor) if distractor is not None else ""] if d]
    out = split_dir(root, labels_per_class, seed, bool(distractors), kw.get("order", "permutation"))
    return config.build(SplitConfig, {"dataset": dataset, "out": out, "seed": seed,
                                      "labels_per_class": labels_per_class,
                                      "distractors": distractors, **kw}, "split component")


def split_data(dataset, root: str, labels_per_class: int, seed: int, distractor,
               labelled, pool, oracle, order: str = "permutation",
               num_workers: int = 1) -> tuple[str, str, str]:
    """Split into ``split_dir(root, ...)``; the three outputs become references to the
    labelled set, the pool and the oracle. Returns their URIs. In hash order with
    ``num_workers`` > 1 after the parallel phases (``split_phase``), it finishes the split.

    ``distractor`` may be None or a reference to '' (an import that was switched off)."""
    cfg = _split_config(dataset, root, labels_per_class, seed, distractor, order=order,
                        num_workers=num_workers)
    out = cfg.out
    if not _done(cfg, storage.join(out, "unlabelled", "dataset.json"),
                 storage.join(out, "split-config.yaml")):
        run_split(cfg)
    uris = (storage.join(out, "labelled"), storage.join(out, "unlabelled"),
            storage.join(out, "oracle.parquet"))
    for artifact, uri in zip((labelled, pool, oracle), uris):
        write_ref(artifact, uri)
    return uris


def split_phase(dataset, root: str, labels_per_class: int, seed: int, distractor, phase: str,
                worker: int, num_workers: int, spill_mb: float) -> str:
    """One phase of the split in hash order (choose, or map/reduce of worker ``worker`` of
    ``num_workers``): its markers under the split's ``_work``; skipped once the split is done."""
    cfg = _split_config(dataset, root, labels_per_class, seed, distractor, order="hash",
                        phase=phase, worker=worker, num_workers=num_workers, spill_mb=spill_mb)
    if storage.exists(storage.join(cfg.out, "unlabelled", "dataset.json")):
        log.info("%s already exists; skipping %s", cfg.out, phase)
        return f"{phase} {worker}: done before"
    run_split(cfg)
    return f"{phase} {worker}"


def materialise(manifest, pool, selected, worker: int, num_workers: int,
                samples_per_shard: int) -> str:
    """This task's share of the selected set, written into the select step's ``selected``
    artifact (``semisup_core.data.stages.run_materialise``); skipped once dataset.json is there."""
    from components.artifacts import location, store_configured
    from semisup_core.data.config import MaterialiseConfig
    from semisup_core.data.stages import run_materialise
    out = location(selected)
    if (selected.uri or "").startswith(("minio://", "s3://")) and not store_configured():
        raise ConfigError(f"materialise writes into {selected.uri}, an artifact on the store: "
                          "the task needs the store's endpoint and credentials (S3_ENDPOINT...)")
    if storage.exists(storage.join(out, "dataset.json")):
        log.info("%s already exists; skipping worker %d", out, worker)
        return f"materialise {worker}: done before"
    done = run_materialise(config.build(MaterialiseConfig, {
        "manifest": location(manifest), "pool": dataset_uri(pool), "out": out,
        "samples_per_shard": samples_per_shard, "worker": worker, "num_workers": num_workers},
        "materialise component"))
    return f"materialise {worker}" + (": dataset.json written" if done["complete"] else "")
