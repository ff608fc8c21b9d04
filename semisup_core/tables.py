"""Parquet tables on any storage URI.

Kept apart from ``score`` so that stages which only read and write tables (``select``)
do not import torch: the select image carries no torch (images/README.md).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from semisup_core import storage


def write_table(uri: str, table: pa.Table, **options) -> None:
    """Write a Parquet table to any storage URI, atomically, streamed to the store (no copy
    of the encoded file in memory); ``options`` go to ``pyarrow.parquet.write_table``."""
    with storage.open_write(uri) as f:
        pq.write_table(table, f, **options)


def parquet_source(uri: str) -> pa.NativeFile:
    """A Parquet file as a source Arrow reads without calling back into Python: a file Arrow
    opens itself (local) or a buffer Arrow allocated (an object, fetched whole).

    Arrow's Parquet reader reads and decodes on its own thread pool. Given a Python file object
    (``open``, ``io.BytesIO``) or a buffer that a Python ``bytes`` owns, those threads take the
    GIL to read or to release it, sometimes after the caller has its table; one that does so
    while the interpreter exits is ended by CPython 3.11 with ``pthread_exit``, whose forced
    unwind through Arrow's ``noexcept`` frames aborts the whole process: "terminate called
    without an active exception", SIGABRT, exit 134, after the stage's work is done
    (apache/arrow#34314; pyarrow 26.0.1 here: 116 of 200 runs of a script that reads a small
    Parquet file through ``open()`` and exits aborted, 0 of 150 with this source;
    tests/test_tables.py)."""
    if storage.is_local(uri):
        path = storage.local_path(uri)
        try:
            return pa.OSFile(path)
        except OSError:
            with storage.open_read(uri):  # the store's one-line error for a missing file
                pass
            raise
    data = storage.get_bytes(uri)
    buf = pa.allocate_buffer(len(data))
    pa.FixedSizeBufferWriter(buf).write(data)
    return pa.BufferReader(buf)


def read_table(uri: str, columns: list[str] | None = None,
               dictionary: list[str] | None = None) -> pa.Table:
    """Read a Parquet table (``columns`` only, when given) from any storage URI; the
    ``dictionary`` columns stay dictionary-encoded as stored (a key repeated per score row is
    then decoded once). A local file is read in place (only the columns' pages); an object
    is fetched whole. Through ``parquet_source``: Arrow's threads never call into Python."""
    with parquet_source(uri) as src:
        return pq.read_table(src, columns=columns, read_dictionary=dictionary)
