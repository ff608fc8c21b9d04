"""The kNN core every method shares: FAISS indexes over L2-normalised embeddings (cosine = IP).

One code path from the demo to a billion vectors:
  * ``IndexSpec.for_size(n, d)`` picks the index from the data size: exact ``IndexFlatIP`` up
    to ``EXACT_MAX`` vectors; IVF-Flat up to ``IVF_FLAT_MAX`` (nlist ~ 4 sqrt(n), the FAISS
    wiki's guideline of 4-16 sqrt(n)); IVF-PQ above (d/2 sub-quantisers of 8 bits, i.e. 4x
    smaller than the float16 embeddings), so memory stays ~d/2 bytes a vector;
  * ``build`` trains on a sample (``train_size``: 64 vectors per list, faiss's minimum
    warning is 39) and adds in blocks; ``search`` queries in batches;
  * GPU when faiss sees one (faiss-gpu images) and CPU otherwise, the same calls;
  * sharded: indexes built on separate shards of the data from one trained empty index merge
    into one (``merge``), so workers build in parallel;
  * ``save``/``load`` use faiss's own serialisation (``serialize_index``), never pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from semisup_core import storage
from semisup_core.errors import ConfigError

EXACT_MAX = 200_000  # flat search of 2e5 x 128-d floats: ~100 MB, exact and fast enough
IVF_FLAT_MAX = 20_000_000  # above this, 4 bytes a dimension no longer fit one node's RAM


@dataclass(frozen=True)
class IndexSpec:
    """What index to build; ``for_size`` derives it from the data size."""

    kind: Literal["flat", "ivf_flat", "ivf_pq"] = "flat"
    nlist: int = 0  # IVF lists
    pq_m: int = 0  # PQ sub-quantisers (d must be a multiple)
    nprobe: int = 16  # lists visited per query (IVF)

    @classmethod
    def for_size(cls, n: int, d: int, nprobe: int | None = None) -> IndexSpec:
        if n <= EXACT_MAX:
            return cls("flat")
        nlist = 1 << max(8, round(math.log2(4 * math.sqrt(n))))  # a power of two near 4 sqrt(n)
        probe = nprobe or max(16, nlist // 64)
        if n <= IVF_FLAT_MAX:
            return cls("ivf_flat", nlist=nlist, nprobe=probe)
        m = max(m for m in (d // 2, d // 4, 8, 4, 2, 1) if m >= 1 and d % m == 0)
        return cls("ivf_pq", nlist=nlist, pq_m=m, nprobe=probe)

    @property
    def train_size(self) -> int:
        return 64 * self.nlist if self.kind != "flat" else 0

    def factory(self) -> str:
        """The ``faiss.index_factory`` string."""
        return {"flat": "Flat", "ivf_flat": f"IVF{self.nlist},Flat",
                "ivf_pq": f"IVF{self.nlist},PQ{self.pq_m}x8"}[self.kind]


def _faiss():
    import faiss
    return faiss


def _as_f32(x: np.ndarray, d: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        raise ConfigError(f"vectors must be N x {d or 'd'}, got shape {x.shape}")
    return x


def empty_index(spec: IndexSpec, d: int, sample: np.ndarray | None = None):
    """An empty index, trained on ``sample`` when it is an IVF one (inner product metric)."""
    faiss = _faiss()
    index = faiss.index_factory(d, spec.factory(), faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if sample is None or len(sample) < spec.nlist:
            raise ConfigError(f"{spec.factory()} needs at least {spec.nlist} training vectors, "
                              f"got {0 if sample is None else len(sample)}")
        index.train(_as_f32(sample, d))
    return index


def build(vectors: np.ndarray, spec: IndexSpec | None = None, seed: int = 0, block: int = 1 << 16):
    """An index over ``vectors`` (N x d, L2-normalised), trained on a seeded sample."""
    x = _as_f32(vectors)
    spec = spec or IndexSpec.for_size(len(x), x.shape[1])
    sample = None
    if spec.kind != "flat":
        rng = np.random.default_rng(seed)
        take = min(len(x), spec.train_size)
        sample = x[np.sort(rng.choice(len(x), take, replace=False))]
    index = empty_index(spec, x.shape[1], sample)
    if spec.kind != "flat":
        faiss = _faiss()
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    # blocks bound the encoding buffers of IVF/PQ; a flat index stores every vector as given,
    # so one add (blocks would only regrow its storage, one copy per block)
    step = max(len(x), 1) if spec.kind == "flat" else block
    for i in range(0, len(x), step):
        index.add(x[i:i + step])
    return index


def merge(shards: list):
    """One index holding every shard's vectors, ids in shard order (shard 0's first).

    The shards must come from the same trained empty index (``empty_index`` once, then
    ``faiss.clone_index`` per worker) so their IVF lists and codes agree.
    """
    faiss = _faiss()
    if not shards:
        raise ConfigError("merge: no shards")
    out = faiss.clone_index(shards[0])
    for s in shards[1:]:
        faiss.check_compatible_for_merge(out, s)
        out.merge_from(s, out.ntotal)  # shifts the shard's ids by what is already there
    return out


def _on_device(index):
    """The same index on every GPU faiss sees (faiss-gpu images), or itself on CPU."""
    faiss = _faiss()
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def search(index, queries: np.ndarray, k: int, nprobe: int | None = None,
           batch: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
    """(similarities Q x k, ids Q x k; -1 where fewer than k exist), best first."""
    faiss = _faiss()
    q = _as_f32(queries, index.d)
    if nprobe is not None and _is_ivf(index):
        faiss.extract_index_ivf(index).nprobe = nprobe
    dev = _on_device(index)
    sims = np.empty((len(q), k), np.float32)
    ids = np.empty((len(q), k), np.int64)
    for i in range(0, len(q), batch):
        sims[i:i + batch], ids[i:i + batch] = dev.search(q[i:i + batch], k)
    return sims, ids


def exact_search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product kNN of ``queries`` over the rows of ``base`` with no index: faiss's
    brute-force kernel on the arrays as they are (nothing copied when they are C-contiguous
    float32), on the GPU when faiss-gpu sees one. For a base that changes between calls (LLP's
    labelled bank entries move every step), where building an index would copy it each time.
    (similarities Q x k, ids Q x k; -1 where fewer than k exist), best first."""
    faiss = _faiss()
    xb = _as_f32(base)
    xq = _as_f32(queries, xb.shape[1])
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        global _GPU_RESOURCES
        if _GPU_RESOURCES is None:  # one set per process: creating them costs a cudaMalloc pool
            _GPU_RESOURCES = faiss.StandardGpuResources()
        return faiss.knn_gpu(_GPU_RESOURCES, xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    return faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)


_GPU_RESOURCES = None  # exact_search's faiss-gpu resources, made on first use


def _is_ivf(index) -> bool:
    try:
        _faiss().extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def save(index, uri: str) -> None:
    """faiss's own serialisation, written atomically through the store."""
    storage.put_bytes(uri, _faiss().serialize_index(index).tobytes())


def load(uri: str):
    return _faiss().deserialize_index(np.frombuffer(storage.get_bytes(uri), dtype=np.uint8))
