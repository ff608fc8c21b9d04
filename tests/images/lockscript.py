"""scripts/lock_images.py as a module (scripts/ is not a package): the tests use its resolution."""

from __future__ import annotations

import importlib.util

from tests.images.dockerfile import REPO_ROOT

_spec = importlib.util.spec_from_file_location("lock_images", REPO_ROOT / "scripts" / "lock_images.py")
lock_images = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock_images)
