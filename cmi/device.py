"""Where tensors are computed: one rule for the whole package."""
from __future__ import annotations

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
