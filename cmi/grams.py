"""The Gram matrices a ranking is built from (docs/method.md §2): one per channel of a layer, one per
variable (labels, input, conditioning maps), which of them are degenerate, and a counter that turns
their products into Rényi entropies in batches.

Shapes: a layer's maps (N, C, H, W) -> C Gram matrices (C, N, N), unnormalised with a unit diagonal
(the entropy divides by N); σ per the kernel-width rule of :func:`cmi.entropy.kernel_width`.
"""
from __future__ import annotations

import math

import torch

from .entropy import eigvalsh, entropy_from_eigenvalues, kernel_width, single_thread, sq_dists, thread_pool

Tensor = torch.Tensor

#: A Gram matrix whose off-diagonal entries are all within this of 0 is numerically the identity
#: (every sample its own point at this σ: entropy log N); within this of 1, all ones (a constant
#: channel: entropy 0). A layer whose every Gram is one or the other carries no information.
DEGENERATE_TOL = 1e-12


def channel_grams(x: Tensor, rule, dtype) -> tuple[Tensor, list[float]]:
    """Unnormalised Gaussian Gram matrix of every channel: (N, C, H, W) -> (C, N, N), and the σs."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1).transpose(0, 1).to(dtype)          # (C, N, d)
    d = sq_dists(flat)
    if isinstance(rule, str) and rule != "paper":
        sig = [kernel_width(rule, n, flat.shape[-1], flat[j]) for j in range(c)]
    else:
        sig = [kernel_width(rule, n, flat.shape[-1])] * c
    s2 = torch.tensor(sig, dtype=dtype, device=x.device).view(c, 1, 1) ** 2
    return d.div_(-2 * s2).exp_(), sig


def degenerate_grams(k: Tensor) -> tuple[int, int]:
    """How many of the unit-diagonal Gram matrices ``k`` (C, N, N) are numerically the identity and
    how many all ones (:data:`DEGENERATE_TOL`); reductions only, no copy of ``k``."""
    n = k.shape[-1]
    identity = (k.sum((1, 2)) - n) <= DEGENERATE_TOL * n * (n - 1)      # entries are >= 0
    ones = k.amin((1, 2)) >= 1 - DEGENERATE_TOL
    return int(identity.sum()), int(ones.sum())


def variable_gram(x: Tensor, rule, d_sigma: int, dtype) -> tuple[Tensor, float]:
    """Unnormalised Gaussian Gram matrix (N, N) of one variable, ones on the diagonal, in ``dtype``, and its
    σ: ``x`` (N, ...) is flattened to (N, d), all its features one variable; σ by ``rule`` from dimension
    ``d_sigma`` (:func:`cmi.entropy.kernel_width`)."""
    flat = x.reshape(x.shape[0], -1).to(dtype)
    sigma = kernel_width(rule, x.shape[0], d_sigma, flat)
    return torch.exp(-sq_dists(flat) / (2 * sigma * sigma)), sigma


class EntropyCounter:
    """S_α of unnormalised Gram products (unit diagonal, so trace N), batched, chunked and counted."""

    def __init__(self, alpha: float, chunk: int, workers: int = 1):
        self.alpha, self.chunk, self.workers, self.count = alpha, chunk, workers, 0

    def __call__(self, k: Tensor, mult: Tensor | None = None) -> Tensor:
        """S_α(k ∘ mult / N) for k (B, N, N) (or (N, N)); ``mult`` (N, N) also has a unit diagonal."""
        single = k.ndim == 2
        k = k[None] if single else k
        out = []
        for i in range(0, k.shape[0], self.chunk):
            a = k[i:i + self.chunk] * mult if mult is not None else k[i:i + self.chunk].clone()
            a = a.div_(a.shape[-1])
            self.count += a.shape[0]
            if self.alpha == 2:
                out.append(-torch.log((a * a).sum((-2, -1))))
            else:
                out.append(entropy_from_eigenvalues(eigvalsh(a, self.workers), self.alpha))
        out = torch.cat(out)
        return out[0] if single else out

    def gathered(self, k: Tensor, idx: Tensor, mult: Tensor) -> Tensor:
        """``self(k[idx], mult)``, bit for bit: S_α(k[j] ∘ mult / N) for each index j in ``idx``. On a CPU with
        workers > 1, each worker thread gathers, multiplies and solves its own share of every chunk, so
        that the products run in parallel with the eigendecompositions instead of before them."""
        if self.alpha == 2 or k.device.type != "cpu" or self.workers <= 1:
            return torch.cat([self(k[chunk], mult) for chunk in idx.split(self.chunk)])

        def solve(part: Tensor) -> Tensor:
            a = k[part].mul_(mult)               # a fresh copy: the product in place, as k[idx] * mult
            return torch.linalg.eigvalsh(a.div_(a.shape[-1]))

        out = []
        with single_thread(k.device):
            for chunk in idx.split(self.chunk):
                shares = chunk.tensor_split(min(4 * self.workers, len(chunk)))   # small shares balance the threads
                lam = torch.cat(list(thread_pool(self.workers).map(solve, shares)))
                self.count += len(chunk)
                out.append(entropy_from_eigenvalues(lam, self.alpha))
        return torch.cat(out)


def default_chunk(n: int, budget_bytes: float = 2**28) -> int:
    """Gram products per batch so that a batch of (N, N) float64 products and its copy fit ``budget_bytes``."""
    return max(1, int(budget_bytes // (2 * 8 * n * n)))


# ----------------------------------------------------------------------------- what a ranking is given
def as_4d(name: str, x, n: int | None) -> Tensor:
    """``x`` checked as a finite (N, C, H, W) tensor with N = ``n`` (unless ``n`` is None), a non-float one
    converted to float32; else a ValueError naming it ``name``. Returns the (converted) tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} has N={x.shape[0]} samples but features has N={n}")
    if not x.is_floating_point():
        x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return x


def check_inputs(features, labels, inputs, condition, alpha, num_classes, permutation, saturation_tol=0.0,
                 dtype=torch.float64, chunk=None):
    """One clear ValueError for anything :func:`cmi.ranking.rank_channels` cannot rank; returns
    ``(features, labels, inputs, condition, num_classes)`` as floats and lists it computes with."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float64 (the default) or torch.float32, got {dtype!r}: "
                         f"eigendecompositions need at least single precision")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None or a positive int (candidates per batch), got {chunk!r}")
    features = as_4d("features", features, None)
    n, c = features.shape[:2]
    if n < 2:
        raise ValueError(f"features has N={n} samples; at least 2 are needed")
    if c < 2:
        raise ValueError(f"features has {c} channel(s); ranking needs at least 2")
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be a 1-D integer tensor, got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}"
                         f"{' of ' + str(labels.dtype) if isinstance(labels, Tensor) else ''}")
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries but features has N={n} samples")
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if num_classes is None and len(torch.unique(labels)) != k:
        # {3, 7} would be read as 8 classes and {0, 1} as 2: the same split, another σ and another I(Y; L)
        raise ValueError(f"labels take the values {sorted(set(labels.tolist()))[:12]}, not every class 0..{k - 1}; "
                         f"relabel them 0..K-1 or pass num_classes")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in [0, num_classes={k}); found values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if inputs is not None:
        inputs = as_4d("inputs", inputs, n)
    if isinstance(condition, Tensor):
        condition = [condition]
    condition = [as_4d(f"condition[{i}]", z, n) for i, z in enumerate(condition or ())]
    if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if permutation is not None:
        try:
            p_count, eta = permutation
        except (TypeError, ValueError):
            raise ValueError(f"permutation must be None or (P, eta), got {permutation!r}") from None
        if not (isinstance(p_count, int) and p_count >= 1 and 0 < eta < 1):
            raise ValueError(f"permutation=(P, eta) needs an integer P >= 1 and 0 < eta < 1, got {permutation!r}")
    if isinstance(saturation_tol, bool) or not (isinstance(saturation_tol, (int, float)) and 0 <= saturation_tol < 1):
        raise ValueError(f"saturation_tol must be a number in [0, 1), got {saturation_tol!r}")
    if permutation is not None and saturation_tol:
        raise ValueError("saturation_tol must be 0 with a permutation test: the test has its own stop "
                         "and its CMI_t is the observed four-entropy value")
    return features, labels, inputs, condition, k
