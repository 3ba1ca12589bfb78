"""Where things live: the project root, configs, data and cached artifacts.

Environment variables override the defaults: ``CMI_DATA`` (datasets, default ``<root>/data``)
and ``CMI_ARTIFACTS`` (cached baselines, activations, rankings; default ``<root>/artifacts``).
The root is the source checkout when the package runs from one (so notebooks in
``notebooks/`` and the Makefile share one cache), else the current directory.
"""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def project_root() -> Path:
    root = _PACKAGE.parent
    return root if (root / "configs").is_dir() else Path.cwd()


def _from_env(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    if value is None:
        return default
    if not value.strip():     # Path("") is the current folder: a cache would be written wherever one stands
        from .errors import ConfigError
        raise ConfigError(f"{var} is set but empty; unset it (default {default}) or name a folder")
    return Path(value)


def configs_dir() -> Path:
    return _from_env("CMI_CONFIGS", project_root() / "configs")


def data_root() -> Path:
    return _from_env("CMI_DATA", project_root() / "data")


def artifacts_root() -> Path:
    return _from_env("CMI_ARTIFACTS", project_root() / "artifacts")


def check_folders() -> None:
    """One clear error when ``CMI_DATA`` or ``CMI_ARTIFACTS`` names something that is not a folder
    (a missing folder is fine: it is created when first written)."""
    from .errors import ConfigError
    for var, path in (("CMI_DATA", data_root()), ("CMI_ARTIFACTS", artifacts_root())):
        if path.is_symlink() and not path.exists():
            raise ConfigError(f"{var}={str(path)!r} is a symbolic link that leads nowhere (dangling, or a loop: "
                              f"{os.readlink(path)!r}); point {var} at a folder")
        need = os.R_OK | os.X_OK | (os.W_OK if var == "CMI_ARTIFACTS" else 0)
        if path.is_dir() and not os.access(path, need):
            raise ConfigError(f"{var}={str(path)!r} is not {'writable' if var == 'CMI_ARTIFACTS' else 'readable'} "
                              f"by this user (permission denied); fix its permissions or point {var} elsewhere")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{var}={str(path)!r} is a file, not a folder; point it at a folder "
                              f"(or unset it to use {project_root() / var.removeprefix('CMI_').lower()})")
