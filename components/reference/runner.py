"""What the reference component runs: a dataset-ref.json naming the URI (or '' = none)."""

from __future__ import annotations

from components.artifacts import write_ref


def run(uri: str, artifact) -> str:
    write_ref(artifact, uri.strip())
    return uri.strip()
