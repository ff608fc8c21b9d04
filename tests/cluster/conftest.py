"""A real Kubernetes control plane on loopback for the whole session (scripts/k8s_env.py):
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake nodes whose pods end
as the label ``semisup.test/kwok-outcome: succeed|fail`` says) and the Kubeflow training
operator. The binaries are built once by scripts/ensure_k8s_env.sh (~14 min cold on two
cores, then instant); starting the environment takes ~6-8 s, the tests ~10 s more.

Like MinIO in tests/conftest.py, a missing toolchain is a failure, not a skip: these tests are
the proof that the jobs run against a real API server and operator.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import pytest

from tests.loopback import k8s_env

OUTCOME_LABEL = "semisup.test/kwok-outcome"  # scripts/k8s-env/kwok-stages.yaml: succeed|fail
JOB_NAME_LABEL = "training.kubeflow.org/job-name"  # set by the operator on pods/services
TORCHRUN_ENV = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PET_MASTER_ADDR",
                "PET_MASTER_PORT", "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE"}


@dataclasses.dataclass
class Cluster:
    """The running environment: ``kubeconfig`` (a file) and ``api_client`` (admin)."""

    kubeconfig: Path
    api_client: object  # kubernetes.client.ApiClient
    directory: Path

    def wait_for(self, what: str, check, timeout: float = 60.0, poll: float = 0.25):
        """Poll ``check()`` until it returns something truthy, else fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(poll)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} "
                    f"(component logs in {self.directory / 'logs'})")


@pytest.fixture(scope="session")
def cluster(request, tmp_path_factory):
    """Start the environment once per session; stop every process at the end."""
    from kubernetes import config

    # A cold build takes minutes: let its progress through to the terminal.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():
            bins = k8s_env.binaries()
    except k8s_env.EnvError as e:
        pytest.fail(f"{e} (scripts/ensure_k8s_env.sh needs Go >= 1.24 and the Go module proxy)")
    env = k8s_env.Environment(tmp_path_factory.mktemp("k8s-env"), bins)
    try:
        env.start()
    except k8s_env.EnvError as e:
        pytest.fail(f"the k8s environment did not start: {e}")
    try:
        client = config.new_client_from_config(config_file=str(env.kubeconfig))
        yield Cluster(env.kubeconfig, client, env.dir)
        client.close()
    finally:
        env.stop()


@pytest.fixture
def namespace(cluster) -> str:
    """A fresh namespace with its default ServiceAccount (pods are refused until it exists)."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    cluster.wait_for(f"ServiceAccount {name}/default", lambda: any(
        sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items))
    yield name
    core.delete_namespace(name)
