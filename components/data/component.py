"""KFP components of the data stage: import raw data into shards, split labelled/pool.

Their outputs are Dataset artifacts that *refer* to shards under ``root`` (dataset-ref.json and
the URI in the metadata): the images are imported once and streamed by URI by every run.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import image


@dsl.component(base_image=image("data"), install_kfp_package=False)
def import_data(source: str, src: str, root: str, name: str, dataset: Output[Dataset],
                split: str = "train"):
    """Import a raw dataset into WebDataset shards at root/name (skipped when already there).

    Args:
        source: raw format: fashion-mnist, mnist (IDX files) or image-folder (one folder per class).
        src: raw data directory, e.g. /usr/share/datasets/fashion-mnist ('' = import nothing).
        root: data directory URI (local path, s3:// or minio://) shared by all runs.
        name: the dataset's directory name under root.
        split: IDX datasets: train or test.

    Returns:
        dataset: a reference to root/name (to '' when src is '').
    """
    from components.data.runner import import_data as run
    run(source=source, src=src, root=root, name=name, split=split, dataset=dataset)


@dsl.component(base_image=image("data"), install_kfp_package=False)
def split_data(dataset: Input[Dataset], root: str, labelled: Output[Dataset],
               pool: Output[Dataset], oracle: Output[Dataset], labels_per_class: int = 500,
               seed: int = 0, distractor: Input[Dataset] = None, order: str = "permutation",
               num_workers: int = 1):
    """Draw N labels per class; the rest plus the distractors become the unlabelled pool.

    Args:
        dataset: the labelled source dataset (e.g. imported Fashion-MNIST train).
        root: data directory URI; the split goes to root/split-n<N>-s<seed>[-hash] (labelled/,
            unlabelled/, oracle.parquet) and is reused when it exists.
        labels_per_class: labelled images per class.
        seed: seed of the draw.
        distractor: a dataset mixed into the pool as out-of-distribution images (optional; a
            reference to '' means none).
        order: permutation (every recorded result) or hash (streaming, memory independent of
            the pool; the split pipeline runs it as parallel tasks).
        num_workers: hash order: the map/reduce tasks that ran before (this task finishes
            their split), or 1 to run it all here.

    Returns:
        labelled: reference to the labelled set.
        pool: reference to the unlabelled pool.
        oracle: reference to the pool's hidden labels (analysis only, never training).
    """
    from components.data.runner import split_data as run
    run(dataset=dataset, root=root, labels_per_class=labels_per_class, seed=seed,
        distractor=distractor, labelled=labelled, pool=pool, oracle=oracle, order=order,
        num_workers=num_workers)


@dsl.component(base_image=image("data"), install_kfp_package=False)
def split_phase(dataset: Input[Dataset], root: str, phase: str, labels_per_class: int = 500,
                seed: int = 0, distractor: Input[Dataset] = None, worker: int = 0,
                num_workers: int = 1, spill_mb: float = 256.0) -> str:
    """One phase of the split in hash order, as one of several parallel tasks.

    Args:
        dataset: the labelled source dataset (e.g. imported Fashion-MNIST train).
        root: data directory URI; the split goes to root/split-n<N>-s<seed>[-nodistract]-hash.
        phase: choose (one task), map or reduce (num_workers tasks each).
        labels_per_class: labelled images per class.
        seed: seed of the draw.
        distractor: a dataset mixed into the pool (optional; a reference to '' means none).
        worker: this map or reduce task's index.
        num_workers: parallel map and reduce tasks.
        spill_mb: MiB of pool images a map task buffers before it spills them.

    Returns:
        The phase and worker done (what the next phase's fan-in collects).
    """
    from components.data.runner import split_phase as run
    return run(dataset=dataset, root=root, labels_per_class=labels_per_class, seed=seed,
               distractor=distractor, phase=phase, worker=worker, num_workers=num_workers,
               spill_mb=spill_mb)


@dsl.component(base_image=image("data"), install_kfp_package=False)
def materialise(manifest: Input[Dataset], pool: Input[Dataset], selected: Input[Dataset],
                worker: int = 0, num_workers: int = 1, samples_per_shard: int = 4096) -> str:
    """One of num_workers parallel tasks that copy a select step's chosen images into the
    student's training set (``semisup data materialise``).

    Args:
        manifest: the select step's manifest output (manifest.parquet).
        pool: the pool it was selected from.
        selected: the select step's selected output, written here (its select step ran with
            materialise off): part tars and a part marker per task; the task that finds every
            part writes dataset.json. On a cluster it must be on the store the pod can write.
        worker: this task's index: it copies the selected pool shards worker::num_workers.
        num_workers: parallel tasks.
        samples_per_shard: samples per output shard.

    Returns:
        This task's worker index and whether dataset.json is written (the fan-in collects it).
    """
    from components.data.runner import materialise as run
    return run(manifest=manifest, pool=pool, selected=selected, worker=worker,
               num_workers=num_workers, samples_per_shard=samples_per_shard)
