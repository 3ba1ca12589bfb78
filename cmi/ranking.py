"""Greedy CMI ranking of the channels of one layer (METHOD.md §3).

With Y the labels, Z the conditioning feature maps and S the channels selected so far, step t
adds the channel j that maximises I(Y; Z ∪ S ∪ {j}) and records
CMI_t = I(Y; R | Z ∪ S), R the channels not yet selected, plus I(input; S) and I(S; Y).

How the engine reaches the cost floor of one eigendecomposition per candidate entropy:

- every variable is stored as its *energy* E = D / (2σ²) (D the squared distances between
  samples), so the Gram matrix of any set of variables is ``exp(-Σ E)``: the running sum over the
  selected set replaces recomputing Hadamard products, each variable keeps its own σ, and the
  unnormalised product has ones on the diagonal (trace N, no underflow however many factors);
- all candidates of a step go through ``torch.linalg.eigvalsh`` as one batch (chunked to bound
  memory);
- because R ∪ S is the whole layer, CMI_t = I(Y; L ∪ Z) - I(Y; Z ∪ S_t) exactly (L the whole layer),
  and I(Y; Z ∪ S_t) is the maximum the greedy step has just computed: CMI_t costs nothing extra;
- α = 2 needs no eigendecomposition: S_2(A) = -log ||A||_F², and for all candidates at once
  ||K_S ∘ K_j||_F² = <K_S², K_j²> is one matrix-vector product with the precomputed K_j²;
- the saturation stop (``saturation_tol``, METHOD.md §10): once CMI_t <= tol x I(Y; L ∪ Z) the
  selected set already carries everything the estimator can see about Y, every remaining candidate
  ties up to round-off, and further greedy steps (C - t candidates each) would rank noise. The loop
  stops there; the tail is ordered by :data:`TAIL_RULE` at a cost linear in C, and its CMI, MI
  curves are still evaluated exactly for that order, so every curve keeps its full length.
"""
from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from tqdm import tqdm

from .device import resolve_device
from .entropy import eigvalsh, entropy_from_eigenvalues, kernel_width, sq_dists

Tensor = torch.Tensor

#: Default relative tolerance of the saturation stop: CMI_t <= SATURATION_TOL x I(Y; L ∪ Z).
#: Chosen from the measured curves (figures/bench/saturation-quick-fashion-mnist.md): below it CMI_t
#: decays geometrically without a plateau, and on the trained quick network the exact order past
#: this point keeps no more accurate filters than the tail rule or a random choice, while each
#: further pick costs 2(C - t) eigendecompositions. 0 runs the exact full greedy ranking.
SATURATION_TOL = 1e-3

#: A Gram matrix whose off-diagonal entries are all within this of 0 is numerically the identity
#: (every sample its own point at this σ: entropy log N); within this of 1, all ones (a constant
#: channel: entropy 0). A layer whose every Gram is one or the other carries no information.
DEGENERATE_TOL = 1e-12

#: How the channels left after a saturation stop are ordered (not chosen by CMI).
TAIL_RULE = "I(Y; channel) alone, descending, rounded to 1e-10 nats; ties by channel index"


@dataclass
class Ranking:
    """Result of :func:`rank_channels` for one layer (entropies in nats).

    ``order[t]`` is the channel picked at step t+1; ``cmi[t]`` = I(Y; R | Z ∪ S) after that pick;
    ``objective[t]`` = I(Y; Z ∪ S) (the maximised quantity); ``mi_labels[t]`` = I(S; Y);
    ``mi_input[t]`` = I(input; S) (None without inputs); ``p_values[t]`` the permutation test's p
    for the pick (None without the test). With the test, selection stops at the first pick whose
    p >= eta; ``stopped`` says whether that happened.
    """

    order: list[int]
    cmi: list[float]
    objective: list[float]
    mi_labels: list[float]
    mi_input: list[float] | None
    p_values: list[float] | None
    n_channels: int
    alpha: float
    sigma: dict
    seconds: float
    entropies: int                 #: number of entropies evaluated (eigendecompositions for α != 2)
    device: str
    stopped: bool = False
    info: dict = field(default_factory=dict)
    saturated_at: int | None = None

    @property
    def cmi_picks(self) -> int:
        """How many leading picks of ``order`` the greedy CMI step chose."""
        return len(self.order) if self.saturated_at is None else self.saturated_at

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Ranking":
        return cls(**d)


# ----------------------------------------------------------------------------- validation
def _as_4d(name: str, x, n: int | None) -> Tensor:
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


def _check_inputs(features, labels, inputs, condition, alpha, num_classes, permutation, saturation_tol=0.0,
                  dtype=torch.float64, chunk=None):
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float64 (the default) or torch.float32, got {dtype!r}: "
                         f"eigendecompositions need at least single precision")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None or a positive int (candidates per batch), got {chunk!r}")
    features = _as_4d("features", features, None)
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
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in [0, num_classes={k}); found values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if inputs is not None:
        inputs = _as_4d("inputs", inputs, n)
    if isinstance(condition, Tensor):
        condition = [condition]
    condition = [_as_4d(f"condition[{i}]", z, n) for i, z in enumerate(condition or ())]
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


# ----------------------------------------------------------------------------- Gram matrices
def _channel_grams(x: Tensor, rule, dtype) -> tuple[Tensor, list[float]]:
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


def _degenerate_grams(k: Tensor) -> tuple[int, int]:
    """How many of the unit-diagonal Gram matrices ``k`` (C, N, N) are numerically the identity and
    how many all ones (:data:`DEGENERATE_TOL`); reductions only, no copy of ``k``."""
    n = k.shape[-1]
    identity = (k.sum((1, 2)) - n) <= DEGENERATE_TOL * n * (n - 1)      # entries are >= 0
    ones = k.amin((1, 2)) >= 1 - DEGENERATE_TOL
    return int(identity.sum()), int(ones.sum())


def _variable_gram(x: Tensor, rule, d_sigma: int, dtype) -> tuple[Tensor, float]:
    """Gram matrix (N, N) of one variable (all of x's features together), σ from dimension d_sigma."""
    flat = x.reshape(x.shape[0], -1).to(dtype)
    sigma = kernel_width(rule, x.shape[0], d_sigma, flat)
    return torch.exp(-sq_dists(flat) / (2 * sigma * sigma)), sigma


class _Entropy:
    """S_α of unnormalised Gram products (unit diagonal, so trace N), batched, chunked and counted."""

    def __init__(self, alpha: float, chunk: int):
        self.alpha, self.chunk, self.count = alpha, chunk, 0

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
                out.append(entropy_from_eigenvalues(eigvalsh(a), self.alpha))
        out = torch.cat(out)
        return out[0] if single else out


def _default_chunk(n: int, budget_bytes: float = 2**28) -> int:
    return max(1, int(budget_bytes // (2 * 8 * n * n)))


# ----------------------------------------------------------------------------- the engine
def rank_channels(features: Tensor, labels: Tensor, *, inputs: Tensor | None = None,
                  condition: Sequence[Tensor] = (), alpha: float = 1.01, sigma="paper",
                  num_classes: int | None = None, permutation: tuple[int, float] | None = None,
                  permute_condition: bool = True, saturation_tol: float | None = None, device=None,
                  seed: int = 0, dtype: torch.dtype = torch.float64, chunk: int | None = None,
                  progress: bool = False, desc: str = "ranking") -> Ranking:
    """Rank the C channels of one layer by greedy CMI selection (METHOD.md §3).

    Args:
        features: (N, C, H, W) post-ReLU activations of the layer on N samples.
        labels: (N,) integer class labels; one-hot encoded as one variable (σ from d = num_classes).
        inputs: optional (N, 3, H0, W0) input images, one variable (σ from d = H0·W0), for I(input; S).
        condition: (N, k, h, w) tensors: kept feature maps of previously pruned layers; each channel
            is its own variable, σ from its layer's h·w.
        alpha: Rényi order (the paper: 1.01). α = 2 uses no eigendecomposition.
        sigma: kernel-width rule ``"paper"`` (σ = 5·N^(-1/(4+d))), ``"silverman"``, ``"median"``
            (per channel), or a number used for every variable.
        num_classes: number of classes (default: max label + 1).
        permutation: None, or (P, eta): after each pick, shuffle the samples of the picked channel P
            times; p = fraction of shuffled CMI <= observed; stop at the first p >= eta.
        permute_condition: False computes the shuffled CMIs without Z (the authors' code,
            METHOD.md §9); the observed CMI_t always conditions on Z.
        saturation_tol: stop the greedy loop once CMI_t <= saturation_tol x I(Y; L ∪ Z) (also
            before the first pick, when Z alone saturates) and order the rest by :data:`TAIL_RULE`;
            0 runs every greedy step (the exact run). None: :data:`SATURATION_TOL`, or 0 with
            ``permutation`` (the test has its own stop; a nonzero value with it is an error).
        device: where to compute (default: CUDA when available, else CPU).
        seed: seeds the permutation test.
        dtype: float64 (default) or float32.
        chunk: candidates per eigendecomposition batch (default: a ~256 MB working set).

    Returns:
        :class:`Ranking`; ``order`` has C-1 picks, fewer when the permutation test stops.
    """
    t0 = time.perf_counter()
    if saturation_tol is None:
        saturation_tol = 0.0 if permutation is not None else SATURATION_TOL
    features, labels, inputs, condition, k = _check_inputs(
        features, labels, inputs, condition, alpha, num_classes, permutation, saturation_tol, dtype, chunk)
    dev = resolve_device(device)
    n, c = features.shape[:2]
    chunk = chunk or _default_chunk(n)
    ent = _Entropy(float(alpha), chunk)

    k_feat, sig_feat = _channel_grams(features.to(dev), sigma, dtype)           # (C, N, N)
    n_identity, n_ones = _degenerate_grams(k_feat)
    if n_identity + n_ones == c:
        warnings.warn(
            f"{desc}: the Gram matrices of all {c} channels are numerically the identity ({n_identity}) or all "
            f"ones ({n_ones}) at σ rule {sigma!r} (σ = {statistics.median(sig_feat):.3g}, maps "
            f"{features.shape[2]}x{features.shape[3]}, N = {n}): every entropy is log N or 0, so the CMI is 0 "
            f"and the order is the channel index. Use a kernel width on the features' scale (sigma='median') "
            f"or rescale the features.", stacklevel=2)
    onehot = torch.nn.functional.one_hot(labels.to(dev).long(), k).to(dtype)
    k_y, sig_y = _variable_gram(onehot, sigma, k, dtype)
    k_z = torch.ones(n, n, dtype=dtype, device=dev)                            # Gram of Z (empty: ones)
    sig_z = []
    for z in condition:
        kz, s = _channel_grams(z.to(dev), sigma, dtype)
        k_z *= kz.prod(0)
        sig_z.append(s[0] if len(set(s)) == 1 else s)
        del kz
    k_x, sig_x = (_variable_gram(inputs.to(dev), sigma, inputs.shape[2] * inputs.shape[3], dtype)
                  if inputs is not None else (None, None))
    h_x = ent(k_x) if k_x is not None else None

    h_y = ent(k_y)                                                             # S(Y)
    k_all = k_z * k_feat.prod(0)
    mi_all = (h_y + ent(k_all) - ent(k_all, k_y)).item()                      # I(Y; L ∪ Z)
    sq = (k_feat * k_feat).reshape(c, -1) if alpha == 2 else None              # K_j², for α = 2

    order: list[int] = []
    cmi, objective, mi_labels = [], [], []
    mi_input = [] if inputs is not None else None
    p_values = [] if permutation is not None else None
    remaining = list(range(c))
    k_zs = k_z.clone()                         # Gram of Z ∪ S
    k_s = torch.ones_like(k_z)                 # Gram of S alone
    gen = torch.Generator().manual_seed(seed)
    stopped = False
    saturated_at = None
    threshold = saturation_tol * abs(mi_all)

    def saturated(cmi_t: float) -> bool:
        return saturation_tol > 0 and cmi_t <= threshold

    single = None                   # I(Y; j) of every channel alone, when the first step computes it
    if condition and saturated(mi_all - (h_y + ent(k_z) - ent(k_z, k_y)).item()):   # Z alone saturates
        saturated_at = 0
    bar = tqdm(total=c - 1, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for _step in range(c - 1 if saturated_at is None else 0):
        rem = torch.tensor(remaining, device=dev)
        k_zsy = k_zs * k_y
        if alpha == 2:   # S_2(K_ZS ∘ K_j / N) = 2 log N - log <K_ZS², K_j²>, all candidates at once
            dots = (sq @ torch.stack([(k_zs * k_zs).reshape(-1), (k_zsy * k_zsy).reshape(-1)], 1))[rem]
            h_cand, h_cand_y = (2 * math.log(n) - torch.log(dots)).unbind(1)
            ent.count += 2 * len(remaining)
        else:
            parts = [(ent(k_feat[idx], k_zs), ent(k_feat[idx], k_zsy)) for idx in rem.split(chunk)]
            h_cand = torch.cat([a for a, _ in parts])
            h_cand_y = torch.cat([b for _, b in parts])
        gains = h_y + h_cand - h_cand_y                                       # I(Y; Z ∪ S ∪ {j})
        if _step == 0 and not condition:
            single = gains.clone()
        best = int(torch.argmax(gains))      # first maximum: ties go to the lowest channel index
        j = remaining.pop(best)
        order.append(j)
        k_zs_before = k_zs.clone() if permutation is not None else None
        k_s_before = k_s.clone() if permutation is not None and not permute_condition else None
        k_zs *= k_feat[j]
        k_s *= k_feat[j]
        gain = gains[best].item()
        objective.append(gain)

        # I(S; Y) and I(input; S): without Z the step already has S(S) and S(Y, S)
        if condition:
            h_s, h_s_y = ent(k_s), ent(k_s, k_y)
        else:
            h_s, h_s_y = h_cand[best], h_cand_y[best]
        mi_labels.append((h_y + h_s - h_s_y).item())
        if k_x is not None:
            mi_input.append((h_x + h_s - ent(k_s, k_x)).item())

        if permutation is None:
            cmi.append(mi_all - gain)
            if saturated(cmi[-1]) and len(remaining) > 1:
                saturated_at = len(order)
        else:
            observed, p = _permutation_test(k_feat, k_zs_before, j, remaining, k_y, ent, permutation, gen,
                                            k_s_before)
            cmi.append(observed)
            p_values.append(p)
            if p >= permutation[1]:
                stopped = True
        bar.update(1)
        if stopped or saturated_at is not None:
            break
    bar.close()
    if saturated_at is not None:
        tail = _tail_order(remaining, k_feat, k_y, h_y, ent, single)
        _extend_curves(tail[:-1], k_feat, k_zs, k_s, k_y, k_x, h_y, h_x, mi_all, ent, chunk, bool(condition),
                       order, cmi, objective, mi_labels, mi_input)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return Ranking(order=order, cmi=cmi, objective=objective, mi_labels=mi_labels, mi_input=mi_input,
                   p_values=p_values, n_channels=c, alpha=float(alpha),
                   sigma={"features": sig_feat[0] if len(set(sig_feat)) == 1 else sig_feat,
                          "labels": sig_y, "inputs": sig_x, "condition": sig_z},
                   seconds=time.perf_counter() - t0, entropies=ent.count, device=str(dev), stopped=stopped,
                   info={"mi_labels_all": mi_all, "n_samples": n, "num_classes": k,
                         "saturation_tol": float(saturation_tol),
                         "degenerate_grams": {"identity": n_identity, "ones": n_ones, "channels": c},
                         **({"tail_rule": TAIL_RULE} if saturated_at is not None else {})},
                   saturated_at=saturated_at)


def _tail_order(remaining: list[int], k_feat, k_y, h_y, ent, single) -> list[int]:
    """The channels left at a saturation stop, ordered by :data:`TAIL_RULE`. ``single`` holds
    I(Y; j) for every channel when the first greedy step computed it (no Z); else 2 entropies each."""
    rem = torch.tensor(remaining, device=k_feat.device)
    if single is not None:
        mi = single[rem]
    else:
        mi = torch.cat([h_y + ent(k_feat[idx]) - ent(k_feat[idx], k_y) for idx in rem.split(ent.chunk)])
    rounded = torch.round(mi.double() * 1e10).tolist()
    return [j for _, j in sorted(zip(rounded, remaining), key=lambda t: (-t[0], t[1]))]


def _extend_curves(tail, k_feat, k_zs, k_s, k_y, k_x, h_y, h_x, mi_all, ent, chunk, conditioned,
                   order, cmi, objective, mi_labels, mi_input) -> None:
    """Append ``tail`` to ``order`` and its exact CMI_t, I(Y; Z ∪ S), I(S; Y), I(input; S) to the
    curves: one Gram product per pick (running, in place) and a few batched entropies."""
    for i in range(0, len(tail), chunk):
        zs, s = [], []
        for j in tail[i:i + chunk]:
            k_zs *= k_feat[j]
            zs.append(k_zs.clone())
            if conditioned or k_x is not None:
                k_s *= k_feat[j]
                s.append(k_s.clone())
        zs = torch.stack(zs)
        h_zs = ent(zs)
        gain = h_y + h_zs - ent(zs, k_y)
        if conditioned:
            s = torch.stack(s)
            h_s = ent(s)
            mi_y = h_y + h_s - ent(s, k_y)
        else:
            s, h_s, mi_y = zs, h_zs, gain
        order.extend(tail[i:i + chunk])
        objective.extend(gain.tolist())
        cmi.extend((mi_all - gain).tolist())
        mi_labels.extend(mi_y.tolist())
        if k_x is not None:
            mi_input.extend((h_x + h_s - ent(s, k_x)).tolist())


def _permutation_test(k_feat, k_before, j, remaining, k_y, ent, permutation, gen,
                      k_shuffled_before=None) -> tuple[float, float]:
    """CMI_t = I(Y; R | Z ∪ S) observed and with channel j's samples shuffled P times.

    ``k_before`` is the Gram matrix of Z ∪ S without j (the set before this step's pick).
    Returns (observed CMI_t, p = fraction of shuffled CMI_t <= observed). The observed value is
    computed by the same four-entropy formula as the shuffled ones, so exact ties (a constant
    channel, whose shuffle changes nothing) compare equal. ``k_shuffled_before`` (the Gram of S
    alone) replaces ``k_before`` for the shuffled values: the authors' permutation test without Z.
    """
    p_count, _eta = permutation
    n = k_before.shape[0]
    dev = k_before.device
    k_r = k_feat[torch.tensor(remaining, device=dev)].prod(0) if remaining else torch.ones_like(k_before)
    perms = [torch.randperm(n, generator=gen).to(dev) for _ in range(p_count)]
    shuffled = torch.stack([k_feat[j]] + [k_feat[j][p][:, p] for p in perms])           # (1+P, N, N)
    k_zs_p = k_before * shuffled
    if k_shuffled_before is not None:
        k_zs_p[1:] = k_shuffled_before * shuffled[1:]
    k_rzs = k_zs_p * k_r
    cmis = ent(k_rzs) + ent(k_zs_p, k_y) - ent(k_rzs, k_y) - ent(k_zs_p)
    observed = cmis[0]
    p = (cmis[1:] <= observed).double().mean().item()
    return observed.item(), p
