"""Parquet tables on any storage URI.

Kept apart from ``score`` so that stages which only read and write tables (``select``)
do not import torch: the select image carries no torch (images/README.md).
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from semisup_core import storage


def write_table(uri: str, table: pa.Table, **options) -> None:
    """Write a Parquet table to any storage URI, atomically, streamed to the store (no copy
    of the encoded file in memory); ``options`` go to ``pyarrow.parquet.write_table``."""
    with storage.open_write(uri) as f:
        pq.write_table(table, f, **options)


def read_table(uri: str, columns: list[str] | None = None,
               dictionary: list[str] | None = None) -> pa.Table:
    """Read a Parquet table (``columns`` only, when given) from any storage URI; the
    ``dictionary`` columns stay dictionary-encoded as stored (a key repeated per score row is
    then decoded once). A local file is read in place (only the columns' pages); an object
    is fetched whole."""
    if storage.is_local(uri):
        with storage.open_read(uri) as f:  # the store's one-line errors for a missing file
            return pq.read_table(f, columns=columns, read_dictionary=dictionary)
    return pq.read_table(io.BytesIO(storage.get_bytes(uri)), columns=columns,
                         read_dictionary=dictionary)
