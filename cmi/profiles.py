"""Profiles and overrides as text, before they become a :class:`cmi.config.Config`: the YAML files in
``configs/`` (the folder is passed in, :func:`cmi.paths.configs_dir`; a profile may ``extends:`` another),
``key=value`` strings parsed as YAML, and the type check of one value against its field's type hint.
Imports nothing of the package but its errors, so that :mod:`cmi.config` depends on leaves only."""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError


def available_profiles(configs: Path) -> list[str]:
    """The profile names in the folder ``configs``."""
    return sorted(p.stem for p in configs.glob("*.yaml"))


def profile_path(profile: str, configs: Path) -> Path:
    path = Path(profile)
    if path.suffix not in (".yaml", ".yml"):
        path = configs / f"{profile}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown profile {profile!r}; available: {available_profiles(configs)} "
                              f"(or pass the path of a YAML file)")
    elif not path.is_file():
        raise ConfigError(f"profile file {str(path)!r} does not exist")
    return path


def profile_settings(profile: str, sections, configs: Path, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A profile's settings as ``{"section.field": value}``, its ``extends`` base's first; ``sections``:
    the names of the config's sections (a mapping under one of them is flattened)."""
    path = profile_path(profile, configs)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"profile {str(path)!r} is not valid YAML: {e}") from None
    if raw is None:      # an empty file would silently be the built-in defaults (CIFAR-10, width 1, 200 epochs)
        raise ConfigError(f"profile {str(path)!r} is empty; give at least the settings that differ from the "
                          f"defaults, or 'extends: <profile>'")
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {str(path)!r} must be a mapping of sections, got {type(raw).__name__}")
    flat: dict[str, Any] = {}
    base = raw.pop("extends", None)
    chain = (*chain, str(path.resolve()))
    if base is not None:
        if not isinstance(base, str) or str(profile_path(base, configs).resolve()) in chain:
            raise ConfigError(f"profile {str(path)!r}: extends must name another profile, without a loop; "
                              f"got {base!r}")
        flat.update(profile_settings(base, sections, configs, chain))
    flat["profile"] = raw.pop("profile", path.stem)
    for key, value in raw.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"section {key!r} of profile {str(path)!r} must be a mapping")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def parse_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, str):
        overrides = [overrides]
    if not isinstance(overrides, (list, tuple)):
        raise ConfigError(f"overrides must be a mapping {{key: value}} or a list of 'key=value' strings, got "
                          f"{type(overrides).__name__} {overrides!r}")
    out: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, _, text = item.partition("=")
        if key.strip() in out:
            raise ConfigError(f"override {key.strip()!r} is given twice ({key.strip()}={out[key.strip()]!r} and "
                              f"{item!r}); give it once")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a dataclass type hint; ints are accepted for floats."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be null")
    base = next(a for a in args if a is not type(None)) if optional else hint
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if item is float:
            items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
            if not isinstance(items, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                raise ConfigError(f"{key} must be a list of numbers, got {type(value).__name__} {value!r}")
            return tuple(float(v) for v in items)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{key} must be a list of strings, got {type(value).__name__} {value!r}")
        return tuple(items)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "5e-4" as a string
        except ValueError:
            pass
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {base.__name__}, got {type(value).__name__} {value!r}")
    return value
