"""Atomic file writes and the stage cache (one folder per stage and config hash).

Every write goes to a temporary file in the destination folder and is renamed into place, so an
interrupted run never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CacheCorrupt, CmiError, WriteFailed
from .paths import artifacts_root

#: Part of every cache key: bump it when a code change alters what a cached stage would compute.
CACHE_VERSION = 2


def _read_umask() -> int:
    mask = os.umask(0)          # reading the umask means setting it; put it straight back (once, at import)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, fsync, then rename it onto ``path``. A full
    disk or an unwritable folder is one :class:`WriteFailed` naming ``path`` (the old file is kept)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_failed(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)      # mkstemp creates 0600; a plain open() respects the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, CmiError):
            if _disk_full(e, path):
                raise _write_failed(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
            if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS):
                raise _write_failed(path, e) from None
        raise
    return path


def _disk_full(e: BaseException, path: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC, or torch.save's "unexpected pos" (its zip writer
    reports a short write that way) with less than 1 MiB left where ``path`` lives."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return "unexpected pos" in str(e) and shutil.disk_usage(path.parent).free < 2**20


def _write_failed(path: Path, e: OSError) -> WriteFailed:
    fix = ("free some space (or point CMI_ARTIFACTS elsewhere) and run the command again: finished stages are "
           "kept and the run resumes" if e.errno in (errno.ENOSPC, errno.EDQUOT) else
           "make the folder writable, or point CMI_ARTIFACTS at a writable folder")
    reason = "no space left on the device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e)).lower()
    return WriteFailed(f"cannot write {str(path)!r}: {reason}; {fix}")


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_json(obj: Any, path: Path) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def load_json(path: Path, what: str = "file") -> Any:
    """The JSON in ``path``; a file that does not parse is a :class:`CacheCorrupt` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheCorrupt(f"{what} {str(path)!r} is corrupt ({type(e).__name__}: {e}); "
                           f"delete it to recompute") from None


def read_cache(path: Path | None, parse: Callable[[Any], Any] = lambda d: d, what: str = "cached file") -> Any:
    """``parse(json)`` of the cached result at ``path``, or None when there is none to use: the file
    is missing, or corrupt (not JSON, or ``parse`` fails on it). A corrupt file is moved aside to
    ``<name>.corrupt`` (kept, never deleted) with a warning naming it, and the caller recomputes."""
    if path is None or not Path(path).is_file():
        return None
    path = Path(path)
    try:
        return parse(json.loads(path.read_text()))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        bad = path.with_name(path.name + ".corrupt")
        os.replace(path, bad)
        warnings.warn(f"{what} {str(path)!r} is corrupt ({type(e).__name__}: {e}); moved aside to {bad.name}, "
                      f"recomputing it", stacklevel=2)
        return None


def with_keys(*keys: str) -> Callable[[Any], dict]:
    """A ``parse`` for :func:`read_cache`: the dict itself, a KeyError when it lacks one of ``keys``."""
    def parse(d: Any) -> dict:
        missing = [k for k in keys if k not in d]
        if missing or not isinstance(d, dict):
            raise KeyError(f"no {', '.join(missing) or 'dict'}")
        return d
    return parse


def save_torch(obj: Any, path: Path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: Path, what: str = "checkpoint") -> Any:
    """Load a file written by :func:`save_torch`; a missing or unreadable file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):       # torch.save writes a zip archive; anything else is not ours
        raise CacheCorrupt(f"{what} {str(path)!r} is corrupt (not a file written by torch.save: "
                           f"{path.stat().st_size} bytes, no zip archive); delete it to recompute")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
        first_line = (str(e).strip().splitlines() or [""])[0][:160]
        raise CacheCorrupt(f"{what} {str(path)!r} is unreadable or corrupt ({type(e).__name__}: {first_line}); "
                           f"delete it to recompute") from None


def cache_key(payload: Any, length: int = 16) -> str:
    """Hex digest naming a cached result: SHA-256 of ``payload`` as canonical JSON, with the
    :data:`CACHE_VERSION`, so every cache in the package is keyed the same way."""
    blob = json.dumps({"payload": payload, "cache_version": CACHE_VERSION}, sort_keys=True, default=_jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def digest(cfg, *keys: str) -> str:
    """12 hex digits naming a stage's cache: :func:`cache_key` of the seed and the config sections or
    fields the stage depends on (:meth:`cmi.config.Config.payload`)."""
    return cache_key(cfg.payload(*keys), 12)


def save_config(cfg, path: Path) -> None:
    """Write a resolved :class:`cmi.config.Config` as YAML, atomically."""
    atomic_write_text(Path(path), cfg.to_yaml())


def stage_dir(stage: str, digest: str) -> Path:
    """``<artifacts>/<stage>/<digest>/``: where a cached stage keeps its files."""
    return artifacts_root() / stage / digest


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
