#!/usr/bin/env python3
"""A real Kubernetes control plane on 127.0.0.1, for the test suite (tests/cluster) and for people.

    scripts/ensure_k8s_env.sh                      # once: builds the pinned binaries
    python scripts/k8s_env.py up                   # prints `export KUBECONFIG=...`; Ctrl-C stops
    python scripts/k8s_env.py up --dir D --detach  # returns once ready; then, to stop it:
    python scripts/k8s_env.py down --dir D

Each `up` starts from an empty etcd.

What runs, each on a free port of 127.0.0.1, every file under one directory (certificates,
etcd data, logs/*.log, kubeconfig):
  - etcd and kube-apiserver (client-certificate authn, Node+RBAC authz, service-account tokens
    signed with a generated key, so the ServiceAccount admission works);
  - kube-controller-manager (default ServiceAccounts, garbage collection, Jobs, ...) and
    kube-scheduler;
  - kwok, the kubelets of the fake nodes: kwok-cpu-0 and kwok-gpu-0 (8 nvidia.com/gpu, taint
    nvidia.com/gpu:NoSchedule); how their pods end is in scripts/k8s-env/kwok-stages.yaml
    (label semisup.test/kwok-outcome: succeed|fail);
  - the Kubeflow training operator (PyTorchJob only) with its CRD and validating webhook, both
    taken from the operator's Go module (`go mod download`; nothing is copied into the repo).
Starting takes ~6-8 s on two cores once the binaries are built (the first time
ensure_k8s_env.sh builds them: 10-14 min). Idle, it costs ~3% of one core and ~700 MB of memory.
Standard library only, plus ``cryptography`` (in requirements.lock) for the certificates.

Two things live outside the directory, both forced by the training operator v1.9.2: its webhook
server listens on all interfaces (no flag for the host; the port is a free one, TLS only), and
its cert rotator insists on /tmp/k8s-webhook-server/serving-certs/tls.crt existing, so that file
is created when missing (the server itself reads $TMPDIR, which points into the directory).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("k8s_env")

HERE = Path(__file__).resolve().parent
ENSURE = HERE / "ensure_k8s_env.sh"
STAGES = HERE / "k8s-env" / "kwok-stages.yaml"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
              "training-operator")
OPERATOR_MODULE = "github.com/kubeflow/training-operator"
OPERATOR_NAMESPACE = "kubeflow"  # the operator's default (MY_POD_NAMESPACE)
# Names the operator v1.9.2 hard-codes (cmd/training-operator.v1/main.go, pkg/cert/cert.go).
WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"
WEBHOOK_SECRET = "training-operator-webhook-cert"
WEBHOOK_DNS = f"training-operator.{OPERATOR_NAMESPACE}.svc"
ROTATOR_CERT = Path("/tmp/k8s-webhook-server/serving-certs/tls.crt")
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.96.0.0/16"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0


def node(name: str, cpu: str, memory: str, gpus: int = 0) -> dict:
    """A fake node kwok manages (status.allocatable is what the scheduler sees)."""
    resources = {"cpu": cpu, "memory": memory, "pods": "110"}
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "type": "kwok"}
    spec: dict = {}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
        labels["nvidia.com/gpu.present"] = "true"
        spec["taints"] = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]}},
            "spec": spec, "status": {"allocatable": resources, "capacity": resources}}


DEFAULT_NODES = (node("kwok-cpu-0", "32", "256Gi"), node("kwok-gpu-0", "64", "512Gi", gpus=8))


class EnvError(RuntimeError):
    """The environment could not be built, started or stopped."""


class ApiError(EnvError):
    """The apiserver answered with an HTTP error (``status``)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------
# binaries, ports, processes
# ----------------------------------------------------------------------------------------

def binaries(build: bool = True) -> dict[str, Path]:
    """The pinned binaries, by component name (ensure_k8s_env.sh builds what is missing)."""
    cmd = ["bash", str(ENSURE)] + ([] if build else ["--path"])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise EnvError(f"{ENSURE.name} failed with status {proc.returncode} (its log is above)")
    paths = dict(zip(COMPONENTS, map(Path, proc.stdout.split())))
    missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
    if len(paths) != len(COMPONENTS) or missing:
        raise EnvError(f"binaries missing: {missing or proc.stdout!r}; run {ENSURE}")
    return paths


def operator_version() -> str:
    """The training operator release ensure_k8s_env.sh pins (its binary is NAME-<version>)."""
    out = subprocess.run(["bash", str(ENSURE), "--path"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout.split()
    return Path(out[COMPONENTS.index("training-operator")]).name.rsplit("-", 1)[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started us dies (no orphans after a crash)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _alive(pid: int, binary: str) -> bool:
    """pid still runs ``binary`` (not a recycled pid; a zombie's cmdline is empty)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == binary.encode()
    except OSError:
        return False


def stop_processes(procs: list[dict], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM each process group (last started first), then SIGKILL what is left."""
    live = [p for p in reversed(procs) if _alive(p["pid"], p["binary"])]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        for p in live:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p["pid"], os.WNOHANG)  # reap our own children
        live = [p for p in live if _alive(p["pid"], p["binary"])]
        time.sleep(0.1)
    for p in live:
        log.warning("%s did not stop in %.0f s; killing it", p["name"], timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p["pid"], signal.SIGKILL)


# ----------------------------------------------------------------------------------------
# certificates (cryptography)
# ----------------------------------------------------------------------------------------

def _rsa():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization as ser
    # PKCS#1 ("RSA PRIVATE KEY"): the operator's cert rotator parses only that
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL,
                             ser.NoEncryption())


def _cert(key, cn: str, issuer=None, issuer_key=None, *, ca: bool = False, org: str | None = None,
          dns: tuple = (), ips: tuple = (), server: bool = False, client: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    name = x509.Name(attrs)
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         # a year: the operator's rotator replaces anything expiring within 90 days
         .not_valid_after(now + datetime.timedelta(days=365))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=not ca,
                                      key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                                      data_encipherment=False, key_agreement=False,
                                      encipher_only=False, decipher_only=False), critical=True))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization as ser
    return cert.public_bytes(ser.Encoding.PEM)


def write_pki(pki: Path) -> None:
    """Cluster CA, apiserver serving cert, admin client cert (system:masters), service-account
    key pair, and the webhook CA + serving cert of the training operator."""
    from cryptography.hazmat.primitives import serialization as ser
    pki.mkdir(parents=True, exist_ok=True)

    def save(name: str, data: bytes) -> None:
        (pki / name).write_bytes(data)
        if name.endswith(".key"):
            (pki / name).chmod(0o600)

    ca_key = _rsa()
    ca = _cert(ca_key, "semisup-k8s-env-ca", ca=True)
    save("ca.crt", _cert_pem(ca))
    save("ca.key", _key_pem(ca_key))
    service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    for name, cn, org, server, client in (
            ("apiserver", "kube-apiserver", None, True, False),
            ("admin", "semisup-admin", "system:masters", False, True)):
        key = _rsa()
        dns = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster.local") if server else ()
        save(f"{name}.crt", _cert_pem(_cert(key, cn, ca, ca_key, org=org, dns=dns,
                                            ips=("127.0.0.1", service_ip) if server else (),
                                            server=server, client=client)))
        save(f"{name}.key", _key_pem(key))
    sa_key = _rsa()
    save("sa.key", _key_pem(sa_key))
    save("sa.pub", sa_key.public_key().public_bytes(ser.Encoding.PEM,
                                                    ser.PublicFormat.SubjectPublicKeyInfo))
    # The rotator keeps a CA whose SANs hold its CAName and a serving cert valid for the
    # Service's DNS name; 127.0.0.1 is what the apiserver dials (clientConfig.url).
    wh_ca_key = _rsa()
    wh_ca = _cert(wh_ca_key, "training-operator-ca", ca=True, org="training-operator",
                  dns=("training-operator-ca",))
    save("webhook-ca.crt", _cert_pem(wh_ca))
    save("webhook-ca.key", _key_pem(wh_ca_key))
    wh_key = _rsa()
    save("webhook.crt", _cert_pem(_cert(wh_key, WEBHOOK_DNS, wh_ca, wh_ca_key, dns=(WEBHOOK_DNS,),
                                        ips=("127.0.0.1",), server=True)))
    save("webhook.key", _key_pem(wh_key))


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    """An admin kubeconfig with the certificates inline (it still works when copied)."""
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: semisup-k8s-env
  cluster:
    server: {server}
    certificate-authority-data: {b64("ca.crt")}
users:
- name: semisup-admin
  user:
    client-certificate-data: {b64("admin.crt")}
    client-key-data: {b64("admin.key")}
contexts:
- name: semisup-k8s-env
  context: {{cluster: semisup-k8s-env, user: semisup-admin}}
current-context: semisup-k8s-env
""")
    path.chmod(0o600)


# ----------------------------------------------------------------------------------------
# a minimal REST client (urllib)
# ----------------------------------------------------------------------------------------

def _opener(ctx: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """urllib without the environment's proxies: everything here is on 127.0.0.1."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                       urllib.request.HTTPSHandler(context=ctx))


class Api:
    """JSON over HTTPS to the apiserver as the admin user."""

    def __init__(self, server: str, pki: Path):
        self.server = server
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.opener = _opener(ctx)

    def __call__(self, method: str, path: str, body=None, content_type="application/json"):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type,
                                              "Accept": "application/json"})
        try:
            with self.opener.open(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, f"{method} {path}: HTTP {e.code}: "
                                   f"{e.read().decode(errors='replace')[:500]}") from None
        return json.loads(raw) if raw[:1] == b"{" else raw.decode()

    def create(self, path: str, obj) -> dict:
        """POST ``obj`` (a dict, or YAML bytes: the apiserver decodes YAML itself)."""
        return self("POST", path, obj, "application/yaml" if isinstance(obj, bytes)
                    else "application/json")

    def get(self, path: str):
        """The object at ``path``, None if there is none."""
        try:
            return self("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise


def _get_url(url: str, ctx: ssl.SSLContext | None = None) -> int:
    """HTTP status of a GET, 0 when nothing answers."""
    try:
        with _opener(ctx).open(url, timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ssl.SSLError):
        return 0


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def go_module_dir(module: str, version: str) -> Path:
    """The module's directory in the Go module cache (downloaded once, then offline)."""
    proc = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                          capture_output=True, text=True, cwd="/",
                          env=dict(os.environ, GOFLAGS="-mod=mod"))
    info = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "Dir" not in info:
        raise EnvError(f"go mod download {module}@{version} failed: "
                       f"{info.get('Error') or proc.stderr.strip()}")
    return Path(info["Dir"])


# ----------------------------------------------------------------------------------------
# the environment
# ----------------------------------------------------------------------------------------

class Environment:
    """The control plane in ``directory``: ``start()``, then ``kubeconfig``; ``stop()``.

    ``detach=True`` leaves the processes running when this Python process exits (``down``
    stops them from ``state.json``); otherwise they get SIGTERM if it dies.
    """

    def __init__(self, directory: Path, bins: dict[str, Path] | None = None,
                 nodes=DEFAULT_NODES, detach: bool = False):
        self.dir = Path(directory).resolve()
        self.bins = bins or binaries()
        self.nodes = nodes
        self.detach = detach
        self.pki = self.dir / "pki"
        self.kubeconfig = self.dir / "kubeconfig"
        self.procs: list[dict] = []
        self.ports: dict[str, int] = {}
        self.server = ""
        self.api: Api | None = None

    # -- processes ---------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> dict:
        binary = str(self.bins[name])
        logf = self.dir / "logs" / f"{name}.log"
        with open(logf, "ab") as out:
            proc = subprocess.Popen([binary, *args], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.dir, env=env,
                                    start_new_session=True,
                                    preexec_fn=None if self.detach else _die_with_parent)
        entry = {"name": name, "pid": proc.pid, "binary": binary, "log": str(logf)}
        self.procs.append(entry)
        self._save_state()
        log.info("started %s (pid %d, log %s)", name, proc.pid, logf)
        return entry

    def _save_state(self) -> None:
        (self.dir / "state.json").write_text(json.dumps(
            {"procs": self.procs, "ports": self.ports, "server": self.server,
             "kubeconfig": str(self.kubeconfig)}, indent=1))

    def check_alive(self) -> None:
        """Raise EnvError with the log tail of the first component that exited."""
        for p in self.procs:
            if not _alive(p["pid"], p["binary"]):
                tail = "\n".join(Path(p["log"]).read_text(errors="replace").splitlines()[-25:])
                raise EnvError(f"{p['name']} exited; last lines of {p['log']}:\n{tail}")

    def _wait(self, what: str, ready, timeout: float = START_TIMEOUT_S):
        """Poll ``ready()`` until it returns something truthy; fail fast if a process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(EnvError, OSError):
                result = ready()
                if result:
                    return result
            time.sleep(0.2)
        raise EnvError(f"timed out after {timeout:.0f} s waiting for {what} "
                       f"(logs in {self.dir}/logs)")

    # -- start -------------------------------------------------------------------------
    def start(self) -> "Environment":
        """Start every component and wait until it is ready; from an empty etcd each time."""
        t0 = time.monotonic()
        shutil.rmtree(self.dir / "etcd", ignore_errors=True)
        for sub in ("logs", "tmp", "etcd", "certs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        write_pki(self.pki)
        try:
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self._install_operator()
            self._start_kwok()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("environment ready in %.1f s: KUBECONFIG=%s", time.monotonic() - t0,
                 self.kubeconfig)
        return self

    def _start_etcd(self) -> None:
        client, peer = self._port("etcd"), self._port("etcd-peer")
        self._spawn("etcd", [
            "--name=default", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",  # throwaway data: skip fsyncs, the disk is shared
            "--log-level=warn"])
        self._wait("etcd", lambda: _get_url(f"http://127.0.0.1:{client}/health") == 200)

    def _start_apiserver(self) -> None:
        port, pki = self._port("kube-apiserver"), self.pki
        self.server = f"https://127.0.0.1:{port}"
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.dir / 'certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # no kubelet or kube-proxy behind 127.0.0.1: keep the `kubernetes` Service endpointless
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false", "--profiling=false"])
        write_kubeconfig(self.kubeconfig, self.server, pki)
        self.api = Api(self.server, pki)
        self._wait("kube-apiserver /readyz", lambda: self.api("GET", "/readyz") == "ok")

    def _start_controllers(self) -> None:
        kc, pki = str(self.kubeconfig), self.pki
        # no --authentication/authorization-kubeconfig: their own HTTPS port then serves only
        # the always-allowed /healthz, /readyz, /livez, which is all we ask of it
        common = [f"--kubeconfig={kc}", "--bind-address=127.0.0.1",
                  f"--cert-dir={self.dir / 'certs'}", "--leader-elect=false", "--profiling=false"]
        self._spawn("kube-controller-manager", common + [
            f"--secure-port={self._port('kube-controller-manager')}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=false"])
        self._spawn("kube-scheduler", common + [f"--secure-port={self._port('kube-scheduler')}"])

    def _install_operator(self) -> None:
        """The PyTorchJob CRD, the webhook's Secret and configuration, then the operator."""
        base = go_module_dir(OPERATOR_MODULE, operator_version()) / "manifests" / "base"
        crd = self.api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                              (base / "crds" / "kubeflow.org_pytorchjobs.yaml").read_bytes())
        self.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": OPERATOR_NAMESPACE}})
        # The Secret the operator's cert rotator reads: with a valid CA and serving cert in it,
        # the rotator keeps them (and "injects" the same CA into the webhook configuration).
        pem = {n: base64.b64encode((self.pki / f).read_bytes()).decode() for n, f in (
            ("ca.crt", "webhook-ca.crt"), ("ca.key", "webhook-ca.key"),
            ("tls.crt", "webhook.crt"), ("tls.key", "webhook.key"))}
        self.api.create(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": WEBHOOK_SECRET}, "data": pem})
        port = self._port("webhook")
        self.api.create("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
                        self._webhook_config(base, port, pem["ca.crt"]))
        crd_path = ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                    + crd["metadata"]["name"])
        self._wait("the PyTorchJob CRD to be established",
                   lambda: _established(self.api.get(crd_path)))
        self._start_operator(port)

    def _start_operator(self, webhook_port: int) -> None:
        # The webhook server reads $TMPDIR/k8s-webhook-server/serving-certs (controller-runtime's
        # default); the rotator only checks that its hard-coded /tmp path exists.
        certs = self.dir / "tmp" / "k8s-webhook-server" / "serving-certs"
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.pki / "webhook.crt", certs / "tls.crt")
        shutil.copy(self.pki / "webhook.key", certs / "tls.key")
        if not ROTATOR_CERT.exists():
            ROTATOR_CERT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.pki / "webhook.crt", ROTATOR_CERT)
        env = dict(os.environ, TMPDIR=str(self.dir / "tmp"), MY_POD_NAMESPACE=OPERATOR_NAMESPACE,
                   KUBECONFIG=str(self.kubeconfig))
        init = HERE.parent / "k8s" / "operator" / "pytorch-init-container.yaml"  # Pod Security
        self._spawn("training-operator", [
            f"--kubeconfig={self.kubeconfig}", "--enable-scheme=pytorchjob",
            f"--pytorch-init-container-template-file={init}",
            f"--webhook-server-port={webhook_port}", "--metrics-bind-address=0",
            f"--health-probe-bind-address=127.0.0.1:{self._port('training-operator-probe')}",
            "--zap-log-level=info"], env)

    def _webhook_config(self, base: Path, port: int, ca_bundle: str) -> dict:
        """The operator's own ValidatingWebhookConfiguration, narrowed to PyTorchJob and pointed
        at 127.0.0.1. The apiserver parses the YAML (a dry-run create), so no YAML library."""
        parsed = self.api("POST", "/apis/admissionregistration.k8s.io/v1/"
                          "validatingwebhookconfigurations?dryRun=All",
                          (base / "webhook" / "manifests.yaml").read_bytes(), "application/yaml")
        hooks = [h for h in parsed["webhooks"]
                 if any("pytorchjobs" in r.get("resources", []) for r in h["rules"])]
        if not hooks:
            raise EnvError(f"no PyTorchJob webhook in {base / 'webhook' / 'manifests.yaml'}")
        for h in hooks:
            path = h["clientConfig"]["service"]["path"]
            h["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
        return {"apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": WEBHOOK_CONFIG}, "webhooks": hooks}

    def _start_kwok(self) -> None:
        name, value = FAKE_NODE_ANNOTATION
        self._spawn("kwok", [
            f"--kubeconfig={self.kubeconfig}", f"--config={STAGES}",
            f"--manage-nodes-with-annotation-selector={name}={value}",
            "--node-lease-duration-seconds=40", "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{self._port('kwok')}"])
        for n in self.nodes:
            self.api.create("/api/v1/nodes", n)

    def _wait_ready(self) -> None:
        probe = self.ports["training-operator-probe"]
        self._wait("the training operator /readyz (webhook serving)",
                   lambda: _get_url(f"http://127.0.0.1:{probe}/readyz") == 200)
        kwok = f"http://127.0.0.1:{self.ports['kwok']}/healthz"
        self._wait("kwok /healthz", lambda: _get_url(kwok) == 200)
        for n in self.nodes:
            path = f"/api/v1/nodes/{n['metadata']['name']}"
            self._wait(f"node {n['metadata']['name']} Ready",
                       lambda: _node_ready(self.api.get(path)))
        for c in ("kube-controller-manager", "kube-scheduler"):
            url = f"https://127.0.0.1:{self.ports[c]}/healthz"
            self._wait(f"{c} /healthz", lambda: _get_url(url, _insecure()) == 200)
        self._wait("the default ServiceAccount of namespace default",
                   lambda: self.api.get("/api/v1/namespaces/default/serviceaccounts/default"))

    def _port(self, name: str) -> int:
        self.ports[name] = free_port()
        return self.ports[name]

    # -- stop --------------------------------------------------------------------------
    def stop(self) -> None:
        stop_processes(self.procs)
        self.procs = []
        self._save_state()


def _established(crd: dict | None) -> bool:
    conds = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conds)


def _node_ready(n: dict | None) -> bool:
    conds = ((n or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def down(directory: Path) -> None:
    """Stop an environment started with ``up --detach --dir directory``."""
    state = Path(directory) / "state.json"
    if not state.exists():
        raise EnvError(f"no environment in {directory} (no state.json)")
    stop_processes(json.loads(state.read_text())["procs"])
    log.info("stopped the environment in %s", directory)


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the environment; prints `export KUBECONFIG=...`")
    up.add_argument("--dir", type=Path, help="where everything goes (default: a new temp dir, "
                    "removed on exit unless --detach)")
    up.add_argument("--detach", action="store_true",
                    help="return once ready; stop it with `down --dir`")
    dn = sub.add_parser("down", help="stop an environment started with --detach")
    dn.add_argument("--dir", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        if args.cmd == "down":
            down(args.dir)
            return 0
        return _up(args.dir, args.detach)
    except EnvError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 130  # interrupted while starting: start() has stopped what it had started


def _up(directory: Path | None, detach: bool) -> int:
    temp = directory is None
    directory = Path(tempfile.mkdtemp(prefix="semisup-k8s-")) if temp else directory
    directory.mkdir(parents=True, exist_ok=True)
    state = directory / "state.json"
    if state.exists() and any(_alive(q["pid"], q["binary"])
                              for q in json.loads(state.read_text())["procs"]):
        raise EnvError(f"an environment is already running in {directory}; `down --dir` it first")
    env = Environment(directory, detach=detach)
    env.start()
    print(f"export KUBECONFIG={env.kubeconfig}", flush=True)
    if detach:
        log.info("detached; stop it with: python %s down --dir %s", sys.argv[0], directory)
        return 0
    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(1))
    log.info("running; Ctrl-C stops it")
    try:
        while not stopping:
            env.check_alive()
            time.sleep(1)
    except EnvError as e:
        log.error("%s", e)
        return 1
    finally:
        env.stop()
        if temp:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
