"""SIMULATED weak tags for the demo's pool (Fashion-MNIST + MNIST distractors), generated from
the hidden labels by a documented, seeded procedure, so that the WSL pipeline has tags to merge.
They come from the oracle: nothing oracle-free may read them, and every report of a run on them
says so (``tags_simulated`` travels in the pool's dataset.json and every sample's JSON).

One Fashion-MNIST image of class c:
1. k ~ U{1, 2, 3} tags drawn from c's bank: the lemmas of c's synsets (``CLASS_SYNSETS``; total
   weight 0.7) and of their hypernyms up to two levels up (0.3), each part uniform;
2. each tag rendered as a person would type it: lower-case, ``_`` dropped with p 0.5 (a
   compound hashtag: ``teeshirt``) or written as a space, a plural ``s`` with p 0.2;
3. each tag replaced with p ``noise_rate`` (after Mahajan et al.'s noise study): with p
   ``confusion_share`` by a tag of another class's bank, else by a random WordNet noun lemma
   with a SemCor count (``cntlist.rev``).
One MNIST distractor: one of {its digit word, digit, number, handwriting}, plus 1-2 random noun
lemmas, each then under the same noise (a confusion tag: a random garment class's).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from pydantic import Field

from semisup_core import storage
from semisup_core.config import StageConfig
from semisup_core.data.dataset import make_meta, read_meta, shard_uris, write_meta
from semisup_core.data.shards import ShardWriter, iter_shard
from semisup_core.errors import DataError
from semisup_core.tables import read_table
from semisup_core.wsl import wordnet

log = logging.getLogger(__name__)

VERSION = 1
CLASS_SYNSETS = {  # Fashion-MNIST's classes in WordNet 3.0 (docs/wsl.md has the table)
    "T-shirt/top": ["jersey.n.03", "top.n.10"], "Trouser": ["trouser.n.01"],
    "Pullover": ["pullover.n.01"], "Dress": ["dress.n.01"], "Coat": ["coat.n.01"],
    "Sandal": ["sandal.n.01"], "Shirt": ["shirt.n.01"], "Sneaker": ["gym_shoe.n.01"],
    "Bag": ["bag.n.04"], "Ankle boot": ["boot.n.01"]}
DIGITS = "zero one two three four five six seven eight nine".split()


class SimulatedTags(StageConfig):
    noise_rate: float = Field(0.3, ge=0, le=1, description="share of tags replaced by noise")
    confusion_share: float = Field(0.5, ge=0, le=1, description="share of the noise drawn from "
                                                                "another class's tags")
    own_weight: float = Field(0.7, ge=0, le=1, description="a class's own synset lemmas vs "
                                                           "its hypernyms' (2 levels)")


def _bank(wn, synsets: list[str], own_weight: float) -> tuple[list[str], np.ndarray]:
    own = sorted({name for s in synsets for name in wn.synset(s).lemma_names()})
    up = set()
    for s in synsets:
        h1 = wn.synset(s).hypernyms()
        for h in h1 + [g for x in h1 for g in x.hypernyms()]:
            up.update(h.lemma_names())
    up = sorted(up - set(own))
    w = [own_weight / len(own)] * len(own) + ([(1 - own_weight) / len(up)] * len(up) if up else [])
    p = np.array(w)
    return own + up, p / p.sum()


def common_nouns(root: str) -> list[str]:
    """Noun lemmas with a SemCor count (``cntlist.rev``: sense keys ``lemma%1:...``)."""
    names = set()
    with open(os.path.join(root, "cntlist.rev"), encoding="utf-8") as f:
        for line in f:
            key = line.split(" ", 1)[0]
            lemma, _, rest = key.partition("%")
            if rest.startswith("1:"):
                names.add(lemma)
    return sorted(names)


def _render(tag: str, rng: np.random.Generator) -> str:
    t = tag.lower()
    if "_" in t:
        t = t.replace("_", "" if rng.random() < 0.5 else " ")
    elif rng.random() < 0.2:
        t += "s"
    return t


def simulate_tags(pool: str, oracle: str, out: str, spec: SimulatedTags, seed: int,
                  wordnet_root: str = wordnet.DEFAULT_ROOT) -> dict:
    """A copy of ``pool`` (same keys) whose samples carry simulated ``tags``; returns the
    measured noise. Written once: an existing complete copy is reused."""
    done = storage.join(out, "dataset.json")
    if storage.exists(done):
        return read_meta(out).extra["tags_simulated"]
    wn = wordnet.load_wordnet(wordnet_root)
    meta = read_meta(pool)
    table = read_table(oracle, ["key", "true_class", "source_class_name"])
    truth = dict(zip(table["key"].to_pylist(), table["true_class"].to_pylist()))
    digit = dict(zip(table["key"].to_pylist(), table["source_class_name"].to_pylist()))
    missing = [c for c in meta.classes if c not in CLASS_SYNSETS]
    if missing:
        raise DataError(f"simulated tags know Fashion-MNIST's classes; {pool} has {missing}")
    banks = [_bank(wn, CLASS_SYNSETS[c], spec.own_weight) for c in meta.classes]
    nouns = common_nouns(wnroot := os.path.realpath(wordnet_root))
    rng = np.random.default_rng([seed, 0x7A65])
    n_tags = n_noise = 0

    def noisy(tag: str, own: int | None) -> str:
        nonlocal n_noise
        if rng.random() >= spec.noise_rate:
            return tag
        n_noise += 1
        if rng.random() < spec.confusion_share:
            other = [c for c in range(len(banks)) if c != own]
            words, p = banks[other[rng.integers(len(other))]]
            return _render(words[rng.choice(len(words), p=p)], rng)
        return _render(nouns[rng.integers(len(nouns))], rng)

    with ShardWriter(out, 4096) as writer:
        for uri in shard_uris(pool, meta):
            for s in iter_shard(uri):
                if s.key not in truth:
                    raise DataError(f"pool sample {s.key} is not in the oracle {oracle}")
                c = truth[s.key]
                if c >= 0:
                    words, p = banks[c]
                    k = int(rng.integers(1, 4))
                    tags = [_render(words[i], rng) for i in rng.choice(len(words), size=k, p=p)]
                else:
                    d = digit[s.key]
                    word = DIGITS[int(d)] if d is not None and d.isdigit() else "number"
                    first = [word, "digit", "number", "handwriting"][rng.integers(4)]
                    tags = [first] + [_render(nouns[i], rng)
                                      for i in rng.integers(len(nouns), size=int(rng.integers(1, 3)))]
                tags = [noisy(t, c if c >= 0 else None) for t in tags]
                n_tags += len(tags)
                writer.write(s.key, s.image, s.ext, s.cls,
                             dict(s.meta, tags=tags, tags_simulated=True))
    info = {"seed": seed, "noise_rate": spec.noise_rate, "confusion_share": spec.confusion_share,
            "own_weight": spec.own_weight, "version": VERSION, "tags": n_tags,
            "noise_measured": round(n_noise / max(1, n_tags), 4), "wordnet": wnroot}
    write_meta(out, make_meta(out, f"{meta.name}-tagged", meta.classes, writer.shards, None,
                              source="simulated-tags", channels=meta.channels,
                              hw=(meta.height, meta.width) if meta.height else None,
                              extra=dict(meta.extra or {}, tags_simulated=info)))
    log.info("SIMULATED tags for %s: %d tags, %.1f%% noise -> %s", pool, n_tags,
             100 * info["noise_measured"], out)
    return info

