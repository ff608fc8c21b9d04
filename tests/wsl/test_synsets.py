"""WordNet from Debian's files through NLTK, and the tag -> synset mapping on hand-checked
cases; the synsets stage's tables against brute-force counts."""

from __future__ import annotations

import gzip
import os
import re
from collections import Counter

import pytest

from semisup_core.errors import ConfigError, DataError
from semisup_core.tables import read_table
from semisup_core.wsl import wordnet
from semisup_core.wsl.simulate import CLASS_SYNSETS
from semisup_core.wsl.synsets import (DEFAULT_STOP_TAGS, Canonicaliser, SynsetsConfig, TargetMap,
                                     normalise, run_synsets)
from tests.wsl.conftest import write_tagged

FASHION = list(CLASS_SYNSETS)


def test_lexnames_constant_is_debians_man_page():
    page = "/usr/share/man/man5/lexnames.5WN.gz"
    if not os.path.exists(page):  # man pages excluded (slim images): the data files suffice
        page = "/usr/share/doc/wordnet-base/lexnames.5WN.gz"
    rows = re.findall(r"^(\d\d)\t(\S+) *\t", gzip.open(page, "rt").read(), re.M)
    assert [f"{n}\t{name}" for n, name in rows] == [
        "\t".join(line.split("\t")[:2]) for line in wordnet.LEXNAMES.splitlines()]


def test_reader_over_the_debian_directory(wn):
    assert wn.get_version() == "3.0"
    bear = wn.synset("brown_bear.n.01")
    assert wn.synsets("brown_bear") == wn.synsets("ursus_arctos") == [bear]
    assert wordnet.wnid(wn.synset("dog.n.01")) == "n02084071"  # ImageNet's id of 'dog'
    assert bear.lexname() == "noun.animal"
    # the class table of docs/wsl.md
    wnids = {c: [wordnet.wnid(wn.synset(s)) for s in ss] for c, ss in CLASS_SYNSETS.items()}
    assert wnids["Trouser"] == ["n04489008"] and wnids["Sneaker"] == ["n03472535"]
    assert wnids["Bag"] == ["n02774152"] and wnids["Ankle boot"] == ["n02872752"]


def test_missing_wordnet_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"data.noun, index.noun, noun.exc missing .*wordnet-base"):
        wordnet.load_wordnet(str(tmp_path))


def _pointers(root: str) -> dict[int, list[int]]:
    """data.noun parsed without NLTK: offset -> hyponym offsets (~ and ~i pointers)."""
    down: dict[int, list[int]] = {}
    with open(os.path.join(root, "data.noun"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            head = line.split(" | ")[0].split()
            off, nwords = int(head[0]), int(head[3], 16)
            i = 4 + 2 * nwords
            nptr = int(head[i])
            ptrs = [head[i + 1 + 4 * j: i + 5 + 4 * j] for j in range(nptr)]
            down[off] = [int(p[1]) for p in ptrs if p[0] in ("~", "~i") and p[2] == "n"]
    return down


def test_hyponym_closure_and_depth_against_a_bfs_of_the_raw_file(wn):
    down = _pointers(wordnet.DEFAULT_ROOT)
    for name in ("shirt.n.01", "coat.n.01", "bag.n.04", "footwear.n.02"):
        s = wn.synset(name)
        seen, frontier, depth = set(), [s.offset()], {}
        d = 0
        while frontier:
            nxt = []
            for o in frontier:
                for h in down[o]:
                    if h not in seen:
                        seen.add(h)
                        depth.setdefault(h, d + 1)
                        nxt.append(h)
            frontier, d = nxt, d + 1
        assert {x.offset() for x in wordnet.hyponym_closure(s)} == seen
        for o, dd in list(depth.items())[:40]:
            assert wordnet.depth_below(wn.synset_from_pos_and_offset("n", o), s) == dd
    assert wordnet.depth_below(wn.synset("dog.n.01"), wn.synset("shirt.n.01")) is None


@pytest.mark.parametrize("tag, rule, form, first", [
    ("#BrownBear", "exact", "brownbear", None),  # normalised, then no sense -> split below
    ("#brown bear", "exact", "brown_bear", "brown_bear.n.01"),
    ("shirts", "exact", "shirts", "shirt.n.01"),  # WordNet's morphology
    ("t-shirt", "exact", "T-shirt", "jersey.n.03"),
    ("Tee-Shirt", "exact", "tee_shirt", "jersey.n.03"),
])
def test_normalise_and_exact_forms(wn, tag, rule, form, first):
    r = Canonicaliser(wn).resolve(tag)
    if first is None:
        assert r.rule == "split" and r.form == "brown_bear"
        return
    assert r.rule == rule and r.senses[0].name() == first
    assert r.form.lower() == form.lower()


def test_compounds_split_into_the_fewest_parts(wn):
    c = Canonicaliser(wn)
    cases = {"brownbear": "brown_bear", "ursusarctos": "ursus_arctos", "teeshirt": "tee_shirt",
             "tennisshoe": "tennis_shoe", "articleofclothing": "article_of_clothing"}
    for tag, form in cases.items():
        r = c.resolve(tag)
        assert (r.rule, r.form) == ("split", form), tag
        # every form is a lemma of its first synset (after WordNet's morphology)
        assert wn.morphy(form, "n") in [n.lower() for n in r.senses[0].lemma_names()]
    assert c.resolve("#brownbear").senses[0] == c.resolve("#ursusarctos").senses[0] \
        == wn.synset("brown_bear.n.01")  # the paper's example: merged
    assert c.resolve("magick").rule == "none" and c.resolve("magick").senses == ()
    assert c.resolve("x7").rule == "none"  # not alphabetic: no split
    off = Canonicaliser(wn, split_compounds=False).resolve("brownbear")
    assert off.rule == "none"


def test_stop_tags_and_overrides(wn):
    c = Canonicaliser(wn, stop_tags=["#Photo"], overrides={"hash": "hashish.n.01"})
    assert c.resolve("photo").rule == "stop" and c.resolve("").rule == "stop"
    r = c.resolve("#hash")
    assert r.rule == "override" and r.senses == (wn.synset("hashish.n.01"),)
    with pytest.raises(ConfigError, match="'hash' -> 'nosuch.n.01' is not a WordNet synset"):
        Canonicaliser(wn, overrides={"hash": "nosuch.n.01"})


def test_target_rule_ranks_and_nearest_ancestor(wn):
    tm = TargetMap(wn, CLASS_SYNSETS, FASHION, max_rank=1)
    c = Canonicaliser(wn)
    cls = lambda tag: tm.classes_of(c.resolve(tag).senses)  # noqa: E731
    idx = {name: i for i, name in enumerate(FASHION)}
    assert cls("bag")[0] == {idx["Bag"]}  # bag.n.04 is 'bag''s 4th sense: a listed synset counts
    assert cls("top")[0] == {idx["T-shirt/top"]}  # top.n.10
    assert cls("pants")[0] == {idx["Trouser"]}  # trouser.n.01 is 'pants''s 3rd sense
    # jersey.n.03 is listed for T-shirt and is a hyponym of shirt.n.01 (Shirt): listed wins
    assert cls("teeshirt")[0] == {idx["T-shirt/top"]}
    # turtleneck.n.01: below jersey.n.03 (T-shirt, 1 step) and shirt.n.01 (Shirt, 2 steps)
    assert cls("turtleneck")[0] == {idx["T-shirt/top"]}
    assert cls("dashiki")[0] == {idx["Shirt"]}  # a hyponym at rank 1
    assert cls("white") == (set(), None, "sense_rank")  # flannel.n.03 is its 12th sense
    assert cls("dog") == (set(), None, "out_of_vocabulary")
    assert cls("white")[0] == set() and TargetMap(wn, CLASS_SYNSETS, FASHION, 12) \
        .classes_of(c.resolve("white").senses)[0] == {idx["Trouser"]}
    with pytest.raises(ConfigError, match="class 'Hat' is not one of"):
        TargetMap(wn, {"Hat": ["hat.n.01"]}, FASHION, 1)


TAGS = [["#brownbear", "shirt"], ["ursusarctos", "photo"], ["shirts", "dog", "magick"],
        ["dog", "puppy"], ["teeshirt"], ["bag", "white"], [], ["Dog", "hound", "tennisshoe"],
        ["coat", "coats", "xyzzy"], ["jersey"], ["dog"], ["trousers", "pants"]]


def _run(tmp_path, wn_vocab, **kw):
    data, keys = write_tagged(str(tmp_path / "data"), TAGS, classes=kw.pop("classes", None))
    cfg = SynsetsConfig(data=data, out=str(tmp_path / wn_vocab), vocabulary=wn_vocab, **kw)
    return run_synsets(cfg), cfg, keys


def _brute_first_senses(wn):
    c = Canonicaliser(wn, DEFAULT_STOP_TAGS)
    return {t: (c.resolve(t).senses[0] if c.resolve(t).senses and c.resolve(t).rule != "stop"
                else None) for ts in TAGS for t in ts}


def test_top_vocabulary_targets_and_counts_against_brute_force(tmp_path, wn):
    summary, cfg, keys = _run(tmp_path, "top", top_n=3)
    first = _brute_first_senses(wn)
    images = Counter(s for ts in TAGS for s in {first[t] for t in ts} if s is not None)
    top = sorted(images, key=lambda s: (-images[s], s.name()))[:3]
    vocab = read_table(f"{cfg.out}/vocabulary.parquet").to_pylist()
    assert [v["synset"] for v in vocab] == [s.name() for s in top]
    assert [v["images"] for v in vocab] == [images[s] for s in top]
    index = {s: i for i, s in enumerate(top)}
    want = {k: sorted({index[first[t]] for t in ts if first[t] in index})
            for k, ts in zip(keys, TAGS)}
    got = dict(zip(*read_table(f"{cfg.out}/targets.parquet").to_pydict().values()))
    assert got == {k: v for k, v in want.items() if v}
    # the audit table: every raw tag once, counts right, drops add up
    mapping = read_table(f"{cfg.out}/mapping.parquet").to_pylist()
    occ = Counter(t for ts in TAGS for t in ts)
    assert {m["raw_tag"]: m["occurrences"] for m in mapping} == dict(occ)
    mapped = [m for m in mapping if m["labels"]]
    assert all(m["dropped_reason"] is None for m in mapped)
    assert len(mapped) + sum(summary["dropped_tags"].values()) == len(occ)
    assert sum(m["occurrences"] for m in mapped) + sum(summary["dropped_occurrences"].values()) \
        == sum(occ.values())
    assert summary["dropped_tags"]["stop"] == 1  # photo
    assert summary["dropped_tags"]["no_synset"] == 2  # magick, xyzzy
    # 'dog', 'Dog' and 'hound' (dog's first sense is dog.n.01; hound's is hound.n.01) ...
    dog = index.get(wn.synset("dog.n.01"))
    assert dog is not None and {m["raw_tag"] for m in mapped if m["labels"] == [dog]} >= {"dog", "Dog"}
    assert summary["merged"] >= 1 and summary["images"] == len(TAGS)
    audit = open(f"{cfg.out}/mapping.md").read()  # the table a person reads
    assert "| #brownbear | brown_bear | split | brown_bear.n.01 | n02132136 | 1 |  |" in audit
    assert "| magick |  | none |  |  | 1 | no_synset |" in audit
    assert summary["images_with_labels"] == len(got)


def test_nouns_vocabulary_keeps_every_first_sense(tmp_path, wn):
    summary, cfg, _ = _run(tmp_path, "nouns")
    first = {s for s in _brute_first_senses(wn).values() if s is not None}
    vocab = read_table(f"{cfg.out}/vocabulary.parquet").to_pylist()
    assert {v["synset"] for v in vocab} == {s.name() for s in first}
    assert summary["vocabulary_size"] == len(first)
    assert read_table(f"{cfg.out}/mapping.parquet").to_pylist()  # written
    # brown_bear.n.01: '#brownbear' and 'ursusarctos' merged into one label
    bear = next(v for v in vocab if v["synset"] == "brown_bear.n.01")
    assert bear["images"] == 2


def test_target_vocabulary_and_candidates(tmp_path, wn):
    summary, cfg, keys = _run(tmp_path, "target", target_synsets=CLASS_SYNSETS, classes=FASHION)
    assert summary["vocabulary_size"] == len(FASHION)
    vocab = read_table(f"{cfg.out}/vocabulary.parquet").to_pylist()
    assert [v["lemma_names"] for v in vocab] == FASHION
    tm, c = TargetMap(wn, CLASS_SYNSETS, FASHION, 1), Canonicaliser(wn)
    want = sorted({(k, cl) for k, ts in zip(keys, TAGS) for t in ts
                   for cl in tm.classes_of(c.resolve(t).senses)[0]})
    cand = read_table(f"{cfg.out}/candidates.parquet").to_pydict()
    assert list(zip(cand["key"], cand["class_id"])) == want
    targets = dict(zip(*read_table(f"{cfg.out}/targets.parquet").to_pydict().values()))
    assert targets == {k: sorted({cl for kk, cl in want if kk == k}) for k in {k for k, _ in want}}
    assert summary["dropped_tags"]["sense_rank"] == 1  # white
    assert summary["candidates"]["rows"] == len(want)


def test_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="vocabulary target needs target_synsets"):
        _run(tmp_path, "target")
    data, _ = write_tagged(str(tmp_path / "bare"), [[], []])
    with pytest.raises(DataError, match="no sample carries tags"):
        run_synsets(SynsetsConfig(data=data, out=str(tmp_path / "o")))
    data, _ = write_tagged(str(tmp_path / "junk"), [["xyzzy"], ["qwxz"]])
    with pytest.raises(DataError, match="no tag maps to the top vocabulary"):
        run_synsets(SynsetsConfig(data=data, out=str(tmp_path / "o2")))


def test_normalise():
    assert normalise("  #Brown-Bear ") == "brown_bear"
    assert normalise("Ｔシャツ") == "tシャツ"  # NFKC folds the full-width letter
    assert normalise("ice  cream") == "ice_cream"
