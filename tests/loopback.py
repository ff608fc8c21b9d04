"""``scripts/k8s_env.py`` as a module for the tests (scripts/ is not a package): the loopback
control plane of tests/cluster and the pins it shares with tests/k8s."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "k8s_env.py"
_spec = importlib.util.spec_from_file_location("k8s_env", _PATH)
k8s_env = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(k8s_env)
