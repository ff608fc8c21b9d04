"""WordNet 3.0 as Debian's ``wordnet-base`` installs it (``/usr/share/wordnet``), read by
NLTK's own reader with nothing downloaded.

NLTK's ``WordNetCorpusReader`` wants two things the Debian package does not ship: ``lexnames``
(the 45 lexicographer file names; the C library has them compiled in, so Debian leaves the file
out) and, through ``map_wn``, ``index.sense`` for a 3.0 -> 3.0 mapping it does not need. The
subclass below serves ``lexnames`` from the constant (generated from Debian's own
``lexnames(5WN)`` man page) and skips the mapping. NLTK 3.10 refuses paths outside
``nltk.data.path`` (``nltk/pathsec.py``), so the root is appended to it; symlinked staging
directories are refused, which is why the reader is rooted at the Debian directory itself.
"""

from __future__ import annotations

import functools
import io
import os
import warnings

from semisup_core.errors import ConfigError

DEFAULT_ROOT = "/usr/share/wordnet"
NEEDED = ("data.noun", "index.noun", "noun.exc")

# file number, name, syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb): lexnames(5WN)
_LEX = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
        "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
        "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
        "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
        "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
        "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
        "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl").split()
_POS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAMES = "".join(f"{i:02d}\t{name}\t{_POS[name.split('.')[0]]}\n" for i, name in enumerate(_LEX))


def _reader_class():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class DebianWordNet(WordNetCorpusReader):
        """NLTK's reader over a WNDB directory without ``lexnames`` and ``index.sense``."""

        def open(self, fileid):
            if fileid == "lexnames":
                return io.StringIO(LEXNAMES)
            return super().open(fileid)

        def map_wn(self, version="wordnet"):  # the data is 3.0 already: no OMW mapping
            return None

    return DebianWordNet


@functools.lru_cache(maxsize=4)
def load_wordnet(root: str = DEFAULT_ROOT):
    """NLTK's WordNet reader over ``root`` (a WNDB directory: data.*, index.*, *.exc)."""
    missing = [f for f in NEEDED if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise ConfigError(f"wordnet {root}: {', '.join(missing)} missing (install the Debian "
                          "package wordnet-base, or set wordnet to a WordNet 3.0 WNDB directory)")
    import nltk
    root = os.path.realpath(root)
    if root not in nltk.data.path:
        nltk.data.path.append(root)  # NLTK 3.10 reads only below its data paths
    with warnings.catch_warnings():  # "no OMW reader": the English WordNet alone is meant
        warnings.simplefilter("ignore", UserWarning)
        try:
            return _reader_class()(root, None)
        except Exception as err:  # noqa: BLE001 -- one line naming the directory
            raise ConfigError(f"wordnet {root}: not a readable WordNet ({err})") from None


def wnid(synset) -> str:
    """ImageNet's id of a noun synset: ``n`` + its 8-digit offset in data.noun."""
    return f"{synset.pos()}{synset.offset():08d}"


def hyponym_closure(synset) -> set:
    """Every synset below ``synset`` (hyponyms and instance hyponyms, transitively)."""
    return set(synset.closure(lambda s: s.hyponyms() + s.instance_hyponyms()))


def depth_below(synset, ancestor) -> int | None:
    """Fewest hypernym steps from ``synset`` up to ``ancestor`` (0 when equal); None if it is
    not an ancestor."""
    frontier, seen, d = {synset}, {synset}, 0
    while frontier:
        if ancestor in frontier:
            return d
        nxt = set()
        for s in frontier:
            nxt.update(h for h in s.hypernyms() + s.instance_hypernyms() if h not in seen)
        seen |= nxt
        frontier, d = nxt, d + 1
    return None
