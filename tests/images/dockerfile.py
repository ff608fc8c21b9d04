"""A small Dockerfile reader for the image tests: instructions, build stages, ARG defaults.

Enough of the Dockerfile syntax for what the tests check (FROM, USER, ENTRYPOINT, CMD, ARG):
comments and line continuations, global ARGs substituted into FROM, exec-form (JSON) arrays.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"
BASE = "base"


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "FROM"
    args: str  # the rest of the (joined) line
    line: int  # 1-based line of the instruction's first line


@dataclasses.dataclass(frozen=True)
class Stage:
    image: str  # the FROM image with global ARG defaults substituted
    name: str | None  # "AS name"
    instructions: tuple[Instruction, ...]

    def last(self, keyword: str) -> Instruction | None:
        """The stage's last instruction ``keyword``, or None."""
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None

    def exec_form(self, keyword: str) -> list[str] | None:
        """The JSON array of the stage's last ``keyword`` (ENTRYPOINT, CMD); None if absent.

        Raises ValueError for the shell form, which runs under /bin/sh -c and drops signals.
        """
        ins = self.last(keyword)
        if ins is None:
            return None
        try:
            value = json.loads(ins.args)
        except json.JSONDecodeError:
            value = None
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise ValueError(f"line {ins.line}: {keyword} is not an exec-form JSON array")
        return value


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf, start = [], [], 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if not buf:
            start = n
        cont = line.endswith("\\")
        buf.append(line[:-1].strip() if cont else line)
        if not cont:
            keyword, _, args = " ".join(buf).partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
            buf = []
    return out


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def stages(path: Path) -> list[Stage]:
    """The build stages of the Dockerfile at ``path``, in order."""
    global_args: dict[str, str] = {}
    result: list[tuple[str, str | None, list[Instruction]]] = []
    for ins in instructions(path.read_text()):
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append((_substitute(words[0], global_args), name, []))
        elif not result and ins.keyword == "ARG":
            key, _, default = ins.args.partition("=")
            global_args[key.strip()] = default.strip().strip('"')
        elif result:
            result[-1][2].append(ins)
    return [Stage(image, name, tuple(ins)) for image, name, ins in result]


def image_names() -> list[str]:
    """Every image with a Dockerfile under images/, the base first."""
    names = sorted(p.parent.name for p in IMAGES_DIR.glob("*/Dockerfile"))
    return [BASE] + [n for n in names if n != BASE] if BASE in names else names


def stage_images() -> list[str]:
    """The stage images (all but the base)."""
    return [n for n in image_names() if n != BASE]


def dockerfile(name: str) -> Path:
    return IMAGES_DIR / name / "Dockerfile"


def requirements(name: str) -> list[str]:
    """The requirement lines of images/<name>/requirements.txt (comments dropped)."""
    lines = (IMAGES_DIR / name / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def lock_file(name: str) -> Path:
    """images/<name>/requirements.lock: the image's hash-locked packages (make image-locks)."""
    return IMAGES_DIR / name / "requirements.lock"


def constraints_file(name: str) -> Path:
    """The constraints images/<name>/requirements.lock was resolved under (its
    ``# constraints:`` line): requirements.lock, or the GPU lock for an image with faiss-gpu."""
    for line in lock_file(name).read_text().splitlines():
        if line.startswith("# constraints: "):
            return REPO_ROOT / line.removeprefix("# constraints: ").strip()
    raise ValueError(f"{lock_file(name)}: no '# constraints:' line (run make image-locks)")
