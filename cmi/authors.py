"""The authors' code paths (github.com/cmiprune/cmiprune), where they differ from the paper's text.

docs/method.md §9 records each from their code line by line; every function here reproduces one, and
:mod:`cmi.protocols` assembles them into the ``authors`` protocol. Their published numbers come
from these paths, so the companion runs them as they are and labels what they produce.
"""
from __future__ import annotations

from typing import Sequence

from .cutoffs import xmeans_candidates
from .names import AUTHORS_PLANS


def scree_on_indices(order: Sequence[int], top: int = 3) -> list[int]:
    """Candidate keep counts of ``cutoff_point/scree_test.py`` ``select``, called by
    ``CNN_prune/prune_per_layer.py`` and ``prune_cross_layer.py`` with ``ordered_fm``: the *ranking*
    (channel indices), not the CMI vector.

    ratio_i = (order[i-1] - order[i]) / (order[i] - order[i+1]) for interior i (0 where the
    denominator is 0), -1 at both ends; the ``top`` positions with the largest ratios (Python's
    stable descending sort: ties go to the lower position) are the candidates, and the keep count is
    the position i itself (``sample(..., beta_idx=i)`` keeps ``select[:i]``). Their README's sample
    ranking [349, 246, 45, ...] gives ratio_1 = 103/201 = 0.5124378.
    """
    n = len(order)
    ratios = [-1.0] * n
    for i in range(1, n - 1):
        den = order[i] - order[i + 1]
        ratios[i] = 0.0 if den == 0 else (order[i - 1] - order[i]) / den
    positions = sorted(range(n), key=lambda i: -ratios[i])   # stable: ties keep the lower position first
    return positions[:top]


def xmeans_on_index_axis(cmi: Sequence[float]) -> list[int]:
    """``cutoff_point/xmeans.py``: X-Means (pyclustering, two k-means++ centres, seed 42) on the
    points (i, CMI_i); a cut is the first index of each next cluster. This is the paper's text too,
    and :func:`cmi.cutoffs.xmeans_candidates` already does it: CMI is far below the index range, so
    the clusters are intervals of i whatever the CMI curve is (docs/method.md §9)."""
    return xmeans_candidates(cmi)


def shift_kept(selected: Sequence[int], channels: int) -> list[int]:
    """The channels ``utils/accuracy.py`` actually leaves unmasked for a selection ``select[:k]``:
    ``adjust_select`` subtracts 1 from every (0-based) index, ``find_prune`` prunes every channel of
    ``range(C)`` not in the result. So each kept filter s is replaced by its neighbour s-1, s = 0
    becomes -1 and is dropped, and channel C-1 is always pruned. ``channels`` (C) checks the input."""
    bad = [s for s in selected if not 0 <= s < channels]
    if bad:
        raise ValueError(f"selected channels {bad} are outside 0..{channels - 1}")
    return [s - 1 for s in selected if s - 1 >= 0]


#: ``ordering/cmi.py`` ``permutation_test_CMI`` recomputes the CMI of each shuffle from the layer's own
#: selection only: the conditioning set Z of earlier layers is left out of the permuted values, while
#: the observed CMI_t includes it. :func:`cmi.ranking.rank_channels` does this with
#: ``permute_condition=False``.
PERMUTE_CONDITION = False

#: ``results/bidir_compact_*.py``: ``order_pruning`` holds one layer, so a compact-CMI candidate is
#: scored with only the previous layer pruned, not the whole chain.
COMPACT_SCORES_PREVIOUS_ONLY = True

#: ``results/bidir_full_scree.py``: full CMI bi-directional is one sequential chain (start, forward
#: half, then backward half conditioned on the start and the whole forward half).
FULL_BIDIRECTIONAL_ONE_CHAIN = True

#: ``utils/accuracy.py`` ``calc_accuracy`` prints each candidate's accuracy on the training set and on
#: the test set (drop_last), and the cut is chosen by hand from that printout: on test data. The
#: planner scores on ``prune.select_images`` test images (a seeded draw; all of them when null) and
#: applies the same choice rule as the paper protocol (cmi.cutoffs.choose_within_drop) to the scores.
CHOOSE_ON = "test"

#: The plans the authors' code defines: one script each in ``scripts/`` and ``results/``
#: (``prune_<direction>_<formulation>_<cutoff>.sh``). The other nine combinations have no script.
PLANS = AUTHORS_PLANS

#: ``ordering/cmi.py`` ``greedy_CMI`` runs every greedy step (C - 1 picks, no stop), and the
#: index-based scree above reads the whole order, so this protocol ranks exactly
#: (``saturation_tol=0``) whatever ``cmi.saturation_tol`` says.
EXACT_RANKING = True
