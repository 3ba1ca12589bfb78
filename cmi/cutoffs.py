"""Cutoff strategies: how many channels of a ranked layer to keep (docs/method.md §5).

All functions take the CMI vector of a ranking, ``cmi[t-1]`` = CMI_t after t picks (t = 1..T), and
return *keep counts*: keeping k channels means keeping the first k channels of the ranking.

- Scree test: ratio_t = (CMI_{t-1} - CMI_t) / (CMI_t - CMI_{t+1}) for interior t (0 where the
  denominator is 0, -1 at both ends); the largest ratios are the candidate cuts, keep = t (the
  elbow: pick t still removed much information, pick t+1 little).
- X-Means: cluster the points (index, CMI) with pyclustering's X-Means (two k-means++ initial
  centres, seed 42, as in the authors' code); each boundary between consecutive clusters is a
  candidate, keep = the number of points before it.
- Permutation test: the ranking stopped itself; keep = the number of picks it made (the authors'
  convention, which includes the pick whose p-value stopped it).
Candidates are then scored by the accuracy of the masked network (:mod:`cmi.planner`): on held-out
training images under the ``paper`` protocol, on test images under ``authors`` (as the authors' code
did, :data:`cmi.authors.CHOOSE_ON`; its results are labelled "chosen on test data"); :func:`choose`
picks one and :func:`choose_within_drop` adds the rule for candidates that all destroy the network.
"""
from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from typing import Sequence

import numpy as np

from .names import FALLBACKS


def scree_ratios(cmi: Sequence[float], rel_tol: float = 1e-9) -> list[float]:
    """The scree-test ratio of every point of the CMI vector (index t-1 for CMI_t).

    A difference smaller than ``rel_tol`` x max|CMI| is round-off of a flat stretch (the CMI of a
    saturated layer is 0 up to ~1e-16): it counts as 0, so noise / noise is not a huge ratio.
    """
    n = len(cmi)
    tol = rel_tol * max((abs(v) for v in cmi), default=0.0)
    ratios = [-1.0] * n
    for i in range(1, n - 1):
        num, den = cmi[i - 1] - cmi[i], cmi[i] - cmi[i + 1]
        num = 0.0 if abs(num) <= tol else num
        ratios[i] = 0.0 if abs(den) <= tol else num / den
    return ratios


def scree_candidates(cmi: Sequence[float], top: int = 3) -> list[int]:
    """Keep counts at the ``top`` largest scree ratios, best first (ties: fewer channels first)."""
    if len(cmi) == 0:
        raise ValueError("the CMI vector is empty")
    ratios = scree_ratios(cmi)
    order = sorted(range(len(ratios)), key=lambda i: (-ratios[i], i))
    return [i + 1 for i in order[:top]]


_NUMPY_WARNINGS_LOCK = threading.Lock()


@contextmanager
def _numpy_warnings_alias():
    """``numpy.warnings`` (the stdlib module) for the duration of the block only.

    pyclustering 0.10's k-means++ initializer (``center_initializer.kmeans_plusplus_initializer.
    __calculate_shortest_distances``, run for the initial centres and, in its Python
    implementation, for every split) calls ``numpy.warnings.filterwarnings`` inside
    ``warnings.catch_warnings()``, and NumPy 1.24 removed that alias. The alias is set only when
    NumPy lacks it and deleted on exit, so nothing outlives the call; the lock keeps one thread from
    deleting it while another still needs it.
    """
    with _NUMPY_WARNINGS_LOCK:
        added = not hasattr(np, "warnings")
        if added:
            np.warnings = warnings
        try:
            yield
        finally:
            if added:
                del np.warnings


def xmeans_candidates(cmi: Sequence[float], kmax: int = 20, seed: int = 42) -> list[int]:
    """Keep counts at the boundaries between X-Means clusters of the points (index, CMI), ascending.

    Returns an empty list when X-Means finds a single cluster (no cut suggested).
    """
    from pyclustering.cluster.center_initializer import kmeans_plusplus_initializer
    from pyclustering.cluster.xmeans import xmeans

    points = [[float(i), float(v)] for i, v in enumerate(cmi)]
    if len(points) < 3:
        return []
    with _numpy_warnings_alias():
        centres = kmeans_plusplus_initializer(points, 2, random_state=seed).initialize()
        model = xmeans(points, centres, kmax=kmax, random_state=seed)
        model.process()
    starts = sorted(min(c) for c in model.get_clusters() if c)
    return [s for s in starts[1:] if 0 < s < len(points) + 1]


def ptest_cut(order: Sequence[int]) -> int:
    """Keep count from a ranking stopped by the permutation test: the number of picks it made."""
    return len(order)


def check_keep(keep: int, channels: int, layer: str = "layer") -> int:
    """A keep count must leave at least one channel and cannot exceed the layer's channels."""
    if not isinstance(keep, (int, np.integer)) or isinstance(keep, bool):
        raise ValueError(f"{layer}: keep count must be an integer, got {keep!r}")
    if not 1 <= keep <= channels:
        raise ValueError(f"{layer}: cannot keep {keep} of {channels} channels (must be 1..{channels})")
    return int(keep)


def choose(candidates: Sequence[int], scores: Sequence[float], tolerance: float = 0.0) -> int:
    """The candidate with the fewest channels whose held-out accuracy is within ``tolerance``
    (a fraction, e.g. 0.005 = 0.5 pp) of the best candidate's; 0 picks the most accurate one."""
    if not candidates:
        raise ValueError("no candidate cuts to choose from")
    best = max(scores)
    return min(k for k, s in zip(candidates, scores) if s >= best - tolerance)



def choose_within_drop(candidates: Sequence[int], scores: Sequence[float], reference: float, max_drop: float | None,
                       tolerance: float = 0.0, fallback: str = "largest", channels: int | None = None
                       ) -> tuple[int, bool]:
    """Pick a keep count when some candidates may cost too much. Returns ``(keep, fell_back)``.

    Without ``max_drop`` this is :func:`choose`. With it, only candidates whose accuracy is at least
    ``reference - max_drop`` (``reference``: the unpruned network's accuracy, or the chain's so far)
    are eligible and
    :func:`choose` picks among them; when none is, ``fallback`` decides: ``"largest"`` keeps the
    largest candidate (the least destructive cut the cutoff offers), ``"unpruned"`` keeps all
    ``channels``. Without this rule, a chain whose candidates all score at chance takes the fewest
    channels at every later layer (every candidate ties at chance), which says nothing about the ranking.
    Measured from the chain so far the same happens once the chain is at chance (the reference is at
    chance too), so the profiles measure it from the unpruned network: a destroyed chain then keeps
    the largest candidate at every later layer.
    """
    if max_drop is None:
        return choose(candidates, scores, tolerance), False
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    ok = [(k, s) for k, s in zip(candidates, scores) if s >= reference - max_drop]
    if ok:
        return choose([k for k, _ in ok], [s for _, s in ok], tolerance), False
    if fallback == "unpruned":
        if channels is None:
            raise ValueError("fallback='unpruned' needs the layer's channel count")
        return channels, True
    return max(candidates), True
