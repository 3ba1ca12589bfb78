"""Matrix-based Rényi α-order entropy (Sánchez Giraldo, Rao & Príncipe 2015; Yu et al. 2019).

Pure functions on Gram matrices, batched over any leading dimensions, float64 by default.

A variable observed on N samples is represented by its Gaussian Gram matrix
``K_ab = exp(-||x_a - x_b||^2 / (2 σ^2))``, normalised to unit trace, ``A = K / tr K``. Its entropy is
``S_α(A) = log(Σ_i λ_i(A)^α) / (1 - α)``; α → 1 gives the von Neumann entropy ``-Σ λ log λ`` and
α = 2 needs no eigendecomposition: ``Σ λ^2 = tr(A^2) = ||A||_F^2`` for symmetric A. The joint
entropy of several variables is the entropy of the renormalised Hadamard product of their Gram
matrices. Entropies are in nats unless ``base`` says otherwise (``base=2`` for bits).
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from typing import Sequence

import torch

from .names import SIGMA_RULES

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- Gram matrices
def sq_dists(x: Tensor) -> Tensor:
    """Squared Euclidean distances: ``x`` (..., N, d) -> (..., N, N), symmetric, >= 0, zero diagonal."""
    sq = (x * x).sum(-1)
    d = sq[..., :, None] + sq[..., None, :] - 2 * (x @ x.mT)
    d = d.clamp_(min=0)
    d = (d + d.mT) / 2  # exact symmetry, whatever the matmul's rounding
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


def kernel_width(rule: str | float, n: int, d: int, x: Tensor | None = None) -> float:
    """Gaussian kernel width σ for a variable of dimension ``d`` observed on ``n`` samples.

    - ``"paper"``: σ = 5 · n^(-1/(4+d)), the authors' rule (docs/method.md §2);
    - ``"silverman"``: σ = s · (4 / (d + 2))^(1/(d+4)) · n^(-1/(d+4)), s the mean per-dimension
      standard deviation of ``x`` (n, d);
    - ``"median"``: σ = median of the pairwise distances ||x_a - x_b||, a < b, of ``x``;
    - a positive number: used as is.
    A degenerate ``x`` (all samples equal) gives σ = 1 for the data-driven rules.
    """
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if not rule > 0:
            raise ValueError(f"sigma must be positive, got {rule!r}")
        return float(rule)
    if rule == "paper":
        return 5.0 * n ** (-1.0 / (4 + d))
    if rule not in SIGMA_RULES:
        raise ValueError(f"sigma must be a positive number or one of {SIGMA_RULES}, got {rule!r}")
    if x is None:
        raise ValueError(f"sigma rule {rule!r} needs the data x")
    x = x.reshape(n, -1).double()
    if rule == "silverman":
        s = x.std(0).mean().item()
        sigma = s * (4.0 / (d + 2)) ** (1.0 / (d + 4)) * n ** (-1.0 / (d + 4))
    else:
        iu = torch.triu_indices(n, n, 1, device=x.device)
        sigma = sq_dists(x)[iu[0], iu[1]].sqrt().median().item()
    return sigma if sigma > 0 else 1.0


def gaussian_gram(x: Tensor, sigma: float) -> Tensor:
    """Unnormalised Gaussian Gram matrix: ``x`` (..., N, d) -> (..., N, N) with ones on the diagonal."""
    return torch.exp(-sq_dists(x) / (2 * sigma * sigma))


def normalize(k: Tensor) -> Tensor:
    """Scale (..., N, N) PSD matrices to unit trace."""
    return k / k.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]


def hadamard(*grams: Tensor) -> Tensor:
    """Elementwise product of Gram matrices, renormalised to unit trace (the joint variable).

    ``grams``: PSD matrices (..., N, N), normalised or not (each is scaled to unit trace first), leading
    dimensions broadcast; returns the unit-trace product (..., N, N)."""
    if not grams:
        raise ValueError("need at least one Gram matrix")
    out = normalize(grams[0])
    n = out.shape[-1]
    for g in grams[1:]:
        out = out * normalize(g) * n  # keeps the trace at 1: no underflow for many factors
    return normalize(out)


# ----------------------------------------------------------------------------- entropies
#: held while a thread of this process is inside :func:`single_thread` (reentrant: a nested call passes)
_ONE_THREAD = threading.RLock()


@contextmanager
def single_thread(device: torch.device):
    """One intra-op thread on the CPU. LAPACK's threading of a small symmetric eigendecomposition
    costs more than it gains (N=256: 3.6 vs 4.2 ms on a 2-vCPU machine), and for spectra with a
    large cluster of near-zero eigenvalues, or with another process on the cores, it was measured
    up to 300x slower (2.8 s vs 8 ms).

    MKL's thread count is one for the whole process, and what it computes depends on it in the last
    bits (eigenvalues for N ≥ 128; a Gram product of N = 32 samples of 1024 pixels). So the Python
    threads of one process take turns here (the two halves of a bi-directional plan rank in turn,
    :func:`cmi.ranking.rank_channels` runs inside): had one left while the other was inside, it would
    have restored two threads under the other's arithmetic, and a plan would have depended on how
    the threads interleaved (a test comparing plans made in two processes failed under load)."""
    if device.type != "cpu":
        yield
        return
    with _ONE_THREAD:
        before = torch.get_num_threads()
        if before != 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if before != 1:
                torch.set_num_threads(before)


def cpu_workers() -> int:
    """The cores this process may use: its intra-op thread count (``torch.get_num_threads``; a worker
    process that was given one thread gets 1), at most the CPUs it is allowed to run on."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), allowed))


@lru_cache(maxsize=None)
def thread_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads for batches of eigendecompositions (LAPACK releases the GIL)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="cmi-eigvalsh")


def eigvalsh(a: Tensor, workers: int = 1, batched: bool = True) -> Tensor:
    """Eigenvalues of symmetric matrices (..., N, N), ascending (``torch.linalg.eigvalsh``, one thread on CPU).

    ``workers`` > 1 splits a CPU batch (B, N, N) into that many contiguous chunks solved on as many
    threads at once (LAPACK releases the GIL); each matrix is solved by the same single-threaded
    LAPACK call as without workers, so the result is bit-identical. Ignored on CUDA.

    On CUDA, a batch (B, N, N) with N > 32 goes to cuSOLVER's batched solver in one call
    (:mod:`cmi.gpu_eigh`; torch solves one matrix at a time there) unless ``batched`` is False.
    """
    if batched and a.is_cuda and a.ndim == 3 and a.shape[-1] > 32:
        from .gpu_eigh import batched_eigvalsh
        w = batched_eigvalsh(a)
        if w is not None:
            return w
    with single_thread(a.device):
        if a.device.type != "cpu" or workers <= 1 or a.ndim != 3 or a.shape[0] < 2:
            return torch.linalg.eigvalsh(a)
        parts = a.tensor_split(min(workers, a.shape[0]))
        return torch.cat(list(thread_pool(workers).map(torch.linalg.eigvalsh, parts)))


def entropy_from_eigenvalues(lam: Tensor, alpha: float, base: float | None = None) -> Tensor:
    """S_α from the eigenvalues (..., N) of a unit-trace PSD matrix.

    Eigenvalues below N·eps·λ_max are round-off of a true zero and are set to 0 (they would
    otherwise count for α < 1, where 0^α = 0 but (1e-17)^α is not negligible).
    """
    _check_alpha(alpha)
    tol = lam.shape[-1] * torch.finfo(lam.dtype).eps * lam.amax(-1, keepdim=True).clamp(min=0)
    lam = torch.where(lam > tol, lam, torch.zeros_like(lam))
    if alpha == 1:
        h = -torch.special.xlogy(lam, lam).sum(-1)
    else:
        h = torch.log((lam ** alpha).sum(-1)) / (1 - alpha)
    return h / math.log(base) if base is not None else h


def renyi_entropy(a: Tensor, alpha: float = 1.01, base: float | None = None) -> Tensor:
    """Matrix-based Rényi entropy of unit-trace PSD matrices ``a`` (..., N, N) -> (...).

    α = 1 is the von Neumann limit; α = 2 uses ``-log ||A||_F^2`` (no eigendecomposition).
    """
    _check_alpha(alpha)
    if alpha == 2:
        h = -torch.log((a * a).sum((-2, -1)))
        return h / math.log(base) if base is not None else h
    return entropy_from_eigenvalues(eigvalsh(a), alpha, base)


def joint_entropy(*grams: Tensor, alpha: float = 1.01, base: float | None = None) -> Tensor:
    """S_α of several variables together: the entropy of their normalised Hadamard product
    (:func:`hadamard`). ``grams``: Gram matrices (..., N, N), normalised or not; returns (...), in nats
    (in bits with ``base=2``)."""
    return renyi_entropy(hadamard(*grams), alpha, base)


def mutual_information(a: Tensor, b: Tensor, alpha: float = 1.01, base: float | None = None) -> Tensor:
    """I(A; B) = S(A) + S(B) - S(A, B) for Gram matrices ``a``, ``b`` (..., N, N), normalised or not
    (each is scaled to unit trace); returns (...), in nats (in bits with ``base=2``)."""
    return (renyi_entropy(normalize(a), alpha, base) + renyi_entropy(normalize(b), alpha, base)
            - joint_entropy(a, b, alpha=alpha, base=base))


def conditional_mutual_information(x: Tensor, y: Tensor, z: Tensor | Sequence[Tensor] | None,
                                   alpha: float = 1.01, base: float | None = None) -> Tensor:
    """I(X; Y | Z) = S(X, Z) + S(Y, Z) - S(X, Y, Z) - S(Z) for Gram matrices ``x``, ``y`` (..., N, N),
    normalised or not (each is scaled to unit trace); ``z`` is one such matrix, a sequence of them (their
    joint variable), or None/empty (then it is I(X; Y)). Returns (...), in nats (in bits with ``base=2``)."""
    zs = [z] if isinstance(z, Tensor) else list(z or [])
    if not zs:
        return mutual_information(x, y, alpha, base)
    return (joint_entropy(x, *zs, alpha=alpha, base=base) + joint_entropy(y, *zs, alpha=alpha, base=base)
            - joint_entropy(x, y, *zs, alpha=alpha, base=base) - joint_entropy(*zs, alpha=alpha, base=base))


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
