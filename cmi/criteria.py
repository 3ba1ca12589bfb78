"""Which channels of a layer to keep: importance criteria as small pluggable classes.

Each criterion has one job, the shape of Torch-Pruning's ``Importance``: a layer in, its channels
out, most important first (:meth:`Criterion.order`). ``select(ctx, layer, keep)`` keeps the first
``keep``; :meth:`Criterion.ranking` gives the planner (:func:`cmi.planner.plan`) an order and a
curve for the cutoffs. Adding a criterion is one class here with the :func:`register` decorator and its
name in :data:`cmi.names.CRITERIA` (where the config validates ``controls.criteria``).

- ``cmi``: the greedy CMI ranking (docs/method.md §3). Given a plan's decision for the layer, it keeps
  exactly what the plan kept (its conditioned ranking, the authors' shift included); alone, the
  per-layer ranking with the paper's kernel width.
- ``cmi-median``: the per-layer CMI ranking with the median-distance kernel width (docs/method.md §10).
- ``l1``: the L1 norm of each filter's weights (Li et al. 2017).
- ``hrank``: the average rank of each channel's feature maps over the captured images (Lin et al. 2020).
- ``random``: a seeded permutation; the control every criterion must beat.
- ``gamma``: |gamma| of the layer's BatchNorm (Network Slimming, Liu et al. 2017).
- ``constant-first``: the channels whose output is constant on the captured images
  (:func:`cmi.census.constant_channels`) go first, then the others in a seeded random order: what
  any criterion that notices a constant channel gets for free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from .activations import Activations
from .models import VGG16
from .names import CRITERIA as NAMES, SATURATION_TOL
from .ranking import Ranking, cached_ranking


@dataclass
class Context:
    """What criteria may look at: the trained network, its captured activations and, for the CMI
    rankings, the estimator settings and the ranking cache."""

    model: VGG16
    acts: Activations
    alpha: float = 1.01
    seed: int = 0
    cache_dir: Path | None = None
    device: object = None
    saturation_tol: float = SATURATION_TOL  #: of the CMI rankings (the run's cmi.saturation_tol)
    orders: dict = field(default_factory=dict, repr=False)   #: (criterion, layer, seed) -> order, memo

    def order(self, criterion: "Criterion", layer: int, seed: int = 0) -> list[int]:
        """``criterion.order`` computed once per layer and seed for this context."""
        key = (criterion.name, layer, seed if criterion.seeded else 0)
        if key not in self.orders:
            self.orders[key] = criterion.order(self, layer, seed)
        return self.orders[key]


class Criterion:
    name: ClassVar[str]
    seeded: ClassVar[bool] = False     #: the order depends on a seed (report mean ± sd over seeds)

    def order(self, ctx: Context, layer: int, seed: int = 0) -> list[int]:
        """All channels of ``layer``, most important first."""
        raise NotImplementedError

    def values(self, ctx: Context, layer: int, seed: int = 0) -> torch.Tensor | None:
        """Each channel's importance, a (C,) tensor indexed by channel (larger: more important), or None
        when the order has no values."""
        return None

    def select(self, ctx: Context, layer: int, keep: int, decision=None, seed: int = 0) -> list[int]:
        """The ``keep`` channels to keep; ``decision`` is a plan's :class:`LayerDecision` for the layer."""
        return sorted(ctx.order(self, layer, seed)[:keep])

    def ranking(self, ctx: Context, layer: int, seed: int = 0) -> Ranking:
        """The order as a :class:`cmi.ranking.Ranking` whose curve (``cmi``) the scree and X-Means cutoffs
        read: the importance values in order, or 1, (C-1)/C, ..., 1/C for an order without values."""
        order = ctx.order(self, layer, seed)
        v = self.values(ctx, layer, seed)
        c = len(order)
        curve = [float(v[j]) for j in order] if v is not None else [(c - t) / c for t in range(c)]
        return Ranking(order=order, cmi=curve, objective=[], mi_labels=[], mi_input=None, p_values=None,
                       n_channels=c, alpha=ctx.alpha, sigma={}, seconds=0.0, entropies=0, device="cpu",
                       info={"criterion": self.name})


CRITERIA: dict[str, Criterion] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    if cls.name not in NAMES:
        raise ValueError(f"criterion {cls.name!r} is not listed in cmi.names.CRITERIA {NAMES}")
    CRITERIA[cls.name] = cls()
    return cls


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {name!r}")
    return CRITERIA[name]


def _descending(scores: torch.Tensor) -> list[int]:
    """Channel indices by decreasing score; ties keep the lower index first."""
    return torch.sort(-scores.double(), stable=True).indices.tolist()


@register
class CMI(Criterion):
    name = "cmi"
    sigma = "paper"

    def order(self, ctx, layer, seed=0):
        r, _ = cached_ranking(ctx.acts, layer, [], alpha=ctx.alpha, sigma=self.sigma, seed=ctx.seed,
                              saturation_tol=ctx.saturation_tol,
                              cache_dir=ctx.cache_dir, device=ctx.device, desc=f"{self.name} layer {layer}")
        return r.order + [j for j in range(ctx.acts.widths[layer]) if j not in r.order]

    def select(self, ctx, layer, keep, decision=None, seed=0):
        if decision is not None and len(decision.kept) == keep:
            return sorted(decision.kept)
        return super().select(ctx, layer, keep, decision, seed)


@register
class CMIMedian(CMI):
    name = "cmi-median"
    sigma = "median"

    def select(self, ctx, layer, keep, decision=None, seed=0):
        return Criterion.select(self, ctx, layer, keep, None, seed)


@register
class L1(Criterion):
    name = "l1"

    def values(self, ctx, layer, seed=0):
        return ctx.model.convs()[layer].weight.detach().abs().sum((1, 2, 3))

    def order(self, ctx, layer, seed=0):
        return _descending(self.values(ctx, layer))


@register
class HRank(Criterion):
    name = "hrank"

    def values(self, ctx, layer, seed=0):
        maps = ctx.acts.features[layer].float()   # (N, C, H, W); float32 maps need float32's rank tolerance
        return torch.linalg.matrix_rank(maps).double().mean(0)

    def order(self, ctx, layer, seed=0):
        return _descending(self.values(ctx, layer))


@register
class Random(Criterion):
    name = "random"
    seeded = True

    def order(self, ctx, layer, seed=0):
        g = torch.Generator().manual_seed(1_000_003 * seed + layer)
        return torch.randperm(ctx.acts.widths[layer], generator=g).tolist()


@register
class Gamma(Criterion):
    name = "gamma"

    def values(self, ctx, layer, seed=0):
        return ctx.model.norms()[layer].weight.detach().abs()

    def order(self, ctx, layer, seed=0):
        return _descending(self.values(ctx, layer))


@register
class ConstantFirst(Criterion):
    name = "constant-first"
    seeded = True

    def order(self, ctx, layer, seed=0):
        from .census import constant_channels
        dead, positive = constant_channels(ctx.acts.features[layer])
        constant = set(dead) | set(positive)
        shuffled = CRITERIA["random"].order(ctx, layer, seed)
        return [j for j in shuffled if j not in constant] + [j for j in shuffled if j in constant]


def kept_at_counts(ctx: Context, criterion: str, counts: list[int], plan=None, seed: int = 0) -> dict[int, list[int]]:
    """What ``criterion`` keeps at the per-layer ``counts`` ({layer: kept channels}; layers left at full
    width are left out); ``plan``: a :class:`cmi.plans.Plan` whose decisions the ``cmi`` criterion keeps."""
    crit = get_criterion(criterion)
    decisions = plan.by_layer() if plan is not None else {}
    return {l: crit.select(ctx, l, k, decisions.get(l), seed)
            for l, (k, w) in enumerate(zip(counts, ctx.acts.widths)) if k < w}
