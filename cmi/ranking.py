"""Greedy CMI ranking of the channels of one layer (docs/method.md §3).

With Y the labels, Z the conditioning feature maps and S the channels selected so far, step t
adds the channel j that maximises I(Y; Z ∪ S ∪ {j}) and records
CMI_t = I(Y; R | Z ∪ S), R the channels not yet selected, plus I(input; S) and I(S; Y).

How the engine reaches the cost floor of one eigendecomposition per candidate entropy:

- every variable is stored as its unnormalised Gaussian Gram matrix K = exp(-D / (2σ²)), D the
  squared distances between samples, each with its own σ (:func:`cmi.grams.channel_grams`: one
  (N, N) matrix per channel). The Gram matrix of a set of variables is the Hadamard product of
  theirs, kept as a running product (the Gram of Z ∪ S is multiplied in place by K_j at each pick)
  instead of being rebuilt from the features; every factor has ones on the diagonal, so the product
  does too (trace N, however many factors; the entropy divides by N);
- all candidates of a step go through ``torch.linalg.eigvalsh`` as one batch (chunked to bound
  memory);
- because R ∪ S is the whole layer, CMI_t = I(Y; L ∪ Z) - I(Y; Z ∪ S_t) exactly (L the whole layer),
  and I(Y; Z ∪ S_t) is the maximum the greedy step has just computed: CMI_t costs nothing extra;
- α = 2 needs no eigendecomposition: S_2(A) = -log ||A||_F², and for all candidates at once
  ||K_S ∘ K_j||_F² = <K_S², K_j²> is one matrix-vector product with the precomputed K_j²;
- the saturation stop (``saturation_tol``, docs/method.md §10): once CMI_t <= tol x I(Y; L ∪ Z) the
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
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from .device import resolve_device
from .entropy import cpu_workers, single_thread
from .grams import (EntropyCounter, channel_grams, check_inputs, default_chunk, degenerate_grams,
                    variable_gram)
from .names import SATURATION_TOL
from .store import cache_key, read_cache, save_json

Tensor = torch.Tensor

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
    def from_dict(cls, d: dict, n_channels: int | None = None) -> "Ranking":
        """The ranking ``d`` holds; a ValueError when it cannot be one of ``n_channels`` channels
        (an index out of range or repeated, lengths that disagree: a cache file edited or misplaced)."""
        r = cls(**d)
        n = r.n_channels if n_channels is None else n_channels
        if r.n_channels != n or len(set(r.order)) != len(r.order) or not all(
                isinstance(i, int) and 0 <= i < n for i in r.order) or len(r.cmi) != len(r.order):
            raise ValueError(f"it is not a ranking of {n} channels (n_channels {r.n_channels}, "
                             f"{len(r.order)} picks, {len(set(r.order))} distinct)")
        return r


# ----------------------------------------------------------------------------- the engine
def rank_channels(features: Tensor, labels: Tensor, *, inputs: Tensor | None = None,
                  condition: Sequence[Tensor] = (), alpha: float = 1.01, sigma="paper",
                  num_classes: int | None = None, permutation: tuple[int, float] | None = None,
                  permute_condition: bool = True, saturation_tol: float | None = None, device=None,
                  seed: int = 0, dtype: torch.dtype = torch.float64, chunk: int | None = None,
                  workers: int | None = None, progress: bool = False, desc: str = "ranking") -> Ranking:
    """Rank the C channels of one layer by greedy CMI selection (docs/method.md §3).

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
            docs/method.md §9); the observed CMI_t always conditions on Z.
        saturation_tol: stop the greedy loop once CMI_t <= saturation_tol x I(Y; L ∪ Z) (also
            before the first pick, when Z alone saturates) and order the rest by :data:`TAIL_RULE`;
            0 runs every greedy step (the exact run). None: :data:`SATURATION_TOL`, or 0 with
            ``permutation`` (the test has its own stop; a nonzero value with it is an error).
        device: where to compute (default: CUDA when available, else CPU).
        seed: seeds the permutation test.
        dtype: float64 (default) or float32.
        chunk: candidates per eigendecomposition batch (default: a ~256 MB working set).
        workers: CPU threads that share each batch of eigendecompositions (default: the cores this
            process may use, :func:`cmi.entropy.cpu_workers`); the result does not depend on it.

    Returns:
        :class:`Ranking`; ``order`` has C-1 picks, fewer when the permutation test stops.
    """
    t0 = time.perf_counter()
    if saturation_tol is None:
        saturation_tol = 0.0 if permutation is not None else SATURATION_TOL
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int or None (all cores), got {workers!r}")
    features, labels, inputs, condition, k = check_inputs(
        features, labels, inputs, condition, alpha, num_classes, permutation, saturation_tol, dtype, chunk)
    workers = cpu_workers() if workers is None else workers
    # One intra-op thread for the ranking's own arithmetic: MKL splits a small Gram product's long inner
    # dimension (N = 32, d = 1024) over its threads, so the bits would depend on the thread count, and
    # on what another Python thread of the process set it to. Its parallelism is the workers' pool.
    with single_thread(resolve_device(device)):
        lay = _layer_grams(features, labels, inputs, condition, k, alpha, sigma, device, dtype, chunk, desc, workers)
        run = _greedy(lay, bool(condition), permutation, permute_condition, saturation_tol, seed, progress, desc)
        if run.saturated_at is not None:
            _saturated_tail(lay, run, bool(condition))
    if lay.dev.type == "cuda":
        torch.cuda.synchronize(lay.dev)
    return Ranking(order=run.order, cmi=run.cmi, objective=run.objective, mi_labels=run.mi_labels,
                   mi_input=run.mi_input, p_values=run.p_values, n_channels=lay.c, alpha=float(alpha),
                   sigma={"features": lay.sig_feat[0] if len(set(lay.sig_feat)) == 1 else lay.sig_feat,
                          "labels": lay.sig_y, "inputs": lay.sig_x, "condition": lay.sig_z},
                   seconds=time.perf_counter() - t0, entropies=lay.ent.count, device=str(lay.dev),
                   stopped=run.stopped,
                   info={"mi_labels_all": lay.mi_all, "n_samples": lay.n, "num_classes": k,
                         "saturation_tol": float(saturation_tol),
                         "degenerate_grams": {"identity": lay.n_identity, "ones": lay.n_ones, "channels": lay.c},
                         **({"tail_rule": TAIL_RULE} if run.saturated_at is not None else {})},
                   saturated_at=run.saturated_at)


@dataclass
class _Layer:
    """What the greedy loop reads, fixed for the whole ranking: Gram matrices (unit diagonal), their
    σs, and the entropies and informations that do not depend on the selected set."""

    dev: torch.device
    n: int
    c: int
    ent: EntropyCounter                  #: counts every entropy; ``ent.chunk`` candidates per batch
    k_feat: Tensor                 #: (C, N, N), one per channel
    sig_feat: list[float]
    n_identity: int                #: channels whose Gram is numerically the identity
    n_ones: int                    #: ... all ones
    k_y: Tensor
    sig_y: float
    k_z: Tensor                    #: Gram of Z (all ones without a condition)
    sig_z: list
    k_x: Tensor | None
    sig_x: float | None
    h_x: Tensor | None             #: S(input)
    h_y: Tensor                    #: S(Y)
    mi_all: float                  #: I(Y; L ∪ Z)
    sq: Tensor | None              #: K_j² flattened (C, N²), for α = 2


def _layer_grams(features, labels, inputs, condition, k, alpha, sigma, device, dtype, chunk, desc,
                 workers: int = 1) -> _Layer:
    """The Gram matrices of the layer's channels, Y, Z and the inputs (checked arguments of
    :func:`rank_channels`), and the fixed entropies; warns when every channel's Gram is degenerate."""
    dev = resolve_device(device)
    n, c = features.shape[:2]
    ent = EntropyCounter(float(alpha), chunk or default_chunk(n), workers)

    k_feat, sig_feat = channel_grams(features.to(dev), sigma, dtype)            # (C, N, N)
    n_identity, n_ones = degenerate_grams(k_feat)
    if n_identity + n_ones == c:
        warnings.warn(
            f"{desc}: the Gram matrices of all {c} channels are numerically the identity ({n_identity}) or all "
            f"ones ({n_ones}) at σ rule {sigma!r} (σ = {statistics.median(sig_feat):.3g}, maps "
            f"{features.shape[2]}x{features.shape[3]}, N = {n}): every entropy is log N or 0, so the CMI is 0 "
            f"and the order is the channel index. Use a kernel width on the features' scale (sigma='median') "
            f"or rescale the features.", stacklevel=3)                        # the caller of rank_channels
    onehot = torch.nn.functional.one_hot(labels.to(dev).long(), k).to(dtype)
    k_y, sig_y = variable_gram(onehot, sigma, k, dtype)
    k_z = torch.ones(n, n, dtype=dtype, device=dev)                            # Gram of Z (empty: ones)
    sig_z = []
    for z in condition:
        kz, s = channel_grams(z.to(dev), sigma, dtype)
        k_z *= kz.prod(0)
        sig_z.append(s[0] if len(set(s)) == 1 else s)
        del kz
    k_x, sig_x = (variable_gram(inputs.to(dev), sigma, inputs.shape[2] * inputs.shape[3], dtype)
                  if inputs is not None else (None, None))
    h_x = ent(k_x) if k_x is not None else None

    h_y = ent(k_y)                                                             # S(Y)
    k_all = k_z * k_feat.prod(0)
    mi_all = (h_y + ent(k_all) - ent(k_all, k_y)).item()                      # I(Y; L ∪ Z)
    sq = (k_feat * k_feat).reshape(c, -1) if alpha == 2 else None              # K_j², for α = 2
    return _Layer(dev=dev, n=n, c=c, ent=ent, k_feat=k_feat, sig_feat=sig_feat, n_identity=n_identity,
                  n_ones=n_ones, k_y=k_y, sig_y=sig_y, k_z=k_z, sig_z=sig_z, k_x=k_x, sig_x=sig_x, h_x=h_x,
                  h_y=h_y, mi_all=mi_all, sq=sq)


@dataclass
class _Picks:
    """The state of the greedy selection: the curves of :class:`Ranking` so far, the channels not
    yet picked, and the running Gram matrices of Z ∪ S and of S alone (updated in place)."""

    remaining: list[int]
    k_zs: Tensor
    k_s: Tensor
    mi_input: list[float] | None
    p_values: list[float] | None
    order: list[int] = field(default_factory=list)
    cmi: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    mi_labels: list[float] = field(default_factory=list)
    stopped: bool = False
    saturated_at: int | None = None
    single: Tensor | None = None   #: I(Y; j) of every channel alone, when the first step computes it


def _greedy(lay: _Layer, conditioned: bool, permutation, permute_condition: bool, saturation_tol: float,
            seed: int, progress: bool, desc: str) -> _Picks:
    """The greedy loop: up to C-1 picks, each the channel maximising I(Y; Z ∪ S ∪ {j}); stops early
    at the permutation test's stop or at saturation (then ``saturated_at`` is set)."""
    run = _Picks(remaining=list(range(lay.c)), k_zs=lay.k_z.clone(), k_s=torch.ones_like(lay.k_z),
                 mi_input=[] if lay.k_x is not None else None, p_values=[] if permutation is not None else None)
    gen = torch.Generator().manual_seed(seed)
    threshold = saturation_tol * abs(lay.mi_all)

    def saturated(cmi_t: float) -> bool:
        return saturation_tol > 0 and cmi_t <= threshold

    if conditioned and saturated(lay.mi_all - (lay.h_y + lay.ent(lay.k_z) - lay.ent(lay.k_z, lay.k_y)).item()):
        run.saturated_at = 0                                                   # Z alone saturates
    bar = tqdm(total=lay.c - 1, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in range(lay.c - 1 if run.saturated_at is None else 0):
        h_cand, h_cand_y = _candidate_entropies(lay, run.remaining, run.k_zs)
        gains = lay.h_y + h_cand - h_cand_y                                   # I(Y; Z ∪ S ∪ {j})
        if step == 0 and not conditioned:
            run.single = gains.clone()
        best = int(torch.argmax(gains))      # first maximum: ties go to the lowest channel index
        j = run.remaining.pop(best)
        run.order.append(j)
        k_zs_before = run.k_zs.clone() if permutation is not None else None
        k_s_before = run.k_s.clone() if permutation is not None and not permute_condition else None
        run.k_zs *= lay.k_feat[j]
        run.k_s *= lay.k_feat[j]
        gain = gains[best].item()
        run.objective.append(gain)
        _pick_informations(lay, run, conditioned, h_cand[best], h_cand_y[best])
        if permutation is None:
            run.cmi.append(lay.mi_all - gain)
            if saturated(run.cmi[-1]) and len(run.remaining) > 1:
                run.saturated_at = len(run.order)
        else:
            observed, p = _permutation_test(lay.k_feat, k_zs_before, j, run.remaining, lay.k_y, lay.ent,
                                            permutation, gen, k_s_before)
            run.cmi.append(observed)
            run.p_values.append(p)
            if p >= permutation[1]:
                run.stopped = True
        bar.update(1)
        if run.stopped or run.saturated_at is not None:
            break
    bar.close()
    return run


def _candidate_entropies(lay: _Layer, remaining: list[int], k_zs: Tensor) -> tuple[Tensor, Tensor]:
    """S(Z ∪ S ∪ {j}) and S(Z ∪ S ∪ {j}, Y) for every remaining channel j, batched."""
    rem = torch.tensor(remaining, device=lay.dev)
    k_zsy = k_zs * lay.k_y
    if lay.sq is not None:   # S_2(K_ZS ∘ K_j / N) = 2 log N - log <K_ZS², K_j²>, all candidates at once
        dots = (lay.sq @ torch.stack([(k_zs * k_zs).reshape(-1), (k_zsy * k_zsy).reshape(-1)], 1))[rem]
        h_cand, h_cand_y = (2 * math.log(lay.n) - torch.log(dots)).unbind(1)
        lay.ent.count += 2 * len(remaining)
        return h_cand, h_cand_y
    return lay.ent.gathered(lay.k_feat, rem, k_zs), lay.ent.gathered(lay.k_feat, rem, k_zsy)


def _pick_informations(lay: _Layer, run: _Picks, conditioned: bool, h_cand: Tensor, h_cand_y: Tensor) -> None:
    """Append I(S; Y) and I(input; S) for the set S just extended; without Z the step already has
    S(S) and S(Y, S): ``h_cand``, ``h_cand_y`` of the pick."""
    if conditioned:
        h_s, h_s_y = lay.ent(run.k_s), lay.ent(run.k_s, lay.k_y)
    else:
        h_s, h_s_y = h_cand, h_cand_y
    run.mi_labels.append((lay.h_y + h_s - h_s_y).item())
    if lay.k_x is not None:
        run.mi_input.append((lay.h_x + h_s - lay.ent(run.k_s, lay.k_x)).item())


def _saturated_tail(lay: _Layer, run: _Picks, conditioned: bool) -> None:
    """After a saturation stop: order the channels left by :data:`TAIL_RULE` and extend the curves
    exactly along that order (the last channel is never picked, as in the full run)."""
    tail = _tail_order(run.remaining, lay.k_feat, lay.k_y, lay.h_y, lay.ent, run.single)
    _extend_curves(tail[:-1], lay.k_feat, run.k_zs, run.k_s, lay.k_y, lay.k_x, lay.h_y, lay.h_x, lay.mi_all,
                   lay.ent, lay.ent.chunk, conditioned, run.order, run.cmi, run.objective, run.mi_labels,
                   run.mi_input)


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


# ----------------------------------------------------------------------------- cached rankings
def cached_ranking(acts, layer: int, cond: Sequence[tuple[int, list[int]]] = (), *, alpha: float = 1.01,
                   sigma: str = "paper", permutation: tuple[int, float] | None = None,
                   permute_condition: bool = True, saturation_tol: float, seed: int = 0,
                   cache_dir=None, device=None, progress: bool = False,
                   desc: str = "ranking") -> tuple[Ranking, bool]:
    """:func:`rank_channels` of layer ``layer`` of a :class:`cmi.activations.Activations` conditioned on
    the kept maps ``cond`` ([(layer, kept channels)]), cached in ``cache_dir/rankings/`` under a hash of
    everything it depends on. ``saturation_tol`` as in :func:`rank_channels` (the caller's config says
    it); a permutation-test ranking is always exact (its own stop decides). Returns (ranking, whether it
    came from the cache)."""
    if permutation:
        saturation_tol = 0.0
    key = {"model": acts.model, "n": acts.n, "layer": layer, "condition": [[l, sorted(k)] for l, k in cond],
           "alpha": alpha, "sigma": sigma, "permutation": list(permutation) if permutation else None,
           "permute_condition": permute_condition if permutation else None, "saturation_tol": saturation_tol,
           "seed": seed}
    path = Path(cache_dir) / "rankings" / f"{cache_key(key)}.json" if cache_dir is not None else None
    cached = read_cache(path, lambda d: Ranking.from_dict(d, acts.widths[layer]), "cached ranking")
    if cached is not None:
        return cached, True
    feats = acts.features
    # K as the rankings have always read it from a capture (max label + 1): a drawn sample may miss a class
    res = rank_channels(feats[layer], acts.labels, inputs=acts.inputs, num_classes=int(acts.labels.max()) + 1,
                        condition=[feats[l][:, sorted(k)] for l, k in cond], alpha=alpha, sigma=sigma,
                        permutation=permutation, permute_condition=permute_condition,
                        saturation_tol=saturation_tol, device=device, seed=seed, progress=progress, desc=desc)
    if path is not None:
        save_json(res.to_dict(), path)
    return res, False
