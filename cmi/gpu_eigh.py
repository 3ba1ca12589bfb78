"""Eigenvalues of a batch of symmetric matrices on CUDA in one cuSOLVER call.

PyTorch's CUDA ``eigvalsh`` uses a batched cuSOLVER routine only for N <= 32; above that it calls the
solver once per matrix (pytorch issues #175585, #174674), so a ranking's batch of 256 x 256 matrices
costs about what the CPU does. ``cusolverDnXsyevBatched`` (cuSOLVER 11.7.1, CUDA 12.6.2, and later)
solves the whole batch at once. It is called here through ctypes on the cuSOLVER library that torch
itself loaded, on torch's current stream, with torch-allocated memory: nothing to install.

:func:`batched_eigvalsh` returns None where the routine is not there (an older CUDA, no CUDA): the
caller then uses ``torch.linalg.eigvalsh``. Only :func:`cmi.entropy.eigvalsh` calls it.
"""
from __future__ import annotations

import ctypes
import functools
import warnings

import torch

# cuSOLVER / CUDA enums (cusolver_common.h, library_types.h, cublas_api.h)
_NOVECTOR, _LOWER = 0, 0
_CUDA_TYPE = {torch.float32: 0, torch.float64: 1}          # CUDA_R_32F, CUDA_R_64F


def _loaded_cusolver() -> str | None:
    """The path of the libcusolver that torch has loaded into this process (after one CUDA solve)."""
    torch.linalg.eigvalsh(torch.eye(2, device="cuda", dtype=torch.float64))   # makes torch load it
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libcusolver.so" in line}
    except OSError:
        return None
    return min(paths) if paths else None


@functools.lru_cache(maxsize=None)
def _solver():
    """(library, handle, params), or None with one warning when cusolverDnXsyevBatched is unavailable."""
    path = _loaded_cusolver()
    if path is None:
        warnings.warn("cmi.gpu_eigh: torch's cuSOLVER library was not found in this process; "
                      "using torch.linalg.eigvalsh, one matrix at a time", RuntimeWarning)
        return None
    lib = ctypes.CDLL(path)
    if not hasattr(lib, "cusolverDnXsyevBatched"):
        warnings.warn(f"cmi.gpu_eigh: {path} has no cusolverDnXsyevBatched (needs CUDA >= 12.6.2); "
                      "using torch.linalg.eigvalsh, one matrix at a time", RuntimeWarning)
        return None
    handle, params = ctypes.c_void_p(), ctypes.c_void_p()
    _check(lib.cusolverDnCreate(ctypes.byref(handle)), "cusolverDnCreate")
    _check(lib.cusolverDnCreateParams(ctypes.byref(params)), "cusolverDnCreateParams")
    return lib, handle, params


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} returned cusolverStatus {status}")


def batched_eigvalsh(a: torch.Tensor) -> torch.Tensor | None:
    """Ascending eigenvalues (B, N) of symmetric CUDA matrices ``a`` (B, N, N), float32 or float64, in one
    ``cusolverDnXsyevBatched`` call; None where that routine is unavailable. Reads only the lower triangle."""
    if a.device.type != "cuda" or a.ndim != 3 or a.dtype not in _CUDA_TYPE or a.shape[0] == 0:
        return None
    solver = _solver()
    if solver is None:
        return None
    lib, handle, params = solver
    b, n = a.shape[0], a.shape[-1]
    work = a.clone(memory_format=torch.contiguous_format)   # overwritten; symmetric, so row- and column-major are the same
    w = torch.empty(b, n, dtype=a.dtype, device=a.device)
    info = torch.zeros(b, dtype=torch.int32, device=a.device)
    t, i64 = _CUDA_TYPE[a.dtype], ctypes.c_int64
    _check(lib.cusolverDnSetStream(handle, ctypes.c_void_p(torch.cuda.current_stream(a.device).cuda_stream)),
           "cusolverDnSetStream")
    dev_bytes, host_bytes = ctypes.c_size_t(), ctypes.c_size_t()
    _check(lib.cusolverDnXsyevBatched_bufferSize(
        handle, params, _NOVECTOR, _LOWER, i64(n), t, ctypes.c_void_p(work.data_ptr()), i64(n), t,
        ctypes.c_void_p(w.data_ptr()), t, ctypes.byref(dev_bytes), ctypes.byref(host_bytes), i64(b)),
        "cusolverDnXsyevBatched_bufferSize")
    dev_buf = torch.empty(max(1, dev_bytes.value), dtype=torch.uint8, device=a.device)
    host_buf = ctypes.create_string_buffer(max(1, host_bytes.value))
    _check(lib.cusolverDnXsyevBatched(
        handle, params, _NOVECTOR, _LOWER, i64(n), t, ctypes.c_void_p(work.data_ptr()), i64(n), t,
        ctypes.c_void_p(w.data_ptr()), t, ctypes.c_void_p(dev_buf.data_ptr()), ctypes.c_size_t(dev_bytes.value),
        host_buf, ctypes.c_size_t(host_bytes.value), ctypes.c_void_p(info.data_ptr()), i64(b)),
        "cusolverDnXsyevBatched")
    bad = int(info.ne(0).sum())
    if bad:
        raise RuntimeError(f"cusolverDnXsyevBatched did not converge on {bad} of {b} matrices")
    return w
