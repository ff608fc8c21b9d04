"""Calibrating ``dedup``'s threshold: injected copies must be found, distinct images must not.

``calibration_images`` images of the first evaluation set (a seeded draw) are copied under
each transform below, with parameters drawn per image from the ranges given (relative to the
image side, so the same config fits 28 px and 224 px images), embedded by the same embedder as
the pool and searched in the evaluation index:

- ``recall[transform]``: share of copies whose nearest evaluation image is their source at a
  similarity >= the threshold;
- ``false_flag_rate``: share of the drawn images whose nearest *other* evaluation image is at or
  above the threshold: a distinct image wrongly removed, the rate that matters for a pool (an
  upper bound: a real duplicate inside the evaluation set counts too);
- ``pair_fpr``: share of random pairs of distinct drawn images at or above the threshold (the
  per-pair rate; far smaller, and weaker: a pool image meets every evaluation image).

The chosen threshold is the smallest whose ``false_flag_rate`` is <= ``target_fpr``.
``highest_flags`` and ``calibration_flags.png`` show the drawn images with the highest
false-flag statistic beside their partner: a real duplicate inside the evaluation set counts
as a false flag, and only a person can tell it from a look-alike. Pairs a person judged to be
the same image go into ``known_duplicates``; the calibration then leaves them out of the
false-flag statistic and of the per-pair rate (they are not distinct pairs).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from semisup_core import knn
from semisup_core.data.dataset import read_meta
from semisup_core.data.stream import to_chw
from semisup_core.embed import EmbedConfig, embedder, embedding_info

TRANSFORMS = ("exact", "jpeg", "resize", "crop", "photometric", "translate")
DESCRIPTION = {
    "exact": "the image itself",
    "jpeg": "re-encoded as JPEG, quality 50-90",
    "resize": "downscaled to 60-85% of its side and back (bilinear)",
    "crop": "1-10% cut from each side, resized back",
    "photometric": "contrast x0.7-1.3, brightness +-30 grey levels",
    "translate": "shifted 1-10% of the side in x and y, the border filled black",
}
GRID = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)
GRID_LOGITS = (-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0)  # with a verifier: its logit margin


def transform(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A copy of a uint8 H x W (x C) image under ``kind`` (see DESCRIPTION)."""
    if img.ndim == 3 and img.shape[2] == 1:
        return transform(img[:, :, 0], kind, rng)[:, :, None]
    h, w = img.shape[:2]
    im = Image.fromarray(img)
    if kind == "exact":
        return img.copy()
    if kind == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(50, 91)))
        return np.asarray(Image.open(buf).convert(im.mode))
    if kind == "resize":
        f = rng.uniform(0.6, 0.85)
        small = im.resize((max(2, round(w * f)), max(2, round(h * f))), Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BILINEAR))
    if kind == "crop":
        l, t, r, b = (rng.uniform(0.01, 0.10, 4) * [w, h, w, h])
        return np.asarray(im.resize((w, h), Image.BILINEAR, box=(l, t, w - r, h - b)))
    if kind == "photometric":
        a = img.astype(np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if kind == "translate":
        dy, dx = [int(round(s * rng.uniform(0.01, 0.10))) * int(rng.choice([-1, 1])) for s in (h, w)]
        dy, dx = dy or 1, dx or 1
        out = np.zeros_like(img)
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            img[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out
    raise ValueError(kind)


def _draw(dataset: str, keys: np.ndarray, shards: np.ndarray, n: int, rng
          ) -> tuple[list[str], list[np.ndarray]]:
    """A seeded draw of ``n`` of ``keys`` (in shards ``shards``) and their decoded images."""
    from semisup_core.dedup.sheet import read_images
    pick = rng.choice(len(keys), min(n, len(keys)), replace=False)
    wanted: dict[str, set[str]] = {}
    for i in pick:
        wanted.setdefault(shards[i], set()).add(keys[i])
    got = {k: v for (_, k), v in read_images(dataset, wanted).items()}
    order = sorted(got)
    return order, [got[k] for k in order]


def _embed(images: list[np.ndarray], info: dict, channels: int) -> np.ndarray:
    cfg = EmbedConfig(dataset="-", out="-", **{k: v for k, v in info.items()
                                                 if k in ("model", "image_size", "pixels_side", "blur_sigma")})
    forward, _, _ = embedder(cfg, "cuda" if torch.cuda.is_available() else "cpu", channels)
    parts = []
    for i in range(0, len(images), 256):
        x = torch.stack([to_chw(a, channels) for a in images[i:i + 256]])
        parts.append(forward(x)[0].astype(np.float32))
    v = np.concatenate(parts)  # float16 as stored, normalised again as table_vectors does
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _rates(thr: float, hits: dict, sims: dict, other: np.ndarray, pair: np.ndarray) -> dict:
    return {"threshold": float(thr),
            "recall": {t: float(np.mean(hits[t] & (sims[t] >= thr))) for t in hits},
            "false_flag_rate": float(np.mean(other >= thr)),
            "pair_fpr": float(np.mean(pair >= thr))}


def _known_duplicates(cfg) -> dict[str, set[str]]:
    """``known_duplicates`` (pairs of evaluation keys) as key -> the keys it duplicates."""
    out: dict[str, set[str]] = {}
    for a, b in getattr(cfg, "known_duplicates", None) or []:
        out.setdefault(a, set()).add(b)
        out.setdefault(b, set()).add(a)
    return out


def _partner_images(cfg, rows: list[int], eval_keys, eval_sets, eval_shards, gallery
                    ) -> list[np.ndarray]:
    """The evaluation images at index rows ``rows`` (from ``gallery`` when it is loaded)."""
    if gallery is not None:
        return [gallery[r] for r in rows]
    from semisup_core.dedup.sheet import read_images
    from semisup_core.dedup.stage import set_name
    datasets = {set_name(embedding_info(u)["dataset"]): embedding_info(u)["dataset"]
                for u in cfg.eval_sets}
    got = {}
    for name, dataset in datasets.items():
        wanted: dict[str, set[str]] = {}
        for r in rows:
            if eval_sets[r] == name:
                wanted.setdefault(eval_shards[r], set()).add(eval_keys[r])
        got.update({(name, *k): v for k, v in read_images(dataset, wanted).items()})
    return [got[(eval_sets[r], eval_shards[r], eval_keys[r])] for r in rows]


def calibrate(cfg, index, eval_keys: np.ndarray, eval_sets: np.ndarray,
              eval_shards: np.ndarray, scorer=None, gallery: np.ndarray | None = None) -> dict:
    """The calibration of ``dedup`` (module doc); ``index`` holds the evaluation vectors in the
    order of ``eval_keys`` (of the sets ``eval_sets``); the copies are of the first set's.
    With a verifier (``scorer``, and ``gallery``: the evaluation images in index order) each
    copy's ``verify_candidates`` nearest are verified and the best one is its match, the
    false-flag statistic is the best verified of each drawn image's nearest *others*, and
    ``pair_fpr`` is measured on 20,000 random pairs of distinct drawn images."""
    from semisup_core.dedup.stage import set_name
    rng = np.random.default_rng(cfg.seed)
    info = embedding_info(cfg.eval_sets[0])
    dataset = info["dataset"]
    channels = read_meta(dataset).channels
    mine = np.flatnonzero(eval_sets == set_name(dataset))
    order = mine[np.argsort(eval_keys[mine].astype(str), kind="stable")]
    keys, images = _draw(dataset, eval_keys[order], eval_shards[order], cfg.calibration_images, rng)
    pos = {eval_keys[i]: int(i) for i in mine}
    src = np.array([pos[k] for k in keys])
    hits, sims = {}, {}
    nprobe = None
    k = cfg.verify_candidates if scorer is not None else 1
    stack = np.stack(images) if scorer is not None else None
    for t in TRANSFORMS:
        copies = [transform(a, t, rng) for a in images]
        q = _embed(copies, info, channels)
        if t == "exact":
            base = q
        s, i = knn.search(index, q, k, nprobe=nprobe)
        if scorer is None:
            hits[t], sims[t] = i[:, 0] == src, s[:, 0]
        else:
            from semisup_core.dedup.verifier import best_verified
            best, col = best_verified(scorer, np.stack(copies), gallery, i)
            hits[t], sims[t] = i[np.arange(len(i)), col] == src, best
    # each drawn image's k nearest *other* evaluation images, leaving out those a person marked
    # as the same image (known_duplicates): they are not distinct pairs
    same = _known_duplicates(cfg)
    extra = max((len(v) for v in same.values()), default=0)
    s, i = knn.search(index, base, k + 1 + extra, nprobe=nprobe)
    keep = [[c for c in range(i.shape[1]) if i[n, c] >= 0 and i[n, c] != src[n]
             and eval_keys[i[n, c]] not in same.get(keys[n], ())][:k] for n in range(len(i))]
    others = np.stack([np.concatenate([i[n, c], np.full(k - len(c), -1, i.dtype)])
                       for n, c in enumerate(keep)])
    distinct = np.ones((len(keys),) * 2, bool)  # pairs of drawn images that count as distinct
    np.fill_diagonal(distinct, False)
    drawn = {key: n for n, key in enumerate(keys)}
    for key, dupes in same.items():
        for d in dupes:
            if key in drawn and d in drawn:
                distinct[drawn[key], drawn[d]] = False
    if scorer is None:
        other = np.array([s[n, c[0]] if c else -np.inf for n, c in enumerate(keep)], np.float32)
        partner = others[:, 0]  # the nearest evaluation image but itself
        pair = (base @ base.T)[distinct]
    else:  # the k nearest others, verified
        other, col = best_verified(scorer, stack, gallery, others)
        partner = others[np.arange(len(others)), col]
        a = rng.integers(len(stack), size=20000)
        b = (a + rng.integers(1, len(stack), size=20000)) % len(stack)  # never a itself
        ok = distinct[a, b]
        pair = scorer(stack[a[ok]], stack[b[ok]])
    allowed = int(cfg.target_fpr * len(other))  # images that may be flagged at target_fpr
    ranked = np.sort(other)[::-1]
    cap = 1.0 if scorer is None else np.inf
    thr = min(cap, float(ranked[allowed]) + 1e-6) if allowed < len(ranked) else float(ranked[-1])
    chosen = _rates(thr, hits, sims, other, pair)
    top = [int(n) for n in np.argsort(-other, kind="stable")[:cfg.sheet_pairs] if partner[n] >= 0]
    flagged = [{"key": keys[n], "other_key": str(eval_keys[partner[n]]),
                "other_set": str(eval_sets[partner[n]]), "score": float(other[n])} for n in top]
    if cfg.sheet_pairs:
        from semisup_core import storage
        from semisup_core.dedup.sheet import flags_sheet
        partners = _partner_images(cfg, [partner[n] for n in top], eval_keys, eval_sets,
                                   eval_shards, gallery)
        storage.put_bytes(storage.join(cfg.out, "calibration_flags.png"), flags_sheet(
            [(images[n], p, float(other[n])) for n, p in zip(top, partners)], thr))
    grid = GRID if scorer is None else GRID_LOGITS
    return {**chosen, "images": len(keys), "eval_set": dataset, "embedder": info["model"],
            "verifier": getattr(cfg, "verifier", None), "candidates": k,
            "target_fpr": cfg.target_fpr, "transforms": DESCRIPTION,
            "top1_is_source": {t: float(np.mean(hits[t])) for t in hits},
            "highest_flags": flagged,
            "known_duplicates": sorted(sorted(p) for p in (getattr(cfg, "known_duplicates", None) or [])),
            "grid": [_rates(x, hits, sims, other, pair) for x in grid]}
