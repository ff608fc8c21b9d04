"""The GPU runbook's measurements (``benchmarks/gpu.sh`` runs this; issues 16, 19, 21).

    benchmarks/gpu.sh                          # on a GPU machine: < 8 min, writes results/gpu.md
    .venv/bin/python benchmarks/gpu.py --smoke # here, on CPU: every step on tiny sizes (a check)

Each step prints one Markdown table row as soon as it is measured (a step that fails prints
its one-line error and the next one runs), so a run cut short keeps what it measured:

1. DALI decoding of 224x224 JPEG shards (generated: smooth random images, quality 90):
   ``mixed`` (nvJPEG on the GPU) vs ``cpu``, images/s of decoding alone, pipeline built.
2. The score stage end to end on the same shards (ResNet-50, bf16 autocast, DALI ``mixed``
   when on a GPU): images/s including its Parquet tables, markers and partial top-K, against
   decode + inference alone (the stage's own overhead; issue 21's bar: <= 10%).
3. ResNet-50 at 224 px, channels-last, bf16 autocast: inference and training (SGD step)
   images/s at batch 256.
4. SimCLR pre-training step (issue 19): ResNet-50 + SimCLRv2's 3-layer head, two views,
   NT-Xent (the project's ``contrastive_loss``), bf16: images/s at batch 256.
5. faiss kNN (issue 16): exact inner-product search of 10k queries in 1M x 128 vectors on the
   GPU (faiss-gpu) against the CPU index; "not installed" when faiss has no GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from scoring import jpeg_pool, model_dir  # noqa: E402

from semisup_core.data.dataset import shard_uris  # noqa: E402


def _timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call (synchronised on a GPU)."""
    fn()
    out = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def row(what: str, value: str, note: str = "") -> None:
    print(f"| {what} | {value} | {note} |", flush=True)


def dali_decode(pool: str, device: str, batch: int, threads: int, repeat: int) -> float:
    from semisup_core.data.dali_reader import _READER, build_pipeline, stage_dataset
    paths, index_paths = stage_dataset(shard_uris(pool))
    pipe = build_pipeline(paths, index_paths=index_paths, labelled=False, channels=3, mean=0.5,
                          std=0.5, device=device, batch_size=batch, num_threads=threads,
                          normalize=False)
    n = pipe.epoch_size(_READER)

    def epoch():
        for _ in range(-(-n // batch)):
            out = pipe.run()
        return out
    return n / _timed(epoch, repeat)


def score_stage(model: str, pool: str, batch: int, threads: int, tmp: str) -> float:
    from semisup_core.teacher_student.score import ScoreConfig, score
    out = tempfile.mkdtemp(dir=tmp)
    t0 = time.perf_counter()
    summary = score(ScoreConfig(model=model, pool=pool, out=out, top_p=10, partial_k=1000,
                                decoder="dali", decode_threads=threads, batch_size=batch))
    rate = summary["images"] / (time.perf_counter() - t0)
    shutil.rmtree(out)
    return rate


def decode_plus_inference(model_uri: str, pool: str, device: str, batch: int, threads: int
                          ) -> float:
    """What the score stage does minus its own work: DALI decode + the model's forward."""
    from semisup_core import checkpoint
    from semisup_core.data.dali_reader import (_READER, _to_host, build_pipeline,
                                               stage_dataset)
    from semisup_core.train.augment import normalize
    dev = "cuda" if device == "mixed" else "cpu"
    t0 = time.perf_counter()  # like the stage's: loading the model and building the pipeline count
    model, state = checkpoint.load_model(model_uri, dev)
    paths, index_paths = stage_dataset(shard_uris(pool))
    pipe = build_pipeline(paths, index_paths=index_paths, labelled=False, channels=3, mean=0.5,
                          std=0.5, device=device, batch_size=batch, num_threads=threads,
                          normalize=False)
    n = left = pipe.epoch_size(_READER)
    with torch.inference_mode():
        while left > 0:
            images, _ = pipe.run()
            k = min(left, batch)
            left -= k
            x = normalize(_to_host(images, k, as_torch=True).to(dev), state["mean"], state["std"])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev == "cuda"):
                model(x).float().softmax(1).topk(10, dim=1)
    if dev == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def resnet50_rates(batch: int, size: int, repeat: int, name: str = "resnet50") -> tuple[float, float]:
    from semisup_core.models import create_model
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model(name, 1000, 3).to(dev).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=dev == "cuda")

    @torch.inference_mode()
    def infer():
        with torch.autocast(**amp):
            model.eval()(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        model.train()
        with torch.autocast(**amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch / _timed(infer, repeat), batch / _timed(step, repeat)


def simclr_rate(batch: int, size: int, repeat: int, name: str = "resnet50") -> float:
    from semisup_core.models import create_model
    from semisup_core.train.objectives import ContrastiveConfig, contrastive_loss
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model(name, 1000, 3, head_mlp=0).to(dev).to(memory_format=torch.channels_last)
    dim = model.feature_dim
    head = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.BatchNorm1d(dim),
                               torch.nn.ReLU(), torch.nn.Linear(dim, dim),
                               torch.nn.BatchNorm1d(dim), torch.nn.ReLU(),
                               torch.nn.Linear(dim, 128)).to(dev)
    cfg = ContrastiveConfig()
    views = torch.randn(2 * batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.1)

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=dev == "cuda"):
            z = torch.nn.functional.normalize(head(model.forward_features(views)).float(), dim=1)
        loss, _ = contrastive_loss(z, cfg, rank=0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch / _timed(step, repeat)


def faiss_rates(n: int, d: int, queries: int, repeat: int) -> tuple[float, float | None]:
    import faiss
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xq = rng.standard_normal((queries, d), dtype=np.float32)
    cpu = faiss.IndexFlatIP(d)
    cpu.add(xb)
    cpu_qps = queries / _timed(lambda: cpu.search(xq, 10), repeat)
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return cpu_qps, None
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    return cpu_qps, queries / _timed(lambda: gpu.search(xq, 10), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, any device: checks the script")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps", default="decode,stage,resnet50,simclr,faiss")
    ap.add_argument("--shards", type=int, default=16, help="JPEG shards generated")
    ap.add_argument("--per-shard", type=int, default=1024)
    ap.add_argument("--model", default="resnet50", help="the network of every step")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    small = args.smoke
    shards, per_shard = (1, 16) if small else (args.shards, args.per_shard)
    batch, size, repeat = (8, 64, 1) if small else (args.batch, 224, args.repeat)
    arch = "resnet18" if small else args.model
    threads = os.cpu_count() or 1
    name = torch.cuda.get_device_name(0) if gpu else f"no GPU ({platform.processor() or 'cpu'})"
    print(f"# GPU runbook: {name}\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC. "
          f"Command: `python benchmarks/gpu.py {' '.join(sys.argv[1:])}`"
          f"{' (smoke: tiny sizes, not figures)' if small else ''}.\n")
    print("| measurement | value | note |\n|---|---:|---|")
    tmp = tempfile.mkdtemp(prefix="semisup-gpu-")
    steps = []
    try:
        pool = jpeg_pool(os.path.join(tmp, "pool"), shards, per_shard, 224)
        images = shards * per_shard
        model = model_dir(os.path.join(tmp, "model"), arch, 3, [f"c{i}" for i in range(10)])

        def decode():
            for dev in (["mixed"] if gpu else []) + ["cpu"]:
                rate = dali_decode(pool, dev, min(batch, images), threads, repeat)
                row(f"DALI decode, {dev}, 224 px JPEG", f"{rate:,.0f} img/s",
                    f"{images} images, {threads} threads")
        steps.append(("decode", decode))

        def stage():
            dev = "mixed" if gpu else "cpu"
            bare = decode_plus_inference(model, pool, dev, min(batch, images), threads)
            whole = score_stage(model, pool, min(batch, images), threads, tmp)
            row(f"score stage, {arch}, DALI {dev}, top-10, Parquet + partials",
                f"{whole:,.0f} img/s", f"{images} images; decode + inference alone "
                f"{bare:,.0f} img/s: the stage at {100 * whole / bare:.0f}%")
        steps.append(("stage", stage))

        def r50():
            inf, train = resnet50_rates(batch, size, repeat, arch)
            row(f"{arch} {size} px inference, bf16, batch {batch}", f"{inf:,.0f} img/s")
            row(f"{arch} {size} px training step, bf16, batch {batch}", f"{train:,.0f} img/s")
        steps.append(("resnet50", r50))

        def simclr():
            rate = simclr_rate(batch, size, repeat, arch)
            row(f"SimCLR step, {arch} + 3-layer head, {size} px, bf16, batch {batch}",
                f"{rate:,.0f} img/s", "two views per image, NT-Xent")
        steps.append(("simclr", simclr))

        def knn():
            n = 20_000 if small else 1_000_000
            cpu_qps, gpu_qps = faiss_rates(n, 128, 200 if small else 10_000, repeat)
            row(f"faiss exact kNN, {n:,} x 128, k=10, CPU", f"{cpu_qps:,.0f} queries/s")
            row(f"faiss exact kNN, {n:,} x 128, k=10, GPU",
                f"{gpu_qps:,.0f} queries/s" if gpu_qps else "faiss-gpu not installed")
        steps.append(("faiss", knn))
        for what, fn in [st for st in steps if st[0] in args.steps.split(",")]:
            try:
                fn()
            except Exception as err:  # one line, and the next step runs
                row(what, "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:150]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
