"""Exact pins of pip requirement/constraints files, following nested ``-c`` / ``-r``."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def pins(path: Path, follow: bool = True) -> dict[str, str]:
    """canonical name -> exact version of every ``name==version`` line of ``path`` (a
    ``--hash`` option after it is ignored) and, with
    ``follow``, of the files it includes (paths relative to the including file, as pip reads
    them).

    Raises ValueError naming the line when an entry is not an exact ``==`` pin.
    """
    out: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#")[0].split(" --hash")[0].strip()
        if not line:
            continue
        if line.startswith(("-c ", "-r ", "--constraint ", "--requirement ")):
            if follow:
                out.update(pins(path.parent / line.split(maxsplit=1)[1]))
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==" or "*" in spec[0].version:
            raise ValueError(f"{path.name}:{n}: {line!r} is not an exact pin (name==version)")
        out[canonicalize_name(req.name)] = spec[0].version
    return out
