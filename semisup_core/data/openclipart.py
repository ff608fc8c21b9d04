"""OpenClipart as Debian ships it: PNGs filed by topic, keywords in the SVG twins.

``openclipart-png`` holds 8,121 ``.png`` paths under ``/usr/share/openclipart/png``: 6,900
files and 1,221 symlinks that file an image under a second topic. ``openclipart-svg``
holds an SVG at the same relative path of each, whose RDF metadata carries the keywords::

    <dc:title>bear</dc:title>
    <dc:subject><rdf:Bag><rdf:li>mammal</rdf:li><rdf:li>bear</rdf:li></rdf:Bag></dc:subject>

(docs/plans/wsl.md §2). An image's tags: the directory names of every path that resolves
to it, then its ``dc:subject`` entries, then its ``dc:title`` when it is a name of at most
``TITLE_WORDS`` words ("bear", "Floppy disk"; longer titles are descriptions such as "Part of
the Flat Icon Collection (Wed Aug 25 ...)", kept in the sample's ``title`` only). The tree is local only: the
symlinks are what tell the aliases apart.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import xml.etree.ElementTree as ET

from semisup_core import storage
from semisup_core.data.tags import clean_tag, split_tags

try:  # refuses external entities and DTD tricks; the plain parser otherwise
    from defusedxml.ElementTree import fromstring as _defused_fromstring

    def _parse_xml(data: bytes) -> ET.Element:
        # Illustrator SVGs declare internal entities (<!ENTITY ns_svg ...>), so those are
        # allowed; expat >= 2.4 caps their expansion (billion laughs)
        return _defused_fromstring(data, forbid_dtd=False, forbid_entities=False)
except ImportError:  # pragma: no cover - defusedxml comes with nltk (requirements.lock)
    _parse_xml = ET.fromstring

log = logging.getLogger(__name__)

DC = "http://purl.org/dc/elements/1.1/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DEFAULT_PNG = "/usr/share/openclipart/png"
DEFAULT_SVG = "/usr/share/openclipart/svg"
TITLE_WORDS = 3  # a title of at most this many words is also a tag


@dataclasses.dataclass
class Clip:
    """One image: ``path`` (the real file's path, relative to the PNG root, when it is
    inside the tree) and every path resolving to the same file, sorted."""

    real: str
    path: str
    paths: list[str]


def list_clips(png_root: str) -> tuple[list[Clip], list[str]]:
    """One Clip per real file under ``png_root``, sorted by path, and the broken links."""
    by_real: dict[str, list[str]] = {}
    links, broken = set(), []
    for dirpath, dirnames, files in os.walk(png_root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not name.lower().endswith(".png"):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, png_root).replace(os.sep, "/")
            real = os.path.realpath(full)
            if not os.path.isfile(real):
                broken.append(rel)
                continue
            if os.path.islink(full):
                links.add(rel)
            by_real.setdefault(real, []).append(rel)
    clips = []
    for real, paths in by_real.items():
        paths.sort()
        files = [p for p in paths if p not in links]  # the one that is not a symlink
        clips.append(Clip(real, files[0] if files else paths[0], paths))
    return sorted(clips, key=lambda c: c.path), sorted(broken)


def directory_tags(paths: list[str]) -> list[str]:
    """``["animals/mammals/bears/x.png", "nature/x.png"]`` -> animals, mammals, bears, nature."""
    return [d for p in paths for d in p.split("/")[:-1]]


def svg_metadata(data: bytes) -> tuple[list[str], str | None]:
    """``dc:subject`` keywords (each ``rdf:li``, or the split text when there is no list)
    and the first non-empty ``dc:title`` of an SVG. Raises ET.ParseError or ValueError
    (defusedxml) on a file that is not XML."""
    root = _parse_xml(data)
    subjects: list[str] = []
    for subject in root.iter(f"{{{DC}}}subject"):
        items = list(subject.iter(f"{{{RDF}}}li"))
        if items:
            subjects += [t for t in (clean_tag("".join(li.itertext())) for li in items) if t]
        else:
            subjects += split_tags("".join(subject.itertext()))
    title = next((t for t in (" ".join("".join(e.itertext()).split())
                              for e in root.iter(f"{{{DC}}}title")) if t), None)
    return subjects, title


@dataclasses.dataclass
class SvgStats:
    """Why images got directory tags only: no SVG twin, or one that is not XML."""

    missing: list[str] = dataclasses.field(default_factory=list)
    unreadable: list[str] = dataclasses.field(default_factory=list)

    def warn(self, svg_root: str | None) -> None:
        for what, rels in (("no SVG twin", self.missing),
                           ("an SVG that is not XML", self.unreadable)):
            if rels:
                log.warning("%s: %d image(s) have %s, so directory tags only, e.g. %s",
                            svg_root, len(rels), what, rels[0])


def svg_root(svg: str | None) -> str | None:
    """The SVG tree to read keywords from, or None (with a warning when it is absent)."""
    if svg is None:
        log.info("openclipart: svg=null, so the tags are directory names only")
        return None
    path = storage.local_path(svg) if storage.is_local(svg) else None
    if path is None or not os.path.isdir(path):
        log.warning("openclipart: no SVG tree at %s (apt-get install openclipart-svg); "
                    "the tags are directory names only", svg)
        return None
    return path


def clip_tags(clip: Clip, svg_root: str | None, stats: SvgStats) -> tuple[list[str], str | None]:
    """The tags and title of one clip: directory names of all its paths, then the
    keywords and title of the first SVG twin found (path first, then the aliases)."""
    tags = directory_tags(clip.paths)
    if svg_root is None:
        return tags, None
    for rel in [clip.path] + [p for p in clip.paths if p != clip.path]:
        svg = os.path.join(svg_root, rel[:-4] + ".svg")
        if not os.path.isfile(svg):
            continue
        try:
            with open(svg, "rb") as f:
                subjects, title = svg_metadata(f.read())
        except (ET.ParseError, ValueError, OSError):
            stats.unreadable.append(rel[:-4] + ".svg")
            return tags, None
        title_tag = clean_tag(title) if title and len(title.split()) <= TITLE_WORDS else ""
        return tags + subjects + ([title_tag] if title_tag else []), title
    stats.missing.append(clip.path)
    return tags, None
