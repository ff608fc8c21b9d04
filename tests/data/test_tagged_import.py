"""The tagged importers (issue 20 part 1): sidecars, OpenClipart, pixels, the tag report."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from semisup.cli import main
from semisup_core.data.dataset import iter_dataset, read_meta
from semisup_core.data.decode import decode_image
from semisup_core.data.importers import import_dataset, import_openclipart, import_tagged
from semisup_core.data.split import split_labelled
from semisup_core.errors import ConfigError, DataError


def _image(mode, size, colour, fmt="PNG"):
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _write(root, rel, data):
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


def _folder(root):
    """Four images: one at the top level, three in subfolders (any depth is fine)."""
    files = {
        "top.png": _image("RGB", (5, 4), (1, 2, 3)),
        "a/cat1.png": _image("L", (5, 4), 7),
        "a/cat2.jpg": _image("RGB", (5, 4), (200, 10, 10), "JPEG"),
        "b/deep/x.png": _image("RGB", (5, 4), (9, 9, 9)),
    }
    for rel, data in files.items():
        _write(root, rel, data)
    return files


def _samples(out):
    return {s.meta["path"]: s for s in iter_dataset(str(out))}


def test_csv_sidecar(tmp_path):
    files = _folder(tmp_path / "src")
    _write(tmp_path, "tags.csv", 'path,tags\n'
           'a/cat1.png,"#cat, #Pet;animal|cat"\n'
           './a/cat2.jpg,kitten\n'
           '\n'
           'top.png,\n')
    meta = import_tagged(str(tmp_path / "src"), str(tmp_path / "out"),
                         tags=str(tmp_path / "tags.csv"), samples_per_shard=3)
    assert read_meta(str(tmp_path / "out")) == meta  # classes: [] is a valid dataset.json
    assert (meta.classes, meta.num_classes, meta.labelled, meta.class_counts) == ([], 0, False, [])
    assert meta.num_samples == 4 and [s["count"] for s in meta.shards] == [3, 1]
    assert meta.source == "tagged" and meta.extra["tags_from"] == str(tmp_path / "tags.csv")
    samples = _samples(tmp_path / "out")
    # keys follow sorted relative paths: a/cat1, a/cat2, b/deep/x, top
    assert {p: s.key for p, s in samples.items()} == {
        "a/cat1.png": "tagged-000000", "a/cat2.jpg": "tagged-000001",
        "b/deep/x.png": "tagged-000002", "top.png": "tagged-000003"}
    assert samples["a/cat1.png"].meta == {"source": "src", "path": "a/cat1.png",
                                          "tags": ["cat", "Pet", "animal", "cat"]}
    assert samples["a/cat2.jpg"].meta["tags"] == ["kitten"]
    assert samples["top.png"].meta["tags"] == [] and samples["b/deep/x.png"].meta["tags"] == []
    for rel, s in samples.items():  # no size, no alpha: the original bytes, unlabelled
        assert s.cls is None and s.image == files[rel] and s.ext == rel[-3:]
    assert meta.extra["tags"]["untagged"] == 2


def test_json_sidecar(tmp_path, caplog):
    _folder(tmp_path / "src")
    _write(tmp_path / "src", "tags.json", json.dumps({"b/deep/x.png": ["#sea", " boat "],
                                                      "top.png": []}))
    _write(tmp_path / "src", "README", "stray file")
    with caplog.at_level(logging.WARNING):
        import_tagged(str(tmp_path / "src"), str(tmp_path / "out"),
                      tags=str(tmp_path / "src" / "tags.json"))
    tags = {p: s.meta["tags"] for p, s in _samples(tmp_path / "out").items()}
    assert tags == {"a/cat1.png": [], "a/cat2.jpg": [], "b/deep/x.png": ["sea", "boat"],
                    "top.png": []}
    # the sidecar inside src is not an ignored file; the README is
    assert "ignored 1 file(s)" in caplog.text and "README" in caplog.text


def test_txt_sidecars(tmp_path, caplog):
    _folder(tmp_path / "src")
    _write(tmp_path / "src", "a/cat1.png.txt", "#cat #tabby\nsleeping\n")
    _write(tmp_path / "src", "a/cat2.txt", "cat;orange")  # <stem>.txt works too
    with caplog.at_level(logging.WARNING):
        meta = import_tagged(str(tmp_path / "src"), str(tmp_path / "out"))
    assert "ignored" not in caplog.text  # the .txt files are tag files, not strays
    tags = {p: s.meta["tags"] for p, s in _samples(tmp_path / "out").items()}
    assert tags == {"a/cat1.png": ["cat", "tabby", "sleeping"], "a/cat2.jpg": ["cat", "orange"],
                    "b/deep/x.png": [], "top.png": []}
    assert meta.extra["tags_from"] == "<image>.txt" and meta.extra["tags"]["untagged"] == 2


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)      # fully transparent, colour underneath is junk
    rgba[0, 1] = (0, 0, 0, 128)       # half-transparent black
    rgba[0, 2] = (40, 50, 60, 255)    # opaque
    rgba[1] = (200, 100, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    _write(tmp_path / "src", "rgba.png", buf.getvalue())
    la = np.array([[[0, 0], [90, 255]]], np.uint8)  # grey + alpha: 1 x 2
    buf = io.BytesIO()
    Image.fromarray(la, "LA").save(buf, format="PNG")
    _write(tmp_path / "src", "la.png", buf.getvalue())
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "P")  # palette + tRNS, as in OpenClipart
    pal.putpalette([250, 0, 0, 0, 0, 250] + [0] * 762)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=bytes([0, 128]))  # alpha per palette entry
    _write(tmp_path / "src", "pal.png", buf.getvalue())
    _write(tmp_path / "src", "rgba.png.txt", "x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL advice about palette transparency either
        import_tagged(str(tmp_path / "src"), str(tmp_path / "out"))
    samples = _samples(tmp_path / "out")
    got = decode_image(samples["rgba.png"].image)
    a = rgba[:, :, 3:].astype(np.float64) / 255
    want = np.rint(rgba[:, :, :3] * a + 255 * (1 - a)).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    assert tuple(got[0, 0]) == (255, 255, 255) and tuple(got[0, 1]) == (127, 127, 127)
    assert tuple(got[0, 2]) == (40, 50, 60) and samples["rgba.png"].ext == "png"
    np.testing.assert_array_equal(decode_image(samples["la.png"].image)[:, :, 0], [[255, 90]])
    np.testing.assert_array_equal(decode_image(samples["pal.png"].image),  # 255 - 127 a
                                  [[[255, 255, 255], [127, 127, 252]]])


def _ref_square_resize(arr, size):
    """Brute force: a white square, the image copied pixel by pixel into its centre, PIL
    bilinear resize."""
    h, w, c = arr.shape
    side = max(h, w)
    sq = np.full((side, side, c), 255, np.uint8)
    for y in range(h):
        for x in range(w):
            sq[(side - h) // 2 + y, (side - w) // 2 + x] = arr[y, x]
    img = Image.fromarray(sq[:, :, 0] if c == 1 else sq).resize((size, size), Image.BILINEAR)
    out = np.asarray(img)
    return out[:, :, None] if out.ndim == 2 else out


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_size_and_channels(tmp_path, channels):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (3, 7, 3), dtype=np.uint8)   # H x W x C, wider than tall
    tall = rng.integers(0, 256, (9, 4), dtype=np.uint8)      # grey, taller than wide
    os.makedirs(tmp_path / "src")
    Image.fromarray(wide).save(tmp_path / "src" / "wide.png")
    Image.fromarray(tall).save(tmp_path / "src" / "tall.png")
    _write(tmp_path, "t.json", "{}")
    meta = import_tagged(str(tmp_path / "src"), str(tmp_path / "out"),
                         tags=str(tmp_path / "t.json"), size=5, channels=channels)
    assert (meta.height, meta.width) == (5, 5) and meta.extra["size"] == 5
    assert meta.channels == (channels or 3)
    samples = _samples(tmp_path / "out")
    src = {"wide.png": wide, "tall.png": tall[:, :, None]}
    for rel, arr in src.items():
        if channels == 3 and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        elif channels == 1 and arr.shape[2] == 3:
            arr = np.asarray(Image.fromarray(arr).convert("L"))[:, :, None]
        got = decode_image(samples[rel].image)
        assert got.shape == (5, 5, arr.shape[2]) and samples[rel].ext == "png"
        np.testing.assert_array_equal(got, _ref_square_resize(arr, 5))
    # padding is white: the tall image's left and right columns come out (almost) white
    if channels != 3:
        assert decode_image(samples["tall.png"].image)[:, 0].min() >= 200


def test_channels_without_size(tmp_path):
    """channels alone converts (and re-encodes) only the images whose channels differ."""
    files = _folder(tmp_path / "src")
    _write(tmp_path, "t.json", "{}")
    meta = import_tagged(str(tmp_path / "src"), str(tmp_path / "out"),
                         tags=str(tmp_path / "t.json"), channels=1)
    assert meta.channels == 1 and (meta.height, meta.width) == (4, 5) and meta.extra["size"] is None
    for rel, s in _samples(tmp_path / "out").items():
        want = decode_image(files[rel], channels=1)  # grey: PIL's ITU-R 601, as decode_image
        np.testing.assert_array_equal(decode_image(s.image), want)
        assert (s.image == files[rel]) == (rel == "a/cat1.png")  # the grey one keeps its bytes


def _rdf_svg(title, subjects, doctype=""):
    items = "".join(f"<rdf:li>{s}</rdf:li>" for s in subjects)
    return (f'<?xml version="1.0"?>{doctype}<svg xmlns="http://www.w3.org/2000/svg" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:cc="http://creativecommons.org/ns#" '
            'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><metadata><rdf:RDF>'
            f'<cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:subject><rdf:Bag>{items}'
            '</rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata><rect width="1" height="1"/>'
            '</svg>')


@pytest.fixture
def clipart(tmp_path):
    """A fake openclipart-png/-svg pair: a symlink alias, a broken link, an SVG with an
    Illustrator-style entity declaration, a missing twin and a twin that is not XML."""
    png, svg = tmp_path / "png", tmp_path / "svg"
    _write(png, "animals/mammals/bears/bear_peterm_01.png", _image("RGBA", (4, 3), (0, 0, 0, 0)))
    os.makedirs(png / "nature" / "wildlife")
    os.symlink("../../animals/mammals/bears/bear_peterm_01.png",
               png / "nature" / "wildlife" / "bear_peterm_01.png")
    _write(png, "computer/icons/disk_01.png", _image("RGB", (4, 4), (0, 0, 255)))
    _write(png, "shapes/circle_01.png", _image("L", (2, 2), 0))
    _write(png, "signs/bad_svg_01.png", _image("L", (2, 2), 0))
    os.symlink("gone.png", png / "signs" / "broken_01.png")
    _write(svg, "animals/mammals/bears/bear_peterm_01.svg",
           _rdf_svg("bear", ["mammal", "bear", "cartooon"]))
    _write(svg, "computer/icons/disk_01.svg", _rdf_svg(
        " Floppy\n  disk ", ["#icons", "disk"],
        '<!DOCTYPE svg [<!ENTITY ns_svg "http://www.w3.org/2000/svg">]>'))
    _write(svg, "signs/bad_svg_01.svg", "<svg><unclosed>")
    _write(png, "shapes/square_01.png", _image("L", (2, 2), 0))
    _write(svg, "shapes/square_01.svg", _rdf_svg(
        "Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)", ["square"]))
    return str(png), str(svg)


def test_openclipart(tmp_path, clipart, caplog):
    png, svg = clipart
    with caplog.at_level(logging.WARNING):
        meta = import_openclipart(png, str(tmp_path / "out"), svg=svg)
    samples = _samples(tmp_path / "out")
    assert sorted(samples) == ["animals/mammals/bears/bear_peterm_01.png",
                               "computer/icons/disk_01.png", "shapes/circle_01.png",
                               "shapes/square_01.png", "signs/bad_svg_01.png"]  # one per real file
    bear = samples["animals/mammals/bears/bear_peterm_01.png"]
    assert bear.key == "openclipart-000000" and bear.meta == {
        "source": "openclipart", "path": "animals/mammals/bears/bear_peterm_01.png",
        "paths": ["animals/mammals/bears/bear_peterm_01.png",
                  "nature/wildlife/bear_peterm_01.png"],
        "title": "bear",
        "tags": ["animals", "mammals", "bears", "nature", "wildlife",
                 "mammal", "bear", "cartooon", "bear"]}
    assert decode_image(bear.image).min() == 255  # fully transparent -> white
    disk = samples["computer/icons/disk_01.png"].meta
    assert disk["title"] == "Floppy disk" and disk["tags"] == ["computer", "icons", "icons", "disk",
                                                                "Floppy disk"]
    assert samples["shapes/circle_01.png"].meta["tags"] == ["shapes"]
    square = samples["shapes/square_01.png"].meta  # a long title is a description, not a tag
    assert square["tags"] == ["shapes", "square"] and square["title"].startswith("Part of the")
    assert samples["signs/bad_svg_01.png"].meta["tags"] == ["signs"]
    assert meta.classes == [] and meta.source == "openclipart"
    assert {k: meta.extra[k] for k in ("paths", "broken_links", "svg_missing", "svg_unreadable")} \
        == {"paths": 6, "broken_links": 1, "svg_missing": 1, "svg_unreadable": 1}
    assert "broken symlink" in caplog.text and "signs/broken_01.png" in caplog.text
    assert "no SVG twin" in caplog.text and "not XML" in caplog.text


@pytest.mark.parametrize("svg", ["absent", None])
def test_openclipart_without_svg(tmp_path, clipart, caplog, svg):
    png, _ = clipart
    svg = str(tmp_path / "no-svg") if svg == "absent" else None
    with caplog.at_level(logging.WARNING):
        meta = import_openclipart(png, str(tmp_path / "out"), svg=svg)
    assert ("no SVG tree" in caplog.text) == (svg is not None)  # null is a choice: no warning
    samples = _samples(tmp_path / "out")
    bear = samples["animals/mammals/bears/bear_peterm_01.png"].meta
    assert bear["tags"] == ["animals", "mammals", "bears", "nature", "wildlife"]
    assert bear["title"] is None and meta.extra["svg"] is None
    assert samples["computer/icons/disk_01.png"].meta["tags"] == ["computer", "icons"]


def test_tag_report_against_brute_force(tmp_path, caplog, capsys):
    rng = np.random.default_rng(3)
    vocab = [f"t{i}" for i in range(40)]
    rows = ["path,tags"]
    for i in range(60):
        _write(tmp_path / "src", f"d{i % 3}/im{i:02d}.png", _image("L", (3, 3), i))
        k = int(rng.integers(0, 5))  # 0..4 tags, repeats allowed within an image
        rows.append(f"d{i % 3}/im{i:02d}.png,{' '.join(rng.choice(vocab, k))}")
    _write(tmp_path / "src", "d0/zz_corrupt.png", b"\x89PNG garbage")
    rows.append("d0/zz_corrupt.png,t0 t1")  # a skipped image's tags must not count
    _write(tmp_path, "tags.csv", "\n".join(rows) + "\n")
    out = str(tmp_path / "out")
    with caplog.at_level(logging.INFO):
        code = main(["data", "import", "--set", "source=tagged", "--set", f"src={tmp_path}/src",
                     "--set", f"tags={tmp_path}/tags.csv", "--set", f"out={out}"])
    assert code == 0 and "skipped 1 corrupt image(s)" in caplog.text
    assert "d0/zz_corrupt.png" in caplog.text
    printed = json.loads(capsys.readouterr().out)
    # brute force over the written shards
    images, occurrences, untagged, n = defaultdict(int), defaultdict(int), 0, 0
    for s in iter_dataset(out):
        n += 1
        untagged += not s.meta["tags"]
        for t in s.meta["tags"]:
            occurrences[t] += 1
        for t in sorted(set(s.meta["tags"])):
            images[t] += 1
    table = pq.read_table(os.path.join(out, "tags.parquet"))
    assert table.column_names == ["tag", "images", "occurrences"]
    rows = table.to_pylist()
    assert {r["tag"]: (r["images"], r["occurrences"]) for r in rows} == \
        {t: (images[t], occurrences[t]) for t in images}
    assert [r["tag"] for r in rows] == sorted(images, key=lambda t: (-images[t], t))
    assert any(r["occurrences"] > r["images"] for r in rows)  # repeats were counted
    summary = read_meta(out).extra["tags"]
    assert summary == printed["tags"]
    assert n == 60 and summary["images"] == n and summary["untagged"] == untagged > 0
    assert summary["distinct_tags"] == len(images)
    assert summary["singleton_tags"] == sum(1 for v in images.values() if v == 1) > 0
    top = sorted(images.items(), key=lambda kv: (-kv[1], kv[0]))[:25]
    assert summary["top"] == [f"{t}: {k}" for t, k in top]
    assert f"{n} images, {untagged} without tags; {len(images)} distinct tags" in caplog.text


def test_tags_reach_the_pool(tmp_path, make_dataset):
    """A tagged dataset used as the pool's extra keeps its tags (split._pool_meta)."""
    _folder(tmp_path / "src")
    _write(tmp_path / "src", "a/cat1.png.txt", "cat")
    import_tagged(str(tmp_path / "src"), str(tmp_path / "tagged"))
    make_dataset(str(tmp_path / "lab"), 6, ["x", "y"], prefix="lab")
    split_labelled(str(tmp_path / "lab"), str(tmp_path / "split"), 1, 0,
                   pool_extra=[str(tmp_path / "tagged")])
    pool = {s.key: s.meta for s in iter_dataset(str(tmp_path / "split" / "unlabelled"))}
    assert pool["tagged-000000"] == {"source": "src", "tags": ["cat"]}
    assert pool["tagged-000003"] == {"source": "src", "tags": []}
    assert "tags" not in pool["lab-00002"]


def _csv(tmp_path, text):
    return _write(tmp_path, "tags.csv", text)


BAD = {  # name -> (sidecar file name or None, its content, one-line message fragment)
    "missing sidecar": ("nope.csv", None, "tags sidecar: no such file"),
    "not csv or json": ("tags.txt", "a", "expected a .csv (path,tags) or .json"),
    "bad header": ("tags.csv", "file,labels\n", "line 1: the header must be 'path,tags'"),
    "empty csv": ("tags.csv", "\n", "empty tags file"),
    "three fields": ("tags.csv", "path,tags\ntop.png,a,b\n", "line 2: expected 'path,tags', got 3"),
    "one field": ("tags.csv", "path,tags\ntop.png\n", "line 2: expected 'path,tags', got 1"),
    "open quote": ("tags.csv", 'path,tags\ntop.png,"a b\n', "malformed CSV"),
    "unknown image": ("tags.csv", "path,tags\ntop.png,a\nno/such.png,b\n",
                      "line 3: 'no/such.png' is not an image under"),
    "not an image": ("tags.csv", "path,tags\nnotes.md,b\n", "'notes.md' is not an image"),
    "listed twice": ("tags.csv", "path,tags\ntop.png,a\n./top.png,b\n",
                     "line 3: 'top.png' is listed twice (first at"),
    "escapes": ("tags.csv", "path,tags\n../top.png,a\n", "must be relative to the image folder"),
    "invalid json": ("tags.json", "{", "invalid JSON (line 1"),
    "json list": ("tags.json", "[]", "expected an object {relative path: [tags]}, got list"),
    "json string": ("tags.json", '{"top.png": "a b"}', "entry 'top.png': tags must be a list"),
    "json unknown": ("tags.json", '{"x.png": ["a"]}', "'x.png' is not an image under"),
    "not utf-8": ("tags.csv", b"path,tags\ntop.png,\xff\n", "not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sidecars(tmp_path, case):
    name, content, fragment = BAD[case]
    _folder(tmp_path / "src")
    _write(tmp_path / "src", "notes.md", "hello")
    if content is not None:
        _write(tmp_path, name, content)
    with pytest.raises(DataError) as err:
        import_tagged(str(tmp_path / "src"), str(tmp_path / "out"), tags=str(tmp_path / name))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_images_and_txt(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        import_tagged(str(tmp_path / "empty"), str(tmp_path / "o"))
    _folder(tmp_path / "src")
    with pytest.raises(DataError, match="none of the 4 images has a tag file beside it"):
        import_tagged(str(tmp_path / "src"), str(tmp_path / "o"))
    _write(tmp_path / "src", "top.png.txt", "a")
    _write(tmp_path / "src", "top.txt", "b")
    with pytest.raises(DataError, match="'top.png' has two tag files"):
        import_tagged(str(tmp_path / "src"), str(tmp_path / "o"))
    _write(tmp_path / "bad", "x.png", b"not a png")
    _write(tmp_path / "bad", "x.png.txt", "a")
    with pytest.raises(DataError, match="none of the 1 images could be decoded"):
        import_tagged(str(tmp_path / "bad"), str(tmp_path / "o"))
    with pytest.raises(DataError, match="no such directory"):
        import_openclipart(str(tmp_path / "nothing"), str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="openclipart reads a local tree"):
        import_openclipart("s3://bucket/png", str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="needs an explicit src"):
        import_dataset("tagged", None, str(tmp_path / "o"))


@pytest.mark.parametrize("args, fragment", [
    (["source=mnist", "tags=x.csv"],
     "tags: Value error, read only by source tagged, not by 'mnist'"),
    (["source=image-folder", "size=32"],
     "size: Value error, read only by source tagged and openclipart, not by 'image-folder'"),
    (["source=tagged", "channels=2"], "channels: Input should be 1 or 3"),
    (["source=tagged", "size=0"], "size: Input should be greater than or equal to 1"),
    (["source=tagged", "src=/no/such/dir"], "/no/such/dir: no images found"),
])
def test_cli_one_line_errors(tmp_path, capsys, args, fragment):
    sets = [a for kv in args + [f"out={tmp_path}/o"] for a in ("--set", kv)]
    assert main(["data", "import", *sets]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("semisup: error:")]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
