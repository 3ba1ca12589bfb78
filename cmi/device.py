"""Where tensors are computed: one rule for the whole package."""
from __future__ import annotations

import functools
import platform

import torch

from .errors import ConfigError


def resolve_device(device: "str | torch.device | None" = "auto") -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
    :class:`torch.device` as given. Asking for CUDA where there is none is one clear error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device is {str(device)!r} but CUDA is not available on this machine; "
                          f"use device=auto or device=cpu")
    return dev


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`) and the vector instructions
    torch's kernels use on it (``torch.backends.cpu.get_cpu_capability()``, e.g. AVX2, AVX512, AMX): float
    results differ between CPU models at the last bits, so both go into every caption and provenance record."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown"
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = ""
    return f"{name} ({capability})" if capability else name


def hardware_name(device: "torch.device | str") -> str:
    """In words, for captions: the GPU's name, or the CPU model, its vector capability and torch's threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} CPU, {torch.get_num_threads()} threads"
