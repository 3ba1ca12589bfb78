"""Two protocols, one switch (``prune.protocol``): how a plan turns rankings into kept channels.

``paper``: the paper's text (docs/method.md §3-§7). Scree on the CMI vector, X-Means on (i, CMI_i), the
kept set is the ranking's prefix, candidates are chosen on held-out training images, the
permutation test conditions on Z, each half of a bi-directional plan is its own chain.

``authors``: what the authors' code does (docs/method.md §9, :mod:`cmi.authors`). Its candidate choices
use test accuracy, as theirs did; every result made with it is labelled "chosen on test data".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

from . import authors
from .cutoffs import ptest_cut, scree_candidates, xmeans_candidates
from .names import PATHS

#: cutoff name -> (ranking, number of scree candidates) -> candidate keep counts
CutoffRule = Callable[[object, int], list[int]]


@dataclass(frozen=True)
class Protocol:
    name: str
    cutoffs: dict[str, CutoffRule]
    kept: Callable[[Sequence[int], int], list[int]]     #: (selected ranking prefix, C) -> unmasked channels
    choose_on: str                                       #: "held-out" or "test"
    permute_condition: bool                              #: the permutation test's shuffles keep Z
    compact_scores_previous_only: bool                   #: compact candidates scored with one layer pruned
    full_bidirectional_one_chain: bool                   #: full CMI's backward half conditions on the forward one
    label: str                                           #: how tables name what it produced
    plans: tuple | None = None                           #: (formulation, cutoff, direction) it defines; None: all
    exact_ranking: bool = False                          #: every greedy pick (no saturation stop)

    def saturation_tol(self, configured: float) -> float:
        """The rankings' saturation stop a plan of this protocol runs with: ``cmi.saturation_tol``, or 0
        (every greedy pick) for a protocol that ranks exactly. The one place this is decided."""
        return 0.0 if self.exact_ranking else configured


#: The two end points, by the names of :data:`cmi.names.PROTOCOLS`.
BASES: dict[str, Protocol] = {
    "paper": Protocol(
        name="paper",
        cutoffs={"scree": lambda r, top: scree_candidates(r.cmi, top),
                 "xmeans": lambda r, top: xmeans_candidates(r.cmi),
                 "ptest": lambda r, top: [ptest_cut(r.order)]},
        kept=lambda selected, c: list(selected), choose_on="held-out", permute_condition=True,
        compact_scores_previous_only=False, full_bidirectional_one_chain=False,
        label="paper's text, chosen on held-out training images"),
    "authors": Protocol(
        name="authors",
        cutoffs={"scree": lambda r, top: authors.scree_on_indices(r.order, top),
                 "xmeans": lambda r, top: authors.xmeans_on_index_axis(r.cmi),
                 "ptest": lambda r, top: [ptest_cut(r.order)]},
        kept=authors.shift_kept, choose_on=authors.CHOOSE_ON, permute_condition=authors.PERMUTE_CONDITION,
        compact_scores_previous_only=authors.COMPACT_SCORES_PREVIOUS_ONLY,
        full_bidirectional_one_chain=authors.FULL_BIDIRECTIONAL_ONE_CHAIN,
        label="authors' code paths, chosen on test data", plans=authors.PLANS,
        exact_ranking=authors.EXACT_RANKING),
}


def one_path(base: str, path: str) -> Protocol:
    """``base`` ('paper' or 'authors') with one of the authors' code paths (:data:`cmi.names.PATHS`)
    taken from the other protocol: the path switched alone."""
    if base not in BASES or path not in PATHS:
        raise ValueError(f"a one-path protocol is 'paper+<path>' or 'authors-<path>' with <path> one of "
                         f"{tuple(PATHS)}, got base {base!r} and path {path!r}")
    other = BASES["authors" if base == "paper" else "paper"]
    changes = {f: getattr(other, f) for f in PATHS[path]}
    if base == "paper":
        name, label = f"paper+{path}", f"paper's text with the authors' {path}"
    else:
        name, label = f"authors-{path}", f"authors' code paths without their {path}"
    choose_on = changes.get("choose_on", BASES[base].choose_on)
    label += ", chosen on test data" if choose_on == "test" else ", chosen on held-out training images"
    return dataclasses.replace(BASES[base], **changes, name=name, label=label, plans=authors.PLANS)


def get_protocol(name: str) -> Protocol:
    """A protocol by name: 'paper', 'authors', 'paper+<path>' or 'authors-<path>' (:data:`PATHS`)."""
    if name in BASES:
        return BASES[name]
    for base, sep in (("paper", "+"), ("authors", "-")):
        if isinstance(name, str) and name.startswith(base + sep) and name[len(base) + 1:] in PATHS:
            return one_path(base, name[len(base) + 1:])
    raise ValueError(f"protocol must be one of {tuple(BASES)} or a one-path variant 'paper+<path>' / "
                     f"'authors-<path>' with <path> one of {tuple(PATHS)}, got {name!r}")
