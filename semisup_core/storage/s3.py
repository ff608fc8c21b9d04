"""The S3 / MinIO backend: ``s3://bucket/key`` and ``minio://bucket/key`` URIs.

KFP writes its artifact URIs as ``minio://mlpipeline/...``; both schemes go to the same
endpoint, read from the environment (on Kubernetes, from a Secret):

  - endpoint: ``S3_ENDPOINT`` or ``MINIO_ENDPOINT`` -- ``http://host:port``,
    ``https://host:port`` or a bare ``host:port`` (plain http);
  - credentials: ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY``, else
    ``MINIO_ACCESS_KEY`` + ``MINIO_SECRET_KEY``, else ``MINIO_ROOT_USER`` + ``MINIO_ROOT_PASSWORD``;
  - region (optional): ``AWS_REGION``; without it the client asks the server once per bucket.

Transient failures (connection reset, read timeouts, HTTP 5xx, SlowDown) are retried with
bounded backoff; everything else becomes a one-line ``StorageError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import tempfile
from typing import BinaryIO, Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import (ConnectTimeoutError, NameResolutionError, NewConnectionError,
                                ProtocolError, SSLError)

from semisup_core import faults
from semisup_core.errors import StorageError
from semisup_core.storage.base import Backend
from semisup_core.storage.local import atomic_file
from semisup_core.storage.retry import retry
from semisup_core.storage.uri import split_uri

log = logging.getLogger(__name__)

T = TypeVar("T")

ENDPOINT_VARS = ("S3_ENDPOINT", "MINIO_ENDPOINT")
CREDENTIAL_VARS = (  # (access key, secret key) pairs, first complete pair wins
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"),
    ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"),
)

# A dead endpoint must fail in seconds: urllib3's own retries are off (we retry above it)
# and connecting may take at most CONNECT_TIMEOUT_S. The read timeout bounds one socket
# read, not a whole transfer; the server may need a while to assemble a large multipart.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0
ATTEMPTS = 4            # waits of 0.2, 0.4, 0.8 s between them
# once the endpoint has answered, a refused or failed connection is a restart or a network
# blip: retried for about half a minute (0.2, 0.4, ... 3.2, then 5 s waits); an endpoint never
# reached fails in seconds (wrong address)
OUTAGE_ATTEMPTS = int(os.environ.get("SEMISUP_S3_OUTAGE_ATTEMPTS", "10"))
MAX_DELAY_S = 5.0
BASE_DELAY_S = 0.2
SPOOL_MAX_BYTES = 64 << 20  # open_write keeps up to this much in memory, then spills to disk
CHUNK_BYTES = 1 << 20

_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                    "XMinioServerNotInitialized", "XMinioStorageFull"}
_TRANSIENT_STATUS = {500, 502, 503, 504}
_DENIED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Where the object store is and how to log in. ``endpoint`` is ``host:port``."""

    endpoint: str
    secure: bool
    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    region: str | None = None

    @property
    def url(self) -> str:
        """The endpoint as a URL, for messages."""
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Settings":
        """Read the settings from ``env`` (default ``os.environ``); see the module docstring."""
        env = os.environ if env is None else env
        raw = next((env[v] for v in ENDPOINT_VARS if env.get(v)), None)
        if not raw:
            raise StorageError(
                "no S3 endpoint configured: set S3_ENDPOINT (or MINIO_ENDPOINT), "
                "e.g. http://127.0.0.1:9000")
        endpoint, secure = _parse_endpoint(raw)
        pair = next(((env[a], env[s]) for a, s in CREDENTIAL_VARS if env.get(a) and env.get(s)),
                    None)
        if pair is None:
            raise StorageError(
                "no S3 credentials configured: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or MINIO_ACCESS_KEY and MINIO_SECRET_KEY)")
        return cls(endpoint, secure, pair[0], pair[1], env.get("AWS_REGION") or None)


def _parse_endpoint(raw: str) -> tuple[str, bool]:
    """``"https://h:9000"`` -> ``("h:9000", True)``; a bare ``"h:9000"`` means plain http."""
    text = raw.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise StorageError(
            f"bad S3 endpoint {raw!r}: expected http://host:port, https://host:port or host:port")
    return parts.netloc, parts.scheme == "https"


def _http_client() -> urllib3.PoolManager:
    """The connection pool the minio client uses: short connect timeout, no own retries."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        retries=False,
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


def is_transient(err: BaseException) -> bool:
    """True for failures a retry may fix: dropped connections, timeouts, 5xx, SlowDown.

    A connection that cannot be opened (refused, unknown host, connect timeout) or a TLS
    mismatch is not retried here (S3Backend._call retries it once the endpoint has answered:
    a restart): the endpoint is wrong or down, and waiting a second will not
    change that -- better to say so within CONNECT_TIMEOUT_S than after four of them.
    """
    if isinstance(err, (ConnectTimeoutError, SSLError)):  # NewConnectionError is a subclass
        return False
    if isinstance(err, Urllib3Error):  # ProtocolError (reset), Read/ConnectTimeoutError, ...
        return True
    if isinstance(err, S3Error):
        return err.code in _TRANSIENT_CODES
    if isinstance(err, ServerError):
        return err.status_code in _TRANSIENT_STATUS
    if isinstance(err, InvalidResponseError):
        return getattr(err, "_code", None) in _TRANSIENT_STATUS
    return False


def _is_connection_error(err: BaseException) -> bool:
    return isinstance(err, (NewConnectionError, ConnectTimeoutError)) or (
        isinstance(err, Urllib3Error) and isinstance(getattr(err, "reason", None),
                                                     (NewConnectionError, ConnectTimeoutError)))


class _ObjectStream(io.RawIOBase):
    """A raw, read-only stream over a GET response; closing it frees the connection. A
    connection dropped mid-stream is resumed where it stopped: a new GET with a Range from
    the current position and If-Match on the first response's ETag (so a replaced object is
    an error, never a splice of two versions)."""

    def __init__(self, response, uri: str, backend: "S3Backend"):
        super().__init__()
        self._response = response
        self._uri = uri
        self._backend = backend
        self._pos = 0
        self._etag = response.headers.get("ETag")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        for resumes in range(OUTAGE_ATTEMPTS + 1):
            try:
                data = self._response.read(len(buffer))
                break
            except Urllib3Error as err:
                if resumes == OUTAGE_ATTEMPTS or not is_transient(err):
                    raise _to_storage_error(err, self._uri, self._backend.settings) from None
                log.warning("%s: the read stream dropped at byte %d (%s); resuming there",
                            self._uri, self._pos, str(err).splitlines()[0][:120])
                self._reopen()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _reopen(self) -> None:
        with contextlib.suppress(Exception):
            self._response.close()
            self._response.release_conn()
        bucket, key = _object(self._uri)
        headers = {"If-Match": self._etag} if self._etag else None
        self._response = self._backend._call(self._uri, lambda: self._backend.client.get_object(
            bucket, key, offset=self._pos, request_headers=headers))

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()


class S3Backend(Backend):
    """Objects in an S3-compatible store (MinIO), addressed by full URIs."""

    def __init__(self, settings: S3Settings):
        self.settings = settings
        self.client = Minio(settings.endpoint, access_key=settings.access_key,
                            secret_key=settings.secret_key, secure=settings.secure,
                            region=settings.region, http_client=_http_client())
        self._reached = False  # whether the endpoint has answered once (see _call)
        log.debug("S3 backend at %s (access key %s)", settings.url, settings.access_key)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Backend":
        """A backend configured from environment variables (see the module docstring)."""
        return cls(S3Settings.from_env(env))

    def __repr__(self) -> str:
        return f"S3Backend({self.settings.url})"

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, uri: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries; turn what still fails into a one-line StorageError. Once
        this endpoint has answered, connection failures are retried too, for ~30 s
        (``OUTAGE_ATTEMPTS``): MinIO restarting must cost time, not the task."""
        reached = self._reached

        def transient(err: BaseException) -> bool:
            return is_transient(err) or (reached and _is_connection_error(err))

        try:
            result = retry(fn, attempts=OUTAGE_ATTEMPTS if reached else ATTEMPTS,
                           base_delay=BASE_DELAY_S, max_delay=MAX_DELAY_S, is_transient=transient)
            self._reached = True
            return result
        except StorageError:
            raise
        except (S3Error, ServerError, InvalidResponseError, Urllib3Error, ValueError) as err:
            raise _to_storage_error(err, uri, self.settings) from None

    # -- Backend ---------------------------------------------------------------------------

    def put_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = _object(uri)
        faults.before_publish(uri)
        self._call(uri, lambda: self.client.put_object(bucket, key, io.BytesIO(data), len(data)))

    def get_bytes(self, uri: str) -> bytes:
        return self._call(uri, lambda: self._read_all(uri))

    def _read_all(self, uri: str) -> bytes:
        bucket, key = _object(uri)
        response = self.client.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def open_read(self, uri: str) -> BinaryIO:
        """Stream the object: ``read(n)`` pulls from the open HTTP response.

        Opening is retried; a connection dropped mid-stream is resumed with a Range request
        (``_ObjectStream``).
        """
        bucket, key = _object(uri)
        response = self._call(uri, lambda: self.client.get_object(bucket, key))
        return io.BufferedReader(_ObjectStream(response, uri, self), CHUNK_BYTES)

    @contextlib.contextmanager
    def open_write(self, uri: str) -> Iterator[BinaryIO]:
        """Spool writes locally; upload once the block exits cleanly, else upload nothing."""
        bucket, key = _object(uri)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
            yield spool
            size = spool.seek(0, io.SEEK_END)
            faults.before_publish(uri)

            def upload():
                spool.seek(0)
                return self.client.put_object(bucket, key, spool, size)

            self._call(uri, upload)

    def put_file(self, local: str, uri: str) -> None:
        if not os.path.isfile(local):
            raise StorageError(f"no such file: {local}")
        bucket, key = _object(uri)
        faults.before_publish(uri)
        self._call(uri, lambda: self.client.fput_object(bucket, key, local))

    def get_file(self, uri: str, local: str) -> None:
        """Download to a temp file beside ``local``, then rename it into place."""
        self._call(uri, lambda: self._download(uri, os.path.abspath(local)))

    def _download(self, uri: str, path: str) -> None:
        bucket, key = _object(uri)
        response = self.client.get_object(bucket, key)
        try:
            with atomic_file(path) as dst:
                for chunk in response.stream(CHUNK_BYTES):
                    dst.write(chunk)
        finally:
            response.close()
            response.release_conn()

    def list(self, prefix: str, recursive: bool = True) -> Iterator[str]:
        """Objects under ``prefix`` taken as a directory (``a/b`` lists ``a/b/...``, not
        ``a/bc``), sorted, as full URIs in the scheme of ``prefix``. If nothing is under it
        and ``prefix`` names an object, that object alone (as the local backend does)."""
        scheme, bucket, key = split_uri(prefix)
        directory = key.rstrip("/") + "/" if key.strip("/") else ""
        keys = self._call(prefix, lambda: self._list_keys(bucket, directory, recursive))
        if not keys and directory and not key.endswith("/") and self.exists(prefix):
            keys = [key]
        return iter([f"{scheme}://{bucket}/{k}" for k in sorted(keys)])

    def _list_keys(self, bucket: str, directory: str, recursive: bool) -> list[str]:
        objects = self.client.list_objects(bucket, prefix=directory, recursive=recursive)
        return [o.object_name for o in objects if not o.is_dir]

    def exists(self, uri: str) -> bool:
        bucket, key = _object(uri)

        def stat() -> bool:
            try:
                self.client.stat_object(bucket, key)
                return True
            except S3Error as err:
                if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return False
                raise

        return self._call(uri, stat)

    def delete(self, uri: str) -> None:
        bucket, key = _object(uri)
        self._call(uri, lambda: self.client.remove_object(bucket, key))


def _object(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an object URI; a key is required."""
    scheme, bucket, key = split_uri(uri)
    if scheme not in ("s3", "minio"):
        raise StorageError(f"{uri!r} is not an s3:// or minio:// URI")
    if not key or key.endswith("/"):
        raise StorageError(f"URI {uri!r} names no object (expected {scheme}://bucket/key)")
    return bucket, key


def _to_storage_error(err: Exception, uri: str, settings: S3Settings) -> StorageError:
    """One line that says what went wrong with ``uri`` and what to check."""
    bucket = split_uri(uri)[1]
    if isinstance(err, S3Error):
        if err.code == "NoSuchBucket":
            return StorageError(f"bucket {bucket!r} does not exist (endpoint {settings.url})")
        if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            return StorageError(f"no such object: {uri}")
        if err.code == "InvalidBucketName":
            return StorageError(f"invalid bucket name {bucket!r} in {uri} "
                                "(3-63 characters: lowercase letters, digits, '.', '-')")
        if err.code in _DENIED_CODES:
            return StorageError(f"access denied to {uri} ({err.code}): check "
                                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        return StorageError(f"S3 error on {uri}: {err.code}: {err.message}")
    if isinstance(err, NewConnectionError):
        return StorageError(f"cannot reach S3 endpoint {settings.url}: {_connect_reason(err)}")
    if isinstance(err, ConnectTimeoutError):
        return StorageError(f"cannot reach S3 endpoint {settings.url}: "
                            f"no answer within {CONNECT_TIMEOUT_S:.0f}s")
    if isinstance(err, SSLError):
        return StorageError(f"TLS error talking to {settings.url} ({_first_line(err)}); "
                            "does the endpoint speak http rather than https?")
    if isinstance(err, Urllib3Error):
        return StorageError(f"S3 endpoint {settings.url} failed on {uri}: {_first_line(err)}")
    if isinstance(err, ServerError):
        return StorageError(f"S3 endpoint {settings.url} failed on {uri}: "
                            f"HTTP {err.status_code}")
    if isinstance(err, InvalidResponseError):
        return StorageError(f"{settings.url} did not answer like an S3 server on {uri} "
                            f"(HTTP {getattr(err, '_code', '?')}); check S3_ENDPOINT")
    return StorageError(f"invalid S3 request for {uri}: {err}")


def _connect_reason(err: NewConnectionError) -> str:
    """Why a connection could not be opened, e.g. 'connection refused'."""
    cause = err.__cause__
    if isinstance(err, NameResolutionError):
        return f"cannot resolve host {getattr(err.conn, 'host', '?')!r}"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return _first_line(err)


def _first_line(err: Exception) -> str:
    """A short, one-line description of a urllib3 error, without the pool's repr."""
    if isinstance(err, ProtocolError) and err.args:  # args: (what, cause)
        text = str(err.args[0])
        if len(err.args) > 1 and str(err.args[1]) not in text:
            text += f" ({err.args[1]})"
    else:
        text = str(err).strip()
        if text.startswith("HTTP") and "): " in text:  # "HTTPConnectionPool(...): Read timed out."
            text = text.split("): ", 1)[1]
    return text.splitlines()[0] if text else type(err).__name__
