"""The demo's data split in hash order as parallel tasks (issue 21: the split at any pool size).

    import Fashion-MNIST train + MNIST -> choose (the labelled draw, the plan)
      -> map x W (each task routes its share of the pool's shards into the buckets)
      -> reduce x W (each task writes its buckets' pool shards and oracle parts)
      -> finish (the split's dataset.json files and oracle; the references the methods read)

The split lands in ``<data_root>/split-n<N>-s<seed>[-nodistract]-hash``; any method's pipeline
run with ``split_order: hash`` and the same ``data_root`` finds it there and reuses it. The
result is byte for byte what one process writes (``semisup data split --set order=hash``),
for any number of workers (tested). Defaults are the split stage's
(semisup_core.data.demo_data.SplitRunConfig). ``semisup run split --config
configs/split_demo.yaml`` runs it under kfp.local. Recompile after any change:
``.venv/bin/semisup pipelines compile``.
"""

import json
import os

from kfp import dsl
from kfp.dsl import pipeline_context

from components.data.component import import_data, split_data, split_phase
from components.workers.component import joined, worker_indices
from pipelines import compile_main, on_platform, with_resource_docs
from pipelines.resources import DEFAULT as _R, PROFILES
from semisup_core import storage
from semisup_core.data.demo_data import SplitRunConfig

NAME = "split"
PIPELINE = "split_pipeline"
CONFIG = SplitRunConfig
_S = SplitRunConfig()


@dsl.pipeline(name=NAME, description="The labelled/unlabelled split in hash order as parallel "
              "map and reduce tasks: memory independent of the pool's size")
@with_resource_docs
def split_pipeline(
        data_root: str = _S.out + "/data",
        fashion_mnist: str = _S.fashion_mnist,
        mnist: str = _S.mnist,
        labels_per_class: int = _S.labels_per_class,
        seed: int = _S.seed,
        num_workers: int = _S.num_workers,
        spill_mb: float = _S.spill_mb,
        light_cpu: str = _R.light.cpu,
        light_memory: str = _R.light.memory):
    """Import, then split in hash order over num_workers parallel tasks.

    Args:
        data_root: directory URI for the imported datasets and the split.
        fashion_mnist: Fashion-MNIST IDX directory (its train set is split).
        mnist: MNIST IDX directory: its train digits join the pool as distractors ('' = none).
        labels_per_class: labelled images per class.
        seed: seed of the labelled draw and of the pool's order.
        num_workers: parallel map tasks and parallel reduce tasks.
        spill_mb: MiB of pool images a map task buffers before it spills them to its runs.
    """
    train = import_data(source="fashion-mnist", src=fashion_mnist, root=data_root,
                        name="fmnist-train", split="train").set_display_name("import fmnist-train")
    digits = import_data(source="mnist", src=mnist, root=data_root, name="mnist-train",
                         split="train").set_display_name("import mnist-train")
    common = dict(dataset=train.outputs["dataset"], root=data_root,
                  labels_per_class=labels_per_class, seed=seed,
                  distractor=digits.outputs["dataset"])
    choose = split_phase(**common, phase="choose", num_workers=num_workers, spill_mb=spill_mb)
    choose.set_display_name("split: choose")
    idx = worker_indices(n=num_workers).set_display_name("split: workers")
    with dsl.ParallelFor(items=idx.output) as w:
        mapped = split_phase(**common, phase="map", worker=w, num_workers=num_workers,
                             spill_mb=spill_mb).after(choose)
        mapped.set_display_name("split: map")
    maps = joined(done=dsl.Collected(mapped.output)).set_display_name("split: maps done")
    with dsl.ParallelFor(items=idx.output) as w:
        reduced = split_phase(**common, phase="reduce", worker=w, num_workers=num_workers,
                              spill_mb=spill_mb).after(maps)
        reduced.set_display_name("split: reduce")
    reduces = joined(done=dsl.Collected(reduced.output)).set_display_name("split: reduces done")
    split_data(**common, order="hash", num_workers=num_workers).after(reduces) \
        .set_display_name("split: finish")
    on_platform(pipeline_context.Pipeline.get_default_pipeline().tasks.values(), locals())


def arguments(cfg: SplitRunConfig, out: str, local: bool = True, profile: str = "cpu") -> dict:
    def absolute(p: str) -> str:
        return os.path.abspath(p) if local and p and storage.is_local(p) else p
    return dict(data_root=storage.join(out, "data"), fashion_mnist=absolute(cfg.fashion_mnist),
                mnist=absolute(cfg.mnist) if cfg.distractors else "",
                labels_per_class=cfg.labels_per_class, seed=cfg.seed,
                num_workers=cfg.num_workers, spill_mb=cfg.spill_mb,
                **{k: v for k, v in PROFILES[profile].parameters(("light",)).items()
                   if k.startswith("light_")})  # only light tasks: no accelerator parameters


def finish(cfg: SplitRunConfig, out: str, run_dir: str, artifacts: list[str],
           seconds: float) -> dict:
    """After a local run: print where the split is and what it holds."""
    from components.data.runner import split_dir
    split = split_dir(storage.join(out, "data"), cfg.labels_per_class, cfg.seed,
                      cfg.distractors, "hash")
    summary = storage.read_json(storage.join(split, "split.json"))
    print(f"\nSplit in hash order by {cfg.num_workers} map and {cfg.num_workers} reduce tasks "
          f"in {seconds / 60:.1f} min: {split} (labelled/, unlabelled/, oracle.parquet)")
    print(json.dumps(summary, indent=1, sort_keys=True)[:2000])
    return summary


if __name__ == "__main__":
    compile_main(split_pipeline, __file__)
