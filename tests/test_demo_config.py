"""configs/demo.yaml states exactly the defaults `semisup demo` runs with."""

from __future__ import annotations

import os

from semisup_core import config
from semisup_core.teacher_student.demo import DemoConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_yaml_matches_the_defaults():
    assert config.load(DemoConfig, os.path.join(REPO, "configs", "demo.yaml")) == DemoConfig()
