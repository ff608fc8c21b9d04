"""Parquet tables on any store (semisup_core/tables.py), and a process that reads one and
exits at once: it must exit 0 (Arrow's reader threads calling back into Python while the
interpreter exits aborted such processes with SIGABRT: tables.parquet_source)."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from semisup_core import tables
from semisup_core.errors import StorageError
from tests.images.dockerfile import REPO_ROOT


def _table(n: int = 5000) -> pa.Table:
    return pa.table({"key": [f"k{i % 97:04d}" for i in range(n)], "class_id": list(range(n)),
                     "score": [i / n for i in range(n)]})


@pytest.mark.parametrize("store", ["local", "s3"])
def test_read_table_gives_back_what_was_written(store, tmp_path, request):
    root = str(tmp_path) if store == "local" else request.getfixturevalue("s3_env")
    uri = f"{root}/t.parquet"
    t = _table()
    tables.write_table(uri, t, row_group_size=1000)
    assert tables.read_table(uri).equals(t)
    assert tables.read_table(uri, columns=["class_id"]).equals(t.select(["class_id"]))
    got = tables.read_table(uri, columns=["key"], dictionary=["key"])
    assert pa.types.is_dictionary(got.schema.field("key").type)
    assert got["key"].cast(pa.string()).equals(t["key"])


def test_a_missing_table_is_the_stores_one_line_error(tmp_path):
    with pytest.raises(StorageError) as err:
        tables.read_table(str(tmp_path / "nope.parquet"))
    assert "\n" not in str(err.value)


def test_a_process_that_reads_a_table_and_exits_at_once_exits_0(tmp_path, s3_env):
    """30 processes, each reading a local table, an object and the oracle join, then exiting:
    with a Python file object as the source about half of such processes aborted here
    ("terminate called without an active exception", exit -6; apache/arrow#34314)."""
    local, remote = str(tmp_path / "t.parquet"), f"{s3_env}/t.parquet"
    oracle = str(tmp_path / "oracle.parquet")
    for uri in (local, remote):
        tables.write_table(uri, _table(), row_group_size=500)
    tables.write_table(oracle, pa.table({"key": [f"k{i:04d}" for i in range(97)],
                                         "true_class": list(range(97))}), row_group_size=20)
    read = ("import sys; from semisup_core import tables\n"
            "tables.read_table(sys.argv[1], columns=['key', 'class_id'])\n")
    join = ("import sys, pyarrow as pa; from semisup_core.data.split import oracle_truth\n"
            "assert list(oracle_truth(pa.array(['k0003', 'zz']), sys.argv[1])) == [3, -2]\n")
    failures = []
    for i in range(30):  # the read is the process's last act, as in a stage that ends with it
        code, uri = [(read, local), (read, remote), (join, oracle)][i % 3]
        proc = subprocess.run([sys.executable, "-c", code, uri], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode:
            failures.append(f"run {i} ({uri}): exit {proc.returncode}: {proc.stderr.strip()[-200:]}")
    assert not failures, "\n".join(failures)
