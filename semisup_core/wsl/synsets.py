"""``semisup stage synsets``: every tag of a tagged dataset canonicalised to a WordNet 3.0 noun
synset (Mahajan et al. 2018 §"Pipeline": "#brownbear and #ursusarctos are merged"), the
label vocabulary chosen, the per-image soft targets and the resampled weak training set.

One tag, step by step (``Resolution.rule`` records which step matched):
1. normalise: ``#`` stripped, NFKC, lower-case, spaces and hyphens to ``_``; stop-tags dropped;
2. ``overrides``: a tag -> synset table of the user's (checked against WordNet);
3. ``exact``: WordNet's noun senses of the form, with its morphology (shirts -> shirt), or of
   the form with ``-`` for ``_`` (t_shirt -> T-shirt);
4. ``split``: a compound hashtag without ``_`` split where WordNet has the compound, two parts
   before three, each part of >= 2 letters, left to right, joined by ``_`` or ``-``
   (brownbear -> brown_bear, ursusarctos -> ursus_arctos, teeshirt -> tee_shirt);
5. the sense, by vocabulary (``vocabulary``; the paper's three label sets):
   - ``nouns``: the first sense (WordNet orders senses by frequency): all noun synsets;
   - ``top``: as ``nouns``, then the ``top_n`` synsets with the most images;
   - ``target``: the target classes' synsets (``target_synsets``): a tag maps to class c when
     one of its senses, at any rank, is a synset listed for c, or when one of its first
     ``hyponym_max_rank`` senses is a hyponym of one (nearest listed ancestor wins; equal
     depth gives every such class, counted as ``ambiguous``).
6. anything else is dropped and counted by reason: ``stop``, ``no_synset``,
   ``out_of_vocabulary``, ``sense_rank`` (target: a hyponym only at a rarer sense).

Outputs under ``out``: ``mapping.parquet`` (one row per raw tag: how it resolved, counts;
the audit table), ``vocabulary.parquet``, ``targets.parquet`` (key -> label indices: the 1/k
soft targets), ``candidates.parquet`` (key -> target class, when ``target_synsets`` is set:
the semi-weak selection's tag restriction), ``summary.json`` and, with ``draws`` > 0, the
resampled weak training set ``train/`` (``resample.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections import Counter, defaultdict
from typing import Literal

import pyarrow as pa
from pydantic import Field

from semisup_core import storage
from semisup_core.config import StageConfig
from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.data.shards import iter_shard
from semisup_core.errors import ConfigError, DataError
from semisup_core.tables import write_table
from semisup_core.wsl import wordnet

log = logging.getLogger(__name__)

DEFAULT_STOP_TAGS = ["photo", "photooftheday", "instagood", "picture", "image", "me", "love",
                     "cute", "art", "design", "icon", "icons", "clipart", "cartoon", "theme",
                     "hash", "computer", "openclipart", "svg", "png", "remix"]


class SynsetsConfig(StageConfig):
    data: str = Field(description="tagged dataset URI (tags in each sample's JSON: "
                                  "'semisup data import --set source=tagged|openclipart', or a "
                                  "split's pool)")
    out: str = Field(description="output URI (mapping, vocabulary, targets, weak training set)")
    vocabulary: Literal["target", "nouns", "top"] = Field(
        "top", description="label set: the target classes' synsets, all noun synsets, or the "
                           "top_n most frequent (Mahajan et al.'s three)")
    top_n: int = Field(1000, ge=1, description="vocabulary top: synsets kept")
    target_synsets: dict[str, list[str]] = Field(
        default_factory=dict, description="class name -> WordNet synsets (e.g. shirt.n.01); "
                                          "classes in the dataset's order when it has classes")
    hyponym_max_rank: int = Field(1, ge=0, description="target: a tag's senses up to this rank "
                                                       "may map to a class through a hyponym")
    stop_tags: list[str] = Field(default_factory=lambda: list(DEFAULT_STOP_TAGS),
                                 description="tags dropped before lookup (normalised form)")
    overrides: dict[str, str] = Field(default_factory=dict,
                                      description="tag -> synset, before WordNet's own senses")
    split_compounds: bool = Field(True, description="split hashtags like brownbear")
    min_images: int = Field(1, ge=1, description="drop synsets carried by fewer images")
    wordnet: str = Field(wordnet.DEFAULT_ROOT, description="WordNet 3.0 WNDB directory "
                                                           "(Debian wordnet-base)")
    draws: float = Field(0.0, ge=0, description="resampled training set: samples per image "
                                                "(0: none written); the weak pre-training "
                                                "then runs one epoch over it")
    power: float = Field(0.5, ge=0, le=1, description="resampling: tag drawn with p ~ f^power "
                                                      "(0.5 square root, the paper's; 1 "
                                                      "natural; 0 uniform)")
    seed: int = 0
    samples_per_shard: int = Field(4096, ge=1)
    spill_mb: float = Field(256, gt=0, description="resampling: images buffered before they "
                                                   "are spilled to out/train/_work (the copy's "
                                                   "memory beside one output shard)")


@dataclasses.dataclass(frozen=True)
class Resolution:
    normalised: str
    form: str | None  # the WordNet form that matched
    rule: str  # override | exact | split | stop | none
    senses: tuple  # noun synsets of the form, in WordNet's order


_SEP = re.compile(r"[\s\-]+")


def normalise(tag: str) -> str:
    t = unicodedata.normalize("NFKC", str(tag)).strip().lstrip("#").lower()
    return _SEP.sub("_", t).strip("_")


class Canonicaliser:
    """Tag -> WordNet noun senses, memoised (a pool repeats its tags)."""

    def __init__(self, wn, stop_tags=(), overrides=None, split_compounds=True):
        self.wn, self.split_compounds = wn, split_compounds
        self.stop = {normalise(t) for t in stop_tags}
        self.overrides = {}
        for tag, name in (overrides or {}).items():
            try:
                self.overrides[normalise(tag)] = wn.synset(name)
            except Exception:  # noqa: BLE001 -- nltk raises several kinds
                raise ConfigError(f"overrides: {tag!r} -> {name!r} is not a WordNet synset") from None
        self._memo: dict[str, Resolution] = {}

    def senses(self, form: str) -> tuple:
        return tuple(self.wn.synsets(form, pos="n"))

    def _split(self, t: str) -> tuple[str | None, tuple]:
        for parts in (2, 3):
            for cut in _cuts(len(t), parts):
                pieces = [t[a:b] for a, b in zip((0,) + cut, cut + (len(t),))]
                for sep in ("_", "-"):
                    form = sep.join(pieces)
                    found = self.senses(form)
                    if found:
                        return form, found
        return None, ()

    def resolve(self, tag: str) -> Resolution:
        t = normalise(tag)
        hit = self._memo.get(t)
        if hit is not None:
            return hit
        if not t or t in self.stop:
            res = Resolution(t, None, "stop", ())
        elif t in self.overrides:
            res = Resolution(t, t, "override", (self.overrides[t],))
        elif found := self.senses(t):
            res = Resolution(t, t, "exact", found)
        elif "_" in t and (found := self.senses(t.replace("_", "-"))):  # t-shirt, work-shirt
            res = Resolution(t, t.replace("_", "-"), "exact", found)
        elif self.split_compounds and "_" not in t and t.replace("'", "").isalpha():
            form, found = self._split(t)
            res = Resolution(t, form, "split" if found else "none", found)
        else:
            res = Resolution(t, None, "none", ())
        self._memo[t] = res
        return res


def _cuts(n: int, parts: int, min_len: int = 2):
    """Cut positions splitting a word of length n into ``parts`` pieces of >= min_len, with
    the first cut leftmost first."""
    if parts == 2:
        for i in range(min_len, n - min_len + 1):
            yield (i,)
    else:
        for i in range(min_len, n - 2 * min_len + 1):
            for j in range(i + min_len, n - min_len + 1):
                yield (i, j)


class TargetMap:
    """Tag senses -> target classes: a listed synset at any sense rank, or a hyponym of one at
    sense rank <= ``max_rank``; the nearest listed ancestor wins."""

    def __init__(self, wn, target_synsets: dict[str, list[str]], classes: list[str], max_rank: int):
        self.max_rank = max_rank
        self.listed: dict = defaultdict(set)  # synset -> class ids
        for name, synsets in target_synsets.items():
            if name not in classes:
                raise ConfigError(f"target_synsets: class {name!r} is not one of {classes}")
            for s in synsets:
                try:
                    self.listed[wn.synset(s)].add(classes.index(name))
                except Exception:  # noqa: BLE001
                    raise ConfigError(f"target_synsets[{name!r}]: {s!r} is not a WordNet synset") from None
        self.below = {s: wordnet.hyponym_closure(s) for s in self.listed}

    def classes_of(self, senses: tuple) -> tuple[set[int], object, str | None]:
        """(class ids, the synset that matched, drop reason)."""
        for s in senses:  # a listed synset at any rank: 'bag' -> bag.n.04 (its 4th sense)
            if s in self.listed:
                return set(self.listed[s]), s, None
        hyponym_elsewhere = False
        for rank, s in enumerate(senses, start=1):
            owners = [a for a, below in self.below.items() if s in below]
            if not owners:
                continue
            if rank > self.max_rank:  # 'white' -> flannel.n.03 is its 12th sense
                hyponym_elsewhere = True
                continue
            depth = {a: wordnet.depth_below(s, a) for a in owners}
            best = min(depth.values())
            return {c for a in owners if depth[a] == best for c in self.listed[a]}, s, None
        return set(), None, "sense_rank" if hyponym_elsewhere else "out_of_vocabulary"


def _tags_of(sample) -> list[str]:
    tags = sample.meta.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    return [str(t) for t in tags]


def read_tags(data: str) -> tuple[list[str], list[list[str]], object]:
    """Keys and raw tags of every sample of ``data`` (its order), and its metadata."""
    meta = read_meta(data)
    keys, tags = [], []
    for uri in shard_uris(data, meta):
        for s in iter_shard(uri):
            keys.append(s.key)
            tags.append(_tags_of(s))
    if not any(tags):
        raise DataError(f"{data}: no sample carries tags (import it with --set source=tagged "
                        "or openclipart, or simulate the demo pool's tags)")
    return keys, tags, meta


def run_synsets(cfg: SynsetsConfig) -> dict:
    wn = wordnet.load_wordnet(cfg.wordnet)
    keys, tags, meta = read_tags(cfg.data)
    canon = Canonicaliser(wn, cfg.stop_tags, cfg.overrides, cfg.split_compounds)
    classes = list(meta.classes or list(cfg.target_synsets))
    if cfg.vocabulary == "target" and not cfg.target_synsets:
        raise ConfigError("vocabulary target needs target_synsets (class name -> synsets)")
    targets = TargetMap(wn, cfg.target_synsets, classes, cfg.hyponym_max_rank) \
        if cfg.target_synsets else None

    occurrences, images = Counter(), Counter()
    for ts in tags:
        occurrences.update(ts)
        images.update(set(ts))
    resolved = {raw: canon.resolve(raw) for raw in occurrences}
    # the sense each raw tag stands for, and its class ids (target)
    sense: dict[str, object] = {}
    tag_classes: dict[str, set[int]] = {}
    dropped: dict[str, str] = {}
    class_match: dict[str, object] = {}
    for raw, r in resolved.items():
        if r.rule == "stop":
            dropped[raw] = "stop"
            continue
        if not r.senses:
            dropped[raw] = "no_synset"
            continue
        if targets is not None:
            cls, matched, why = targets.classes_of(r.senses)
            if cls:
                tag_classes[raw], class_match[raw] = cls, matched
            elif cfg.vocabulary == "target":
                dropped[raw] = why
                continue
        if cfg.vocabulary != "target":
            sense[raw] = r.senses[0]

    # the vocabulary: label index -> synset (target: class index -> the class)
    if cfg.vocabulary == "target":
        vocab_names = classes
        label_of = {raw: sorted(c) for raw, c in tag_classes.items()}
        syn_images = Counter()
        for ts in tags:
            syn_images.update({c for t in set(ts) for c in label_of.get(t, ())})
        vocab_rows = [{"index": i, "synset": ",".join(cfg.target_synsets.get(name, [])),
                       "wnid": ",".join(wordnet.wnid(wn.synset(s)) for s in cfg.target_synsets.get(name, [])),
                       "lemma_names": name, "images": syn_images[i]} for i, name in enumerate(classes)]
    else:
        syn_images = Counter()
        for ts in tags:
            syn_images.update({sense[t] for t in set(ts) if t in sense})
        ranked = sorted((s for s in syn_images if syn_images[s] >= cfg.min_images),
                        key=lambda s: (-syn_images[s], s.name()))
        if cfg.vocabulary == "top":
            ranked = ranked[:cfg.top_n]
        index = {s: i for i, s in enumerate(ranked)}
        label_of = {}
        for raw, s in sense.items():
            if s in index:
                label_of[raw] = [index[s]]
            else:
                dropped[raw] = "out_of_vocabulary"
        vocab_names = [s.name() for s in ranked]
        vocab_rows = [{"index": i, "synset": s.name(), "wnid": wordnet.wnid(s),
                       "lemma_names": ",".join(s.lemma_names()), "images": syn_images[s]}
                      for i, s in enumerate(ranked)]
    if not vocab_names or not label_of:
        raise DataError(f"{cfg.data}: no tag maps to the {cfg.vocabulary} vocabulary "
                        f"({len(occurrences)} distinct tags; drops: {Counter(dropped.values())})")

    # per-image targets: the labels of its tags, each once (1/k each in the loss)
    target_keys, target_labels = [], []
    for key, ts in zip(keys, tags):
        labels = sorted({lab for t in ts for lab in label_of.get(t, ())})
        if labels:
            target_keys.append(key)
            target_labels.append(labels)
    out = cfg.out
    mapping = []
    for raw in sorted(occurrences, key=lambda t: (-occurrences[t], t)):
        r = resolved[raw]
        s = class_match.get(raw) if cfg.vocabulary == "target" else sense.get(raw)
        mapping.append({"raw_tag": raw, "normalised": r.normalised, "form": r.form, "rule": r.rule,
                        "synset": s.name() if s is not None else None,
                        "wnid": wordnet.wnid(s) if s is not None else None,
                        "labels": label_of.get(raw, []),
                        "classes": sorted(tag_classes.get(raw, ())),
                        "occurrences": occurrences[raw], "images": images[raw],
                        "dropped_reason": dropped.get(raw)})
    write_table(storage.join(out, "mapping.parquet"), pa.Table.from_pylist(mapping, schema=MAPPING_SCHEMA))
    storage.put_bytes(storage.join(out, "mapping.md"), audit_markdown(mapping).encode())
    write_table(storage.join(out, "vocabulary.parquet"), pa.Table.from_pylist(vocab_rows))
    write_table(storage.join(out, "targets.parquet"), pa.table(
        {"key": pa.array(target_keys, pa.string()),
         "labels": pa.array(target_labels, pa.list_(pa.int32()))}))
    summary = {"data": cfg.data, "vocabulary": cfg.vocabulary, "vocabulary_size": len(vocab_names),
               "images": len(keys), "images_with_tags": sum(bool(t) for t in tags),
               "images_with_labels": len(target_keys), "distinct_tags": len(occurrences),
               "tag_occurrences": sum(occurrences.values()),
               "mapped_tags": len(label_of),
               "dropped_tags": dict(sorted(Counter(dropped.values()).items())),
               "dropped_occurrences": dict(sorted(_sum_by(dropped, occurrences).items())),
               "merged": _merged(mapping),
               "tags_simulated": (meta.extra or {}).get("tags_simulated")}
    if targets is not None:
        cand = sorted({(key, c) for key, ts in zip(keys, tags) for t in ts
                       for c in tag_classes.get(t, ())})
        write_table(storage.join(out, "candidates.parquet"), pa.table(
            {"key": pa.array([k for k, _ in cand], pa.string()),
             "class_id": pa.array([c for _, c in cand], pa.int32())}))
        summary["candidates"] = {"rows": len(cand), "images": len({k for k, _ in cand}),
                                 "ambiguous_tags": sum(len(c) > 1 for c in tag_classes.values())}
    if cfg.draws > 0:
        from semisup_core.wsl.resample import write_resampled
        summary["train"] = write_resampled(cfg, meta, target_keys, target_labels, vocab_names,
                                           storage.join(out, "train"), cfg.spill_mb)
    storage.write_json(storage.join(out, "summary.json"), summary)
    log.info("synsets: %d of %d distinct tags map to %d labels (%s); %d of %d images labelled",
             len(label_of), len(occurrences), len(vocab_names), cfg.vocabulary,
             len(target_keys), len(keys))
    return summary


MAPPING_SCHEMA = pa.schema([
    ("raw_tag", pa.string()), ("normalised", pa.string()), ("form", pa.string()),
    ("rule", pa.string()), ("synset", pa.string()), ("wnid", pa.string()),
    ("labels", pa.list_(pa.int32())), ("classes", pa.list_(pa.int32())),
    ("occurrences", pa.int64()), ("images", pa.int64()), ("dropped_reason", pa.string())])


def audit_markdown(mapping: list[dict], top: int = 20, per_rule: int = 8) -> str:
    """The audit table a person reads: the ``top`` most frequent tags, then the first
    ``per_rule`` of each matching rule other than exact and of each drop reason."""
    def row(m):
        return (f"| {m['raw_tag']} | {m['form'] or ''} | {m['rule']} | {m['synset'] or ''} | "
                f"{m['wnid'] or ''} | {m['images']:,} | {m['dropped_reason'] or ''} |")
    head = ["| tag | WordNet form | rule | synset | wnid | images | dropped |",
            "|---|---|---|---|---|---:|---|"]
    lines = ["The most frequent tags:", "", *head, *map(row, mapping[:top])]
    groups = [("split", lambda m: m["rule"] == "split"), ("override", lambda m: m["rule"] == "override")]
    groups += [(f"dropped: {why}", lambda m, w=why: m["dropped_reason"] == w)
               for why in ("no_synset", "out_of_vocabulary", "sense_rank")]
    for title, keep in groups:
        rows = [m for m in mapping if keep(m)][:per_rule]
        if rows:
            lines += ["", f"{title} (most images first):", "", *head, *map(row, rows)]
    return "\n".join(lines) + "\n"


def _sum_by(dropped: dict[str, str], occurrences: Counter) -> Counter:
    out = Counter()
    for raw, why in dropped.items():
        out[why] += occurrences[raw]
    return out


def _merged(mapping: list[dict]) -> int:
    """Labels that more than one distinct normalised tag maps to (synonyms merged)."""
    forms = defaultdict(set)
    for row in mapping:
        for lab in row["labels"]:
            forms[lab].add(row["normalised"])
    return sum(len(f) > 1 for f in forms.values())
