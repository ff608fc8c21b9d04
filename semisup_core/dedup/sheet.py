"""The contact sheet of ``dedup``: pairs of (pool image, nearest evaluation image) with their
similarity (with a verifier: its logit margin, then the cosine), so a person can judge the
threshold. The left half shows the closest pairs, the right half the pairs just above and just
below the threshold (red: removed, grey: kept)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from semisup_core.data.decode import decode_image
from semisup_core.data.shards import iter_shard


def read_images(dataset: str, wanted: dict[str, set[str]]) -> dict[tuple[str, str], np.ndarray]:
    """The decoded images (uint8 H x W x C) of ``wanted`` (shard name -> keys) in ``dataset``,
    reading only the shards named."""
    from semisup_core.data.dataset import read_meta, shard_uris
    from semisup_core.inference import shard_name
    out = {}
    for uri in shard_uris(dataset, read_meta(dataset)):
        keys = wanted.get(shard_name(uri))
        if not keys:
            continue
        for sample in iter_shard(uri):
            if sample.key in keys:
                out[(shard_name(uri), sample.key)] = decode_image(sample.image)
    return out


def _images(dataset: str, wanted: dict[str, set[str]]) -> dict[tuple[str, str], Image.Image]:
    return {k: Image.fromarray(np.squeeze(v)) for k, v in read_images(dataset, wanted).items()}


def _rows(near: pa.Table, threshold: float, n: int) -> tuple[list[dict], list[dict]]:
    rows = near.to_pylist()
    rows.sort(key=lambda r: (-r["score"], r["pool_key"]))
    closest = rows[:n]
    rest = [r for r in rows if r not in closest]
    rest.sort(key=lambda r: (abs(r["score"] - threshold), r["pool_key"]))
    return closest, sorted(rest[:n], key=lambda r: -r["score"])


def contact_sheet(near: pa.Table, threshold: float, cfg, cell: int = 64) -> bytes:
    """PNG bytes of the sheet for the pairs in ``near`` (``dedup``'s nearest tables)."""
    from semisup_core.dedup.stage import set_name
    from semisup_core.embed import embedding_info
    closest, around = _rows(near, threshold, cfg.sheet_pairs)
    chosen = closest + around
    pool_ds = embedding_info(cfg.pool)["dataset"]
    eval_ds = {}
    for uri in cfg.eval_sets:
        ds = embedding_info(uri)["dataset"]
        eval_ds[set_name(ds)] = ds
    want_pool: dict[str, set[str]] = {}
    want_eval: dict[str, dict[str, set[str]]] = {}
    for r in chosen:
        want_pool.setdefault(r["pool_shard"], set()).add(r["pool_key"])
        want_eval.setdefault(r["eval_set"], {}).setdefault(r["eval_shard"], set()).add(r["eval_key"])
    pool_imgs = _images(pool_ds, want_pool)
    eval_imgs = {}
    for name, wanted in want_eval.items():
        if name in eval_ds:
            eval_imgs.update({(name, *k): v for k, v in _images(eval_ds[name], wanted).items()})
    rows = max(len(closest), len(around), 1)
    w_pair, h_row = 2 * cell + 8, cell + 16
    sheet = Image.new("RGB", (2 * w_pair + 24, rows * h_row + 22), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), "closest pairs (pool | eval)", fill="black")
    draw.text((w_pair + 24, 4), f"around the threshold {threshold:.4f}", fill="black")
    for col, part in enumerate((closest, around)):
        for row, r in enumerate(part):
            x, y = col * (w_pair + 24), 22 + row * h_row
            for j, img in enumerate((pool_imgs.get((r["pool_shard"], r["pool_key"])),
                                     eval_imgs.get((r["eval_set"], r["eval_shard"], r["eval_key"])))):
                if img is not None:
                    sheet.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST),
                                (x + j * (cell + 4), y))
            colour = (200, 0, 0) if r["score"] >= threshold else (110, 110, 110)
            text = f"{r['score']:.4f}" if cfg.verifier is None else \
                f"{r['score']:.2f} (cos {r['similarity']:.3f})"
            draw.text((x, y + cell + 2), text, fill=colour)
    if not chosen:
        draw.text((4, 30), "no pair within the margin of the threshold", fill="black")
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()


def flags_sheet(pairs: list[tuple[np.ndarray, np.ndarray, float]], threshold: float,
                cell: int = 64, per_row: int = 4) -> bytes:
    """PNG bytes of the calibration's highest false-flag statistics: each drawn evaluation image
    beside the other evaluation image that scores highest against it, with the score (red: at
    or above the chosen threshold, i.e. counted as a false flag). A real duplicate inside the
    evaluation set shows up here as a "false" flag; a person can tell."""
    rows = max(1, -(-len(pairs) // per_row))
    w_pair, h_row = 2 * cell + 8, cell + 16
    sheet = Image.new("RGB", (per_row * (w_pair + 16), rows * h_row + 22), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), f"calibration: drawn image | its best other evaluation image "
                      f"(threshold {threshold:.4g})", fill="black")
    for n, (a, b, score) in enumerate(pairs):
        x, y = (n % per_row) * (w_pair + 16), 22 + (n // per_row) * h_row
        for j, img in enumerate((a, b)):
            sheet.paste(Image.fromarray(np.squeeze(img)).convert("RGB").resize(
                (cell, cell), Image.NEAREST), (x + j * (cell + 4), y))
        draw.text((x, y + cell + 2), f"{score:.4g}",
                  fill=(200, 0, 0) if score >= threshold else (110, 110, 110))
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()
