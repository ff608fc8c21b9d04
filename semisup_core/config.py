"""Typed stage configs: YAML files + dotted ``--set a.b=c`` overrides.

Every stage has one pydantic model (``extra="forbid"``), so a typo or a bad value
fails on load with one line that names the field. The resolved config is written
next to the stage's outputs (``config.yaml``) so a run can be reproduced.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from semisup_core import storage
from semisup_core.errors import ConfigError, StorageError

T = TypeVar("T", bound="StageConfig")


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true/false. YAML 1.1 (PyYAML's default) also reads on, off,
    yes and no as booleans, so ``amp: off`` or ``--set llp.density=off`` became False."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """A config's YAML, with YAML 1.2's booleans (``_Loader``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (``1e-3`` -> float, ``[1,2]`` -> list)."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string; users mean a float
            return float(value)
        except ValueError:
            return value
    return value


def _section_default(cls: type | None, key: str) -> tuple[dict, type | None]:
    """The default of ``cls``'s nested-config field ``key`` as a dict (and its class), so that
    ``--set teacher.epochs=1`` changes one field of the default teacher recipe instead of
    replacing the recipe by the class defaults; ``({}, None)`` when there is none."""
    field = getattr(cls, "model_fields", {}).get(key)
    if field is None or field.is_required():
        return {}, None
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True), type(value)
    return {}, None


def apply_overrides(data: dict, overrides: list[str], cls: type | None = None) -> dict:
    """Apply ``a.b=c`` overrides to a nested dict (a copy); ``c`` is parsed as YAML. With the
    config class ``cls``, a section the data lacks starts as that field's default."""
    out = _deep_copy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ConfigError(f"override {item!r} has an empty key")
        node, node_cls = out, cls
        for k in keys[:-1]:
            default, child_cls = _section_default(node_cls, k)
            child = node.setdefault(k, default)
            node_cls = child_cls
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = _parse_scalar(raw)
    return out


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}


def format_validation_error(err: ValidationError, what: str) -> str:
    """One line naming the first offending field, e.g. ``train.optim.lr: ...``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        msg = "unknown key (typo?)"
    else:
        msg = first["msg"]
        if "input" in first and first["type"] != "missing":
            msg += f" (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{what}: {loc}: {msg}{more}"


def build(cls: type[T], data: dict, what: str = "config") -> T:
    """Validate a dict into ``cls``; raise ConfigError with one line on failure."""
    try:
        return cls.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, what)) from None


def read_yaml(uri: str) -> dict:
    """Read a YAML mapping from any storage URI."""
    try:
        text = storage.get_bytes(uri).decode()
    except StorageError as err:
        raise ConfigError(f"cannot read config: {err}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{uri}: invalid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: top level must be a mapping, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | None = None, overrides: list[str] | None = None,
         section: str | None = None) -> T:
    """Load ``cls`` from an optional YAML file (optionally one top-level section of it)
    plus dotted overrides."""
    data: dict = {}
    what = "config"
    if path:
        data = read_yaml(path)
        what = path
        if section is not None:
            data = data.get(section) or {}
            what = f"{path}[{section}]"
    return build(cls, apply_overrides(data, overrides or [], cls), what)


def dump(cfg: BaseModel) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save(cfg: BaseModel, out_dir: str, name: str = "config.yaml") -> str:
    """Write the resolved config beside a stage's outputs; returns its URI."""
    uri = storage.join(out_dir, name)
    storage.put_bytes(uri, dump(cfg).encode())
    return uri


def _optional_section(ann) -> type[BaseModel] | None:
    """The model of an ``X | None`` field whose X is a config section, else None."""
    import types
    import typing
    if typing.get_origin(ann) not in (typing.Union, types.UnionType):
        return None
    models = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 and type(None) in typing.get_args(ann) else None


def describe(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """One help line per (nested) field: ``key.path  type = default  description``.

    The CLI prints this under ``--help`` so every option and its recommended value is
    documented from the one place it is defined.
    """
    lines = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += describe(ann, key + ".")
            continue
        section = _optional_section(ann)
        if section is not None:  # an objective's own settings (null: its defaults)
            lines.append(f"  {key:<28} section or null = null  {field.description or ''}".rstrip())
            lines += describe(section, key + ".")
            continue
        if field.is_required():
            default = "REQUIRED"
        else:
            value = field.get_default(call_default_factory=True)
            default = f"= {value!r}"
        tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        desc = field.description or ""
        lines.append(f"  {key:<28} {tname} {default}  {desc}".rstrip())
    return lines
