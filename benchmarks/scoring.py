"""Score-stage throughput: DALI (CPU decoding) against the PIL path, same model, same shards.

    .venv/bin/python benchmarks/scoring.py > benchmarks/results/scoring.md   # ~10 min on 2 cores

Two datasets: 224x224 RGB JPEG shards (generated here: 4 shards x 128 smooth random images,
quality 90) scored by ResNet-18, and the demo's 28x28 grey PNG pool (the first 3 of its 30
shards, 12k images; needs `make demo` once) scored by the demo teacher's architecture
(small_resnet14 width 16). Models are randomly initialised (throughput does not depend on
the weights). Both paths get one inference thread and one decoding helper (PIL: one
DataLoader worker process that decodes the next shard; DALI: ``decode_threads=1``).
Reported: images/s of the whole score stage (decode + inference + Parquet output), median
of ``--repeat`` runs alternating the two paths, and images/s of decoding alone (encoded bytes already in memory for PIL;
DALI reads the same shards from disk with its pipeline already built).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from semisup_core import checkpoint  # noqa: E402
from semisup_core.data.dataset import make_meta, read_meta, shard_uris, write_meta  # noqa: E402
from semisup_core.data.decode import decode_image  # noqa: E402
from semisup_core.data.shards import ShardWriter, iter_shard  # noqa: E402
from semisup_core.models import create_model  # noqa: E402
from semisup_core.teacher_student.score import ScoreConfig, score  # noqa: E402


def jpeg_pool(uri: str, shards: int = 4, per_shard: int = 128, size: int = 224) -> str:
    from PIL import Image
    import io
    rng = np.random.default_rng(0)
    with ShardWriter(uri, per_shard) as w:
        for i in range(shards * per_shard):
            small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((size, size), Image.BICUBIC)  # smooth, JPEG-like
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            w.write(f"img-{i:06d}", buf.getvalue(), "jpg", None, {})
    write_meta(uri, make_meta(uri, "jpeg-pool", [f"c{i}" for i in range(10)], w.shards, None,
                              source="generated", channels=3, hw=(size, size)))
    return uri


def model_dir(uri: str, name: str, in_chans: int, classes: list[str], **kwargs) -> str:
    torch.manual_seed(0)
    model = create_model(name, 10, in_chans, **kwargs).eval()
    checkpoint.save_final(uri, model, {
        "classes": classes, "mean": 0.5, "std": 0.5,
        "model": {"name": name, "num_classes": 10, "in_chans": in_chans, "kwargs": kwargs}})
    return uri


def stage_rate(model: str, pool: str, decoder: str, num_workers: int, batch: int, tmp: str) -> float:
    out = tempfile.mkdtemp(dir=tmp)
    t0 = time.perf_counter()
    summary = score(ScoreConfig(model=model, pool=pool, out=out, top_p=5, partial_k=100,
                                decoder=decoder, decode_threads=1, batch_size=batch,
                                worker=0, num_workers=num_workers))
    rate = summary["images"] / (time.perf_counter() - t0)
    shutil.rmtree(out)
    return rate


def decode_rates(pool: str, num_workers: int, channels: int, repeat: int) -> tuple[float, float]:
    """Decode-only images/s (median of ``repeat`` passes) of PIL and of a built DALI pipeline
    (one thread; building it is not timed)."""
    from semisup_core.data.dali_reader import _READER, build_pipeline, stage_dataset
    uris = shard_uris(pool)[0::num_workers]
    encoded = [s.image for u in uris for s in iter_shard(u)]  # read once: time decoding only
    paths, index_paths = stage_dataset(uris)
    pipe = build_pipeline(paths, index_paths=index_paths, labelled=False,
                          channels=channels, mean=0.5, std=0.5, batch_size=256, num_threads=1,
                          normalize=False)
    per_epoch = pipe.epoch_size(_READER)
    pil, dali = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for data in encoded:
            decode_image(data, channels)
        pil.append(len(encoded) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(-(-per_epoch // 256)):
            pipe.run()
        dali.append(per_epoch / (time.perf_counter() - t0))
    return float(np.median(pil)), float(np.median(dali))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--decode-only", action="store_true", help="skip the score-stage runs")
    ap.add_argument("--demo-pool", default="runs/demo/data/split-n50-s0/unlabelled")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="semisup-scoring-")
    cases = [("224 px JPEG, ResNet-18", jpeg_pool(os.path.join(tmp, "jpeg")),
              model_dir(os.path.join(tmp, "r18"), "resnet18", 3, [f"c{i}" for i in range(10)]), 1, 64, 3)]
    if os.path.exists(os.path.join(args.demo_pool, "dataset.json")):
        n = len(read_meta(args.demo_pool).shards)
        cases.append(("28 px grey PNG (demo pool), small_resnet14 w16", args.demo_pool,
                      model_dir(os.path.join(tmp, "r14"), "small_resnet14", 1,
                                read_meta(args.demo_pool).classes, width=16),
                      n // 3, 512, 1))
    print(f"# Scoring benchmark\n\nMachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}; torch {torch.__version__}, 1 inference "
          f"thread. Command: `python benchmarks/scoring.py --repeat {args.repeat}`; median of "
          f"{args.repeat} alternating runs.\n")
    print("| data, model | score stage PIL (img/s) | score stage DALI cpu (img/s) | DALI / PIL | "
          "decode only PIL (img/s) | decode only DALI cpu (img/s) | DALI / PIL |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, pool, model, workers, batch, ch in cases:
        rates = {"pil": [], "dali": []}
        for _ in range(0 if args.decode_only else args.repeat):
            for dec in ("pil", "dali"):
                rates[dec].append(stage_rate(model, pool, dec, workers, batch, tmp))
        pil, dali = (float(np.median(rates[d])) if rates[d] else float("nan") for d in ("pil", "dali"))
        dpil, ddali = decode_rates(pool, workers, ch, args.repeat)
        print(f"| {name} | {pil:.0f} | {dali:.0f} | {dali / pil:.2f} | {dpil:.0f} | {ddali:.0f} | "
              f"{ddali / dpil:.2f} |", flush=True)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
