"""Typed configs: YAML + overrides, one-line errors naming the field."""

from __future__ import annotations

import pytest
import yaml

from semisup_core import config
from semisup_core.errors import ConfigError
from semisup_core.train.config import TrainConfig


def _write(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


BASE = {"out": "/tmp/x", "data": {"train": "/tmp/d"}}


def test_overrides_nested_and_typed(tmp_path):
    cfg = config.load(TrainConfig, _write(tmp_path, BASE),
                      ["optim.lr=1e-3", "epochs=3", "augment.hflip=false", "model_kwargs.width=24"])
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.epochs == 3
    assert cfg.augment.hflip is False and cfg.model_kwargs == {"width": 24}


def test_off_is_a_word_not_a_boolean(tmp_path):
    """YAML 1.1 reads off/on/yes/no as booleans: ``amp: off`` in a file or ``--set amp=off``
    failed as "Input should be 'auto', 'off', ..." (got False). Only true/false are booleans."""
    path = tmp_path / "c.yaml"
    path.write_text("out: /tmp/x\ndata: {train: /tmp/d}\namp: off\naugment: {hflip: false}\n")
    cfg = config.load(TrainConfig, str(path), [])
    assert cfg.amp == "off" and cfg.augment.hflip is False
    cfg = config.load(TrainConfig, _write(tmp_path, BASE),
                      ["amp=off", "augment.hflip=False", "objective=llp", "llp.density=off"])
    assert cfg.amp == "off" and cfg.augment.hflip is False and cfg.llp.density == "off"
    # a boolean field still reads the YAML 1.1 words (pydantic parses "no" as False)
    assert config.load(TrainConfig, _write(tmp_path, BASE), ["augment.hflip=no"]).augment.hflip is False


@pytest.mark.parametrize("override, fragment", [
    ("optim.lrr=0.1", "optim.lrr: unknown key"),
    ("epochs=-1", "epochs: Input should be greater than 0"),
    ("amp=fast", "amp: Input should be"),
    ("batch_size=many", "batch_size: Input should be a valid integer"),
])
def test_bad_values_name_the_field(tmp_path, override, fragment):
    with pytest.raises(ConfigError) as err:
        config.load(TrainConfig, _write(tmp_path, BASE), [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_missing_required_field(tmp_path):
    with pytest.raises(ConfigError, match=r"data: Field required"):
        config.load(TrainConfig, _write(tmp_path, {"out": "/tmp/x"}))


def test_section_of_a_file(tmp_path):
    path = _write(tmp_path, {"train": BASE, "other": {"x": 1}})
    assert config.load(TrainConfig, path, section="train").out == "/tmp/x"


@pytest.mark.parametrize("text, fragment", [
    ("out: [unclosed", "invalid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
])
def test_bad_yaml(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        config.load(TrainConfig, str(path))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config: no such file"):
        config.load(TrainConfig, str(tmp_path / "nope.yaml"))


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="must look like"):
        config.apply_overrides({}, ["epochs"])
    with pytest.raises(ConfigError, match="is not a section"):
        config.apply_overrides({"epochs": 3}, ["epochs.x=1"])


def test_saved_config_round_trips(tmp_path):
    cfg = config.load(TrainConfig, _write(tmp_path, BASE), ["seed=7"])
    uri = config.save(cfg, str(tmp_path / "out"))
    assert config.load(TrainConfig, uri) == cfg


def test_describe_lists_every_leaf_field_with_defaults():
    lines = "\n".join(config.describe(TrainConfig))
    assert "optim.lr" in lines and "per 256 images" in lines
    assert "out" in lines and "REQUIRED" in lines and "checkpoint.every_steps" in lines
    # an objective's optional section is listed with its own fields
    assert "llp.aggregation_weight" in lines and "contrastive.temperature" in lines


_SECTIONED = {"configs/fmnist_supervised.yaml": {"train": "train", "evaluate": "evaluate"},
              "configs/copy_descriptor.yaml": {"train": "train", "embed_pool": "embed",
                                               "embed_test": "embed", "dedup": "dedup"}}


@pytest.mark.parametrize("path", sorted(_SECTIONED))
def test_every_section_of_the_stage_config_files_loads(path):
    """The configs read with `semisup stage <name> --section <s>`: every section validates
    against its stage's config (a typo in a shipped file would fail only when a user runs it)."""
    import os
    from semisup_core.dedup.stage import DedupConfig
    from semisup_core.embed import EmbedConfig
    from semisup_core.evaluate import EvaluateConfig
    classes = {"train": TrainConfig, "evaluate": EvaluateConfig, "embed": EmbedConfig,
               "dedup": DedupConfig}
    full = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
    sections = _SECTIONED[path]
    assert set(config.read_yaml(full)) == set(sections)
    for section, stage in sections.items():
        config.load(classes[stage], full, section=section)


def test_an_override_changes_one_field_of_a_default_section():
    """``--set llp.epochs=1`` keeps the rest of the default LLP recipe (its objective, model,
    llp section), as ``--set teacher.epochs=1`` keeps the demo's teacher recipe."""
    from semisup_core.llp.run import LLPRunConfig
    from semisup_core.teacher_student.demo import DemoConfig
    cfg = config.load(LLPRunConfig, None, ["llp.epochs=1", "llp.llp.k=3"])
    default = LLPRunConfig().llp
    assert (cfg.llp.epochs, cfg.llp.llp.k) == (1, 3)
    assert (cfg.llp.objective, cfg.llp.model_kwargs, cfg.llp.llp.warm_epochs) == (
        "llp", default.model_kwargs, default.llp.warm_epochs)
    demo = config.load(DemoConfig, None, ["teacher.epochs=1"])
    assert demo.teacher.model_dump() == DemoConfig().teacher.model_copy(update={"epochs": 1}).model_dump()
