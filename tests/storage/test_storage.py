"""The storage API, run unchanged against every backend.

``root`` is a writable base URI: a plain local path, a ``file://`` URI, or a fresh bucket
on the real MinIO server (tests/conftest.py) addressed as ``s3://`` and as ``minio://``.
"""

from __future__ import annotations

import random
import socket
import time

import pytest

from semisup_core import storage
from semisup_core.storage import StorageError, join
from semisup_core.storage.s3 import S3Settings

BACKENDS = ["path", "file", "s3", "minio"]
BIG = 12 << 20  # > minio's 5 MiB part size, so uploads go multipart


@pytest.fixture(params=BACKENDS)
def root(request, tmp_path) -> str:
    """A base URI with nothing under it, for each backend in turn."""
    if request.param == "path":
        return str(tmp_path / "store")
    if request.param == "file":
        return f"file://{tmp_path}/store"
    bucket_uri = request.getfixturevalue("s3_env")  # s3://bucket
    return bucket_uri.replace("s3://", f"{request.param}://", 1)


def names(uris, root: str) -> list[str]:
    """``uris`` relative to ``root`` (local listings are plain paths even for file://)."""
    bases = (root.rstrip("/") + "/", root.removeprefix("file://").rstrip("/") + "/")
    out = []
    for uri in uris:
        base = next((b for b in bases if uri.startswith(b)), None)
        assert base is not None, f"{uri} is not under {root}"
        out.append(uri[len(base):])
    return out


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# -- put / get ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 11, BIG], ids=["empty", "small", "12MiB"])
def test_put_get_roundtrip(root, size):
    uri = join(root, "dir", "blob.bin")
    data = payload(size)
    storage.put_bytes(uri, data)
    assert storage.get_bytes(uri) == data
    storage.put_bytes(uri, b"replaced")
    assert storage.get_bytes(uri) == b"replaced"


def test_open_read_streams_in_chunks(root):
    uri = join(root, "stream.bin")
    data = payload(3 << 20)
    storage.put_bytes(uri, data)
    chunks = []
    with storage.open_read(uri) as f:
        while chunk := f.read(100_000):
            assert len(chunk) <= 100_000
            chunks.append(chunk)
    assert [len(c) for c in chunks[:-1]] == [100_000] * (len(chunks) - 1)
    assert b"".join(chunks) == data
    with storage.open_read(uri) as f:  # read() with no size reads to the end
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]


# -- open_write -----------------------------------------------------------------------------


def test_open_write_visible_only_after_clean_exit(root):
    uri = join(root, "out", "w.bin")
    with storage.open_write(uri) as f:
        f.write(b"part one, ")
        f.write(b"part two")
        assert not storage.exists(uri)
    assert storage.get_bytes(uri) == b"part one, part two"


def test_open_write_large(root):
    uri = join(root, "out", "big.bin")
    data = payload(BIG, seed=1)
    with storage.open_write(uri) as f:
        for i in range(0, len(data), 1 << 20):
            f.write(data[i:i + (1 << 20)])
    assert storage.get_bytes(uri) == data


def test_open_write_exception_publishes_nothing(root):
    uri = join(root, "out", "w.bin")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_write(uri) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert not storage.exists(uri)
    assert list(storage.list_uris(root)) == []  # no temp file or partial object left


def test_open_write_exception_keeps_existing_object(root):
    uri = join(root, "w.bin")
    storage.put_bytes(uri, b"old")
    with pytest.raises(RuntimeError):
        with storage.open_write(uri) as f:
            f.write(b"new but broken")
            raise RuntimeError("boom")
    assert storage.get_bytes(uri) == b"old"
    assert names(storage.list_uris(root), root) == ["w.bin"]


# -- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [5, BIG], ids=["small", "12MiB"])
def test_put_file_get_file(root, tmp_path, size):
    src = tmp_path / "src.bin"
    src.write_bytes(payload(size, seed=2))
    uri = join(root, "files", "f.bin")
    storage.put_file(str(src), uri)
    dst = tmp_path / "down" / "nested" / "f.bin"
    storage.get_file(uri, str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["f.bin"]  # no temp file left


def test_put_file_missing_source(root, tmp_path):
    with pytest.raises(StorageError, match="no such file: .*nope.bin"):
        storage.put_file(str(tmp_path / "nope.bin"), join(root, "x"))


# -- list / exists / delete -----------------------------------------------------------------


def test_list(root):
    for key in ["a/2", "a/1", "a/sub/3", "ab/4", "top"]:
        storage.put_bytes(join(root, key), key.encode())
    assert names(storage.list_uris(root), root) == ["a/1", "a/2", "a/sub/3", "ab/4", "top"]
    assert names(storage.list_uris(join(root, "a")), root) == ["a/1", "a/2", "a/sub/3"]
    assert names(storage.list_uris(join(root, "a") + "/"), root) == ["a/1", "a/2", "a/sub/3"]
    assert names(storage.list_uris(join(root, "a"), recursive=False), root) == ["a/1", "a/2"]
    assert names(storage.list_uris(root, recursive=False), root) == ["top"]
    assert list(storage.list_uris(join(root, "missing"))) == []
    assert names(storage.list_uris(join(root, "top")), root) == ["top"]  # an object itself


def test_list_keeps_scheme(root):
    storage.put_bytes(join(root, "k"), b"")
    [uri] = storage.list_uris(root)
    if root.startswith(("s3://", "minio://")):
        assert uri == join(root, "k")


def test_exists_and_delete(root):
    uri = join(root, "d", "x.txt")
    assert not storage.exists(uri)
    storage.put_bytes(uri, b"x")
    assert storage.exists(uri)
    assert not storage.exists(join(root, "d"))  # a "directory" is not an object
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # deleting a missing object is fine


def test_json_roundtrip(root):
    uri = join(root, "meta", "m.json")
    obj = {"b": [1, 2.5, None], "a": {"name": "x", "ok": True}}
    storage.write_json(uri, obj)
    assert storage.read_json(uri) == obj
    assert storage.get_bytes(uri).endswith(b"\n")


def test_read_json_invalid(root):
    uri = join(root, "bad.json")
    storage.put_bytes(uri, b"{not json")
    with pytest.raises(StorageError, match=r"bad\.json: not valid JSON"):
        storage.read_json(uri)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["get_bytes", "open_read", "get_file", "read_json"])
def test_missing_object(root, tmp_path, op):
    uri = join(root, "nope", "missing.bin")
    calls = {
        "get_bytes": lambda: storage.get_bytes(uri),
        "open_read": lambda: storage.open_read(uri),
        "get_file": lambda: storage.get_file(uri, str(tmp_path / "dl.bin")),
        "read_json": lambda: storage.read_json(uri),
    }
    with pytest.raises(StorageError, match=r"^no such (file|object): .*nope/missing\.bin$"):
        calls[op]()
    assert not (tmp_path / "dl.bin").exists()


def test_bad_scheme():
    with pytest.raises(StorageError, match=r"unsupported URI scheme 'gs' in 'gs://x'"):
        storage.get_bytes("gs://x")


S3_SCHEMES = ["s3", "minio"]


@pytest.mark.parametrize("scheme", S3_SCHEMES)
def test_bucket_does_not_exist(s3_env, minio_server, scheme):
    uri = f"{scheme}://no-such-bucket-{time.monotonic_ns()}/k"
    bucket = uri.split("/")[2]
    expected = f"^bucket '{bucket}' does not exist \\(endpoint {minio_server.endpoint}\\)$"
    for call in (lambda: storage.get_bytes(uri), lambda: storage.put_bytes(uri, b"x"),
                 lambda: list(storage.list_uris(f"{scheme}://{bucket}/"))):
        with pytest.raises(StorageError, match=expected):
            call()


@pytest.mark.parametrize("scheme", S3_SCHEMES)
def test_s3_uri_without_key(s3_env, scheme):
    bucket_uri = s3_env.replace("s3://", f"{scheme}://")
    with pytest.raises(StorageError, match="names no object"):
        storage.get_bytes(bucket_uri)


@pytest.mark.parametrize("var, value", [("AWS_SECRET_ACCESS_KEY", "wrong-secret"),
                                        ("AWS_ACCESS_KEY_ID", "no-such-user")])
def test_wrong_credentials(s3_env, monkeypatch, var, value):
    uri = join(s3_env, "k")
    storage.put_bytes(uri, b"x")
    monkeypatch.setenv(var, value)
    storage.reset_backends()
    pattern = (r"^access denied to s3://\S+/k \(\w+\): "
               r"check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY$")
    with pytest.raises(StorageError, match=pattern):
        storage.get_bytes(uri)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def test_unreachable_endpoint(s3_env, monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("S3_ENDPOINT", endpoint)
    storage.reset_backends()
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"^cannot reach S3 endpoint {endpoint}: "):
        storage.get_bytes(join(s3_env, "k"))
    assert time.monotonic() - start < 5


def test_missing_endpoint(s3_env, monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT")
    storage.reset_backends()
    with pytest.raises(StorageError, match="^no S3 endpoint configured: set S3_ENDPOINT "
                                           r"\(or MINIO_ENDPOINT\)"):
        storage.exists(join(s3_env, "k"))


def test_missing_credentials(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage.reset_backends()
    with pytest.raises(StorageError, match="^no S3 credentials configured: set "
                                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        storage.exists(join(s3_env, "k"))


def test_minio_env_names(s3_env, minio_server, monkeypatch):
    """The MINIO_* names work as well (as KFP's MinIO Secret provides them)."""
    for var in ("S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    host = minio_server.endpoint.removeprefix("http://")
    monkeypatch.setenv("MINIO_ENDPOINT", host)  # no scheme: plain http
    monkeypatch.setenv("MINIO_ACCESS_KEY", minio_server.access_key)
    monkeypatch.setenv("MINIO_SECRET_KEY", minio_server.secret_key)
    storage.reset_backends()
    uri = join(s3_env, "k")
    storage.put_bytes(uri, b"via MINIO_*")
    assert storage.get_bytes(uri.replace("s3://", "minio://")) == b"via MINIO_*"


# -- settings parsing (no server) -----------------------------------------------------------


@pytest.mark.parametrize("raw, endpoint, secure", [
    ("http://127.0.0.1:9000", "127.0.0.1:9000", False),
    ("https://s3.example.com", "s3.example.com", True),
    ("minio-service.kubeflow:9000", "minio-service.kubeflow:9000", False),
    ("http://minio:9000/", "minio:9000", False),
])
def test_settings_endpoint(raw, endpoint, secure):
    s = S3Settings.from_env({"S3_ENDPOINT": raw, "MINIO_ROOT_USER": "u",
                             "MINIO_ROOT_PASSWORD": "s3cr3t", "AWS_REGION": "eu-1"})
    assert (s.endpoint, s.secure, s.access_key, s.secret_key, s.region) == (
        endpoint, secure, "u", "s3cr3t", "eu-1")
    assert "s3cr3t" not in repr(s)  # the secret never shows in a repr or log line


@pytest.mark.parametrize("raw", ["ftp://h:21", "http://h:9000/some/path", "http://"])
def test_settings_bad_endpoint(raw):
    with pytest.raises(StorageError, match="^bad S3 endpoint"):
        S3Settings.from_env({"S3_ENDPOINT": raw, "AWS_ACCESS_KEY_ID": "a",
                             "AWS_SECRET_ACCESS_KEY": "b"})


def test_a_forked_child_opens_its_own_connections(s3_env):
    """A forked child (a PIL DataLoader worker, the DALI decoder) reading the store while its
    parent writes: with the parent's keep-alive connections inherited, both wrote requests on
    one socket and MinIO answered HTTP 400 or stalled (found by embed on MinIO). Each process
    now has its own; every write and every read is whole."""
    import multiprocessing
    parent = storage.backend_for(s3_env)
    for i in range(4):
        storage.put_bytes(join(s3_env, f"src/{i}"), payload(50_000, i))

    def child(conn):
        try:
            ok = storage.backend_for(s3_env) is not parent and all(
                storage.get_bytes(join(s3_env, f"src/{i % 4}")) == payload(50_000, i % 4)
                for i in range(150))
            conn.send(ok)
        except Exception as err:  # sent, not raised: the parent's assertion names it
            conn.send(f"{type(err).__name__}: {err}")

    recv, send = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.get_context("fork").Process(target=child, args=(send,))
    proc.start()
    for i in range(150):  # the parent writes meanwhile, through its own pool
        storage.put_bytes(join(s3_env, f"dst/{i}"), payload(50_000, 100 + i))
    assert recv.recv() is True
    proc.join(30)
    assert all(storage.get_bytes(join(s3_env, f"dst/{i}")) == payload(50_000, 100 + i)
               for i in range(150))
