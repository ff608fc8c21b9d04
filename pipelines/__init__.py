"""KFP pipelines; each module compiles itself to the YAML beside it (``python -m pipelines.x``)."""

from __future__ import annotations

import os

#: pipeline module name -> pipeline function name
PIPELINES = {"teacher_student": "teacher_student"}


def yaml_path(module_file: str) -> str:
    return os.path.splitext(module_file)[0] + ".yaml"


def compile_pipeline(func, path: str) -> str:
    """Compile ``func`` to ``path`` (IR YAML); returns the path."""
    from kfp import compiler
    compiler.Compiler().compile(func, path)
    return path


def compile_main(func, module_file: str) -> None:
    print(compile_pipeline(func, yaml_path(module_file)))
