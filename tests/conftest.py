"""Shared pytest fixtures.

Sections:
  - MinIO: a real MinIO server on loopback (``minio_server``, session-scoped) and a fresh
    bucket with the S3 environment pointing at it (``s3_env``, per test).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# the tiny teacher and pool of the score/select/embed/dedup tests, defined once for the session
pytest_plugins = ["tests.pools"]

# Every training path of the suite (in-process, torchrun, the launcher, kfp.local tasks, which
# inherit the environment) runs oneDNN's AVX2 kernels, whatever this CPU has: AVX2 is what
# every x86-64 server of the last decade runs (all AMD EPYC), and the kernels an AVX-512
# machine would otherwise take hid a crash there (README "CPU kernels"). oneDNN reads this once,
# at its first primitive, so it is set before any test runs one. tests/train/test_kernels.py
# checks the gradients under every other ISA level. Override: ONEDNN_MAX_CPU_ISA=DEFAULT.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

# ----------------------------------------------------------------------------------------
# MinIO
# ----------------------------------------------------------------------------------------

ENSURE_MINIO = REPO_ROOT / "scripts" / "ensure_minio.sh"
MINIO_START_TIMEOUT_S = 30.0
# Every variable the S3 backend reads; s3_env clears them so the host's settings never leak in.
S3_ENV_VARS = (
    "S3_ENDPOINT", "MINIO_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
    "AWS_REGION",
)


@dataclasses.dataclass(frozen=True)
class MinioServer:
    """A running MinIO server: ``endpoint`` is ``http://127.0.0.1:<port>``."""

    endpoint: str
    access_key: str
    secret_key: str
    log_path: Path

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A plain ``minio.Minio`` client for test setup (making buckets)."""
        from minio import Minio
        return Minio(self.endpoint.split("://", 1)[1], access_key=access_key or self.access_key,
                     secret_key=secret_key or self.secret_key, secure=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minio_binary() -> Path:
    """``$SEMISUP_MINIO_BIN``, else the path scripts/ensure_minio.sh builds to."""
    if os.environ.get("SEMISUP_MINIO_BIN"):
        return Path(os.environ["SEMISUP_MINIO_BIN"])
    out = subprocess.run(["bash", str(ENSURE_MINIO), "--path"], check=True,
                         capture_output=True, text=True)
    return Path(out.stdout.strip())


def _log_tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _wait_live(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    """Poll MinIO's liveness probe until it answers 200; fail with the log tail if not."""
    deadline = time.monotonic() + MINIO_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"MinIO exited with status {proc.returncode} while starting; "
                        f"log {log_path}:\n{_log_tail(log_path)}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.1)
    pytest.fail(f"MinIO not live at {url} after {MINIO_START_TIMEOUT_S:.0f}s; "
                f"log {log_path}:\n{_log_tail(log_path)}")


@pytest.fixture(scope="session")
def minio_server(tmp_path_factory):
    """Start the pinned MinIO binary on loopback for the whole session; stop it at the end.

    A missing binary is a failure, not a skip: the storage tests are the proof that the
    S3 backend works, so they must not silently disappear.
    """
    binary = minio_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"MinIO server binary not found at {binary}: run scripts/ensure_minio.sh "
                    "(or set SEMISUP_MINIO_BIN to a minio binary)")
    root = tmp_path_factory.mktemp("minio")
    port, console_port = free_port(), free_port()
    access_key, secret_key = "semisup-test", "semisup-test-secret"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIO_")}
    env.update(MINIO_ROOT_USER=access_key, MINIO_ROOT_PASSWORD=secret_key,
               MINIO_UPDATE="off", MINIO_BROWSER="off")
    log_path = root / "minio.log"
    cmd = [str(binary), "server", str(root / "data"), "--address", f"127.0.0.1:{port}",
           "--console-address", f"127.0.0.1:{console_port}", "--certs-dir", str(root / "certs"),
           "--quiet"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_live(proc, f"{endpoint}/minio/health/live", log_path)
        yield MinioServer(endpoint, access_key, secret_key, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(minio_server: MinioServer, monkeypatch) -> str:
    """Point the S3 backend at ``minio_server`` and make a fresh bucket; yields ``s3://bucket``."""
    from semisup_core.storage import reset_backends

    for var in S3_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("S3_ENDPOINT", minio_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio_server.secret_key)
    reset_backends()
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    minio_server.client().make_bucket(bucket)
    yield f"s3://{bucket}"
    reset_backends()  # later tests must not reuse a client built from this test's env
