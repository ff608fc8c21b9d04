"""embed: images/s with DALI decoding vs the PIL reference path, same dataset, same process.

    .venv/bin/python benchmarks/embed.py > benchmarks/results/embed.md     # ~2 min here

Dataset: the Fashion-MNIST training set (60k 28 x 28 PNGs in 15 shards), imported once into a
temporary directory. For each embedder the ``embed`` stage runs end to end (decode, embed,
write the float16 tables) into a fresh output, alternating DALI and PIL, median of --repeat.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

from semisup_core import config
from semisup_core.data.config import ImportConfig
from semisup_core.data.stages import run_import
from semisup_core.embed import EmbedConfig, embed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", default="pixels,efficientnet_lite0")
    ap.add_argument("--lite0-size", type=int, default=64, help="efficientnet_lite0 input side")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="semisup-embed-bench-")
    data = os.path.join(tmp, "train")
    run_import(config.build(ImportConfig, {"source": "fashion-mnist", "src": args.fashion_mnist,
                                           "out": data, "split": "train"}))
    print(f"# embed benchmark\n\nMachine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; dataset: Fashion-MNIST train, 60,000 images; median of "
          f"{args.repeat}.\n")
    print("| embedder | DALI images/s | PIL images/s | DALI / PIL |\n|---|---|---|---|")
    for model in args.models.split(","):
        times = {"dali": [], "pil": []}
        for r in range(args.repeat):
            for dec in ("dali", "pil"):
                out = os.path.join(tmp, f"{model}-{dec}-{r}")
                t0 = time.perf_counter()
                s = embed(config.build(EmbedConfig, {"dataset": data, "out": out, "model": model,
                                                     "decoder": dec, "image_size": args.lite0_size}))
                times[dec].append(s["images"] / (time.perf_counter() - t0))
        d, p = statistics.median(times["dali"]), statistics.median(times["pil"])
        name = model + (f" ({args.lite0_size} px)" if model == "efficientnet_lite0" else "")
        print(f"| {name} | {d:,.0f} | {p:,.0f} | {d / p:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
