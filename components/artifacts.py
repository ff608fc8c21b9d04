"""Where a component reads and writes a KFP artifact's content.

On a cluster KFP gives each artifact a ``minio://bucket/key`` URI and copies it to and from a
local path around the container. Bulk content (scores, selected shards) is better streamed from
the store directly: when the store is configured (``S3_ENDPOINT``/``MINIO_ENDPOINT`` and
credentials, as in the pods' Secret), runners use the artifact's URI through semisup_core's
storage layer; otherwise (kfp.local, or a cluster without credentials in the pod) its local path.
"""

from __future__ import annotations

import os

from semisup_core import storage


def store_configured() -> bool:
    return bool(os.environ.get("S3_ENDPOINT") or os.environ.get("MINIO_ENDPOINT"))


def location(artifact) -> str:
    """The URI a runner should read or write for ``artifact`` (a kfp.dsl Artifact)."""
    uri = artifact.uri or ""
    if uri.startswith(("minio://", "s3://")) and store_configured():
        return uri
    return artifact.path


def read_json(artifact) -> dict:
    """A JSON document a runner wrote as an artifact's whole content (e.g. full metrics)."""
    return storage.read_json(location(artifact))


def write_json(artifact, doc: dict) -> None:
    storage.write_json(location(artifact), doc)


REF = "dataset-ref.json"


def write_ref(artifact, uri: str, exclude: str | None = None) -> None:
    """Make ``artifact`` a reference to data that lives at ``uri`` (bulk shards stay where they
    are; KFP still records lineage and shows the URI in the artifact's metadata). ``exclude``:
    a dedup output whose removed keys are not part of the data (the deduplicated pool)."""
    ref = {"uri": uri, **({"exclude": exclude} if exclude else {})}
    storage.write_json(storage.join(location(artifact), REF), ref)
    artifact.metadata.update(ref)


def dataset_exclude(artifact) -> str | None:
    """The dedup output a dataset reference excludes keys of, or None."""
    ref = storage.join(location(artifact), REF)
    return storage.read_json(ref).get("exclude") if storage.exists(ref) else None


def dataset_uri(artifact) -> str:
    """The data an artifact stands for: the URI of a reference, else the artifact itself."""
    where = location(artifact)
    ref = storage.join(where, REF)
    if storage.exists(ref):
        return storage.read_json(ref)["uri"]
    return where


def integral(value):
    """KFP passes dict parameters as protobuf Structs, where every number is a double: give
    model_kwargs (free-form, so not coerced by the config model) their integers back."""
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def pool_for_training(pool, where: str) -> str:
    """The pool's URI for a step that trains on every pool image (LLP, SimCLR's pre-training and
    distillation): a deduplicated pool (a reference with ``exclude``) is copied once under
    ``where`` without its removed images (score skips them instead)."""
    import hashlib
    uri, exclude = dataset_uri(pool), dataset_exclude(pool)
    if not exclude:
        return uri
    # here, not at the top: dedup's module loads embed, whose efficientnet path imports timm
    from semisup_core.data.manifest import without_keys
    from semisup_core.dedup.stage import removed_keys
    key = hashlib.sha256(f"{uri}|{exclude}".encode()).hexdigest()[:12]
    return without_keys(uri, removed_keys(exclude), storage.join(where, f"pool-deduped-{key}"))
