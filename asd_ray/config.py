"""Job configuration: pydantic models loaded from YAML/JSON and overridden with ``key=value``.

Every job has one config model. ``load_config(Model, path, ["a.b=3", "name=x"])`` reads the file
(if any), applies the dotted overrides (values parsed as YAML, so ``3`` is an int, ``[1,2]`` a
list) and validates. Errors name the field and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class JobConfig(BaseModel):
    """Base of every job config: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    pass


def parse_overrides(overrides: list[str]) -> dict:
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.epochs=5)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path) -> dict:
    text = Path(path).read_text()
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level, got {type(data).__name__}")
    return data


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None,
                **fields) -> M:
    """Build ``model`` from a file, then ``fields`` (e.g. from CLI flags), then ``key=value`` overrides."""
    data = read_config_file(path) if path else {}
    data = deep_merge(data, {k: v for k, v in fields.items() if v is not None})
    data = deep_merge(data, parse_overrides(overrides or []))
    try:
        return model.model_validate(data)
    except ValidationError as e:
        where = f" ({path})" if path else ""
        lines = [f"invalid {model.__name__}{where}:"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def changes(was: dict, now: dict) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two settings dicts."""
    was, now = flatten(was), flatten(now)
    return [f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(was.keys() | now.keys())
            if was.get(k) != now.get(k)]


def refuse_changes(was: dict, now: dict, what: str) -> None:
    """A resumed run or sweep (``what``) keeps the settings it was started with: stop, listing every change."""
    changed = changes(was, now)
    if changed:
        raise ValueError(f"{what} was started with other settings (" + "; ".join(changed)
                         + "): resume it with its own settings, or give it a new name")
