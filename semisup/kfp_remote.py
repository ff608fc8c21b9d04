"""Pipelines on a KFP cluster: submit a run, sync pipeline versions, emit Kubernetes objects.

* ``submit``: ``kfp.Client.create_run_from_pipeline_package`` with the same validated config
  as a local run (``out`` and the raw data must then be s3:// or minio:// URIs).
* ``sync``: upload each pipeline of pipelines/ and a new version only when its compiled YAML
  changed; the version name carries the content hash and the git commit.
* ``write_k8s_manifests``: every pipeline as KFP's Kubernetes-native ``Pipeline`` +
  ``PipelineVersion`` objects under k8s/pipelines/, for Argo CD or Flux (version name from the
  content hash alone, so the committed file is reproducible; a test checks it is current).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess

from semisup_core import config as cfglib
from semisup_core import storage
from semisup_core.errors import ConfigError

log = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_DIR = os.path.join(REPO, "k8s", "pipelines")
KFP_NAMESPACE = "kubeflow"


def content_hash(path: str) -> str:
    """First 10 hex digits of the compiled YAML's SHA-256."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:10]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "nogit"


def _compiled(name: str) -> tuple[object, str]:
    from pipelines import yaml_path
    from semisup.local_run import pipeline_module
    mod = pipeline_module(name)
    return mod, yaml_path(mod.__file__)


def client_for(host: str, namespace: str | None = None):
    """A kfp.Client for ``host`` (auth: KF_PIPELINES_SA_TOKEN_PATH or an existing kube context)."""
    import kfp
    return kfp.Client(host=host, namespace=namespace)


def submit(client, name: str, config: str | None, overrides: list[str],
           experiment: str = "semisup", run_name: str | None = None,
           profile: str = "cpu") -> str:
    """Start a run of pipeline ``name`` on the cluster, its tasks' resources from ``profile``
    (pipelines/resources.py: cpu or gpu); returns its run id."""
    from pipelines.resources import PROFILES
    if profile not in PROFILES:
        raise ConfigError(f"profile: {profile!r} is not one of {', '.join(sorted(PROFILES))}")
    mod, path = _compiled(name)
    cfg = cfglib.load(mod.CONFIG, config, overrides)
    if storage.is_local(cfg.out):
        raise ConfigError(f"out={cfg.out} is a local path; a cluster run needs s3:// or minio:// "
                          "(the pods share nothing else)")
    args = mod.arguments(cfg, cfg.out, local=False, profile=profile)
    res = client.create_run_from_pipeline_package(
        path, arguments=args, run_name=run_name or f"{mod.NAME}-seed{cfg.seed}",
        experiment_name=experiment)
    log.info("submitted %s: run %s", name, res.run_id)
    return res.run_id


def _version_names(client, pipeline_id: str) -> list[str]:
    names, token = [], ""
    while True:
        page = client.list_pipeline_versions(pipeline_id=pipeline_id, page_token=token,
                                             page_size=100)
        names += [v.display_name for v in (page.pipeline_versions or [])]
        token = page.next_page_token or ""
        if not token:
            return names


def sync(client, names: list[str] | None = None, commit: str | None = None) -> dict[str, str]:
    """Upload pipelines and changed versions; returns name -> 'created' | 'new version' |
    'unchanged'."""
    from pipelines import PIPELINES
    commit = commit or git_commit()
    result = {}
    for name in names or sorted(PIPELINES):
        mod, path = _compiled(name)
        digest = content_hash(path)
        version = f"{mod.NAME}-{digest}-{commit}"
        pid = client.get_pipeline_id(mod.NAME)
        if pid is None:
            pid = client.upload_pipeline(path, pipeline_name=mod.NAME,
                                         description=mod.__doc__.strip().splitlines()[0]).pipeline_id
            result[name] = "created"
        elif any(f"-{digest}" in v for v in _version_names(client, pid)):
            result[name] = "unchanged"
            log.info("%s: version %s already uploaded", name, digest)
            continue
        else:
            result[name] = "new version"
        client.upload_pipeline_version(path, pipeline_version_name=version, pipeline_id=pid,
                                       description=f"compiled YAML sha256 {digest}, git {commit}")
        log.info("%s: uploaded version %s", name, version)
    return result


def k8s_manifest_path(name: str) -> str:
    return os.path.join(K8S_DIR, f"{name}.yaml")


def write_k8s_manifest(name: str, path: str | None = None) -> str:
    """Compile pipeline ``name`` as Pipeline + PipelineVersion objects; returns the file."""
    from kfp import compiler
    from kfp.compiler.compiler_utils import KubernetesManifestOptions

    from pipelines import _stable_header
    mod, compiled = _compiled(name)
    path = path or k8s_manifest_path(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    version = f"{mod.NAME}-{content_hash(compiled)}"
    compiler.Compiler().compile(
        getattr(mod, mod.PIPELINE), path, kubernetes_manifest_format=True,
        kubernetes_manifest_options=KubernetesManifestOptions(
            pipeline_name=mod.NAME, pipeline_version_name=version, namespace=KFP_NAMESPACE,
            include_pipeline_manifest=True))
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(_stable_header(text) if text.startswith("#") else text)
    return path
