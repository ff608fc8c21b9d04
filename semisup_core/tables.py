"""Parquet tables on any storage URI.

Kept apart from ``score`` so that stages which only read and write tables (``select``)
do not import torch: the select image carries no torch (images/README.md).
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from semisup_core import storage


def write_table(uri: str, table: pa.Table) -> None:
    """Write a Parquet table to any storage URI (one atomic put)."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.put_bytes(uri, buf.getvalue())


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet table (``columns`` only, when given) from any storage URI."""
    return pq.read_table(io.BytesIO(storage.get_bytes(uri)), columns=columns)
