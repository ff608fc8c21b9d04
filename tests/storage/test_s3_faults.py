"""Transient failures between the S3 backend and the real MinIO server.

A small HTTP proxy sits in front of the session's MinIO and, on request, answers some
requests with ``503 SlowDown`` or drops the connection instead of forwarding them. The
backend must retry those and still store and return the right bytes -- in particular it
must rewind what it uploads (bytes, an ``open_write`` spool, a multipart upload).
"""

from __future__ import annotations

import http.client
import http.server
import random
import threading
import time
from urllib.parse import urlsplit

import pytest

from semisup_core import storage
from semisup_core.storage import StorageError, join

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding"}


class FaultProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to ``upstream`` (``host:port``) unless a fault is queued.

    ``inject(method, needle, kind, count)`` makes the next ``count`` requests whose method
    is ``method`` and whose path contains ``needle`` fail with ``kind``: ``"503"`` (an S3
    SlowDown error), ``"reset"`` (the connection is closed without an answer) or
    ``"truncate"`` (the real answer, cut off halfway through its body).
    """

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.faults: list[list] = []  # [method, needle, kind, remaining]
        self.served_faults: list[tuple[str, str, str]] = []
        self.ranges: list[str] = []  # the Range header of every forwarded request with one
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def inject(self, method: str, needle: str, kind: str, count: int = 1) -> None:
        with self.lock:
            self.faults.append([method, needle, kind, count])

    def take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault[0] == method and fault[1] in path and fault[3] > 0:
                    fault[3] -= 1
                    self.served_faults.append((method, path, fault[2]))
                    return fault[2]
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server.take_fault(self.command, self.path)
        if fault == "reset":
            self.close_connection = True
            return
        if fault == "503":
            self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
            return
        self._forward(body, truncate=fault == "truncate")

    def _forward(self, body: bytes, truncate: bool = False) -> None:
        if self.headers.get("Range"):
            self.server.ranges.append(self.headers["Range"])
        # The Host header is part of the SigV4 signature: pass it (and all others) unchanged.
        conn = http.client.HTTPConnection(self.server.upstream, timeout=30)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            conn.putheader(name, value)
        conn.endheaders(body or None)
        resp = conn.getresponse()
        data = resp.read()
        headers = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
        conn.close()
        self._reply(resp.status, headers, data, truncate)

    def _reply(self, status: int, headers: dict, data: bytes, truncate: bool = False) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data[: len(data) // 2] if truncate else data)
        if truncate:
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


@pytest.fixture
def proxy(s3_env, minio_server, monkeypatch):
    """A FaultProxy in front of MinIO, with the S3 environment pointing at it."""
    server = FaultProxy(urlsplit(minio_server.endpoint).netloc)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("S3_ENDPOINT", server.endpoint)
    storage.reset_backends()
    yield server
    server.shutdown()
    server.server_close()
    storage.reset_backends()


def test_put_bytes_retries_slow_down(proxy, s3_env):
    uri = join(s3_env, "a.bin")
    proxy.inject("PUT", "/a.bin", "503", count=2)
    storage.put_bytes(uri, b"payload")
    assert [f[2] for f in proxy.served_faults] == ["503", "503"]
    assert storage.get_bytes(uri) == b"payload"


def test_get_bytes_retries_dropped_connection(proxy, s3_env):
    uri = join(s3_env, "b.bin")
    storage.put_bytes(uri, b"payload")
    proxy.inject("GET", "/b.bin", "reset")
    assert storage.get_bytes(uri) == b"payload"
    assert [f[2] for f in proxy.served_faults] == ["reset"]


def test_get_bytes_retries_truncated_body(proxy, s3_env):
    uri = join(s3_env, "t.bin")
    data = random.Random(4).randbytes(1 << 20)
    storage.put_bytes(uri, data)
    proxy.inject("GET", "/t.bin", "truncate")
    assert storage.get_bytes(uri) == data
    assert [f[2] for f in proxy.served_faults] == ["truncate"]


def test_open_read_dropped_mid_stream_resumes_with_a_range_request(proxy, s3_env):
    """Issue 22: a read stream cut halfway resumes where it stopped (a GET with a Range and
    If-Match on the first ETag): the bytes are the object's."""
    uri = join(s3_env, "t.bin")
    data = random.Random(4).randbytes(4 << 20)
    storage.put_bytes(uri, data)
    proxy.inject("GET", "/t.bin", "truncate")
    with storage.open_read(uri) as f:
        got = b"".join(iter(lambda: f.read(1 << 16), b""))
    assert got == data
    assert [f[2] for f in proxy.served_faults] == ["truncate"]
    assert proxy.ranges == ["bytes=2097152-"]  # the second GET starts at the cut


def test_open_read_of_an_object_replaced_mid_stream_is_a_storage_error(proxy, s3_env):
    """The resumed GET must not splice two versions: If-Match refuses the new one."""
    uri = join(s3_env, "r.bin")
    storage.put_bytes(uri, random.Random(5).randbytes(4 << 20))
    proxy.inject("GET", "/r.bin", "truncate")
    with pytest.raises(StorageError, match=r"PreconditionFailed"):
        with storage.open_read(uri) as f:
            f.read(1 << 20)
            storage.put_bytes(uri, b"another version")
            while f.read(1 << 16):
                pass


def test_exists_and_list_retry(proxy, s3_env):
    uri = join(s3_env, "c.bin")
    storage.put_bytes(uri, b"x")
    proxy.inject("HEAD", "/c.bin", "reset")
    assert storage.exists(uri)
    proxy.inject("GET", "list-type", "503")
    assert list(storage.list_uris(s3_env)) == [uri]
    assert len(proxy.served_faults) == 2


def test_open_write_rewinds_spool_on_retry(proxy, s3_env):
    uri = join(s3_env, "d.bin")
    proxy.inject("PUT", "/d.bin", "reset")
    with storage.open_write(uri) as f:
        f.write(b"first ")
        f.write(b"second")
    assert storage.get_bytes(uri) == b"first second"


def test_multipart_part_failure_restarts_upload(proxy, s3_env, tmp_path):
    data = random.Random(3).randbytes(12 << 20)
    proxy.inject("PUT", "partNumber=2", "503")
    uri = join(s3_env, "e.bin")
    with storage.open_write(uri) as f:
        f.write(data)
    assert storage.get_bytes(uri) == data
    src = tmp_path / "src.bin"
    src.write_bytes(data[::-1])
    proxy.inject("PUT", "partNumber=3", "reset")
    storage.put_file(str(src), uri)
    assert storage.get_bytes(uri) == data[::-1]
    assert [f[2] for f in proxy.served_faults] == ["503", "reset"]


def test_persistent_slow_down_gives_up(proxy, s3_env):
    uri = join(s3_env, "f.bin")
    proxy.inject("PUT", "/f.bin", "503", count=100)
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"^S3 error on s3://\S+/f\.bin: SlowDown: "):
        storage.put_bytes(uri, b"x")
    assert len(proxy.served_faults) == 4  # ATTEMPTS
    assert time.monotonic() - start < 5
    assert not storage.exists(uri)
