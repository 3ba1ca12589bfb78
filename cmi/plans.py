"""What a pruning plan is: its settings, one decision per layer, and the whole plan (JSON round-trip).

Made by :func:`cmi.planner.plan`, applied by :mod:`cmi.surgery`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .store import load_json, save_json


@dataclass(frozen=True)
class PlanSettings:
    """Everything besides the model and activations that a plan's decisions depend on."""

    alpha: float = 1.01
    sigma: str = "paper"
    permutations: int = 100
    eta: float = 0.05
    scree_candidates: int = 3
    select_images: int | None = None
    tolerance: float = 0.0
    seed: int = 0
    protocol: str = "paper"          #: paper | authors (METHOD.md §9), see :mod:`cmi.protocols`
    max_drop: float | None = None    #: a candidate may cost at most this accuracy (fraction) vs the reference
    reference: str = "network"       #: max_drop is measured from the unpruned "network" or the "chain" so far
    fallback: str = "largest"        #: no candidate within max_drop: keep the largest candidate, or "unpruned"
    saturation_tol: float = 0.0      #: the rankings' saturation stop (cmi.ranking); protocols may ask for 0

    def to_dict(self) -> dict:
        """The settings as stored in a plan and hashed into its cache key; a zero saturation_tol (the
        exact rankings, as before the stop existed) is left out, so those plans keep their keys."""
        d = asdict(self)
        if not d["saturation_tol"]:
            del d["saturation_tol"]
        return d

    @classmethod
    def from_config(cls, cfg) -> "PlanSettings":
        p = cfg.prune
        return cls(alpha=cfg.cmi.alpha, sigma=cfg.cmi.sigma, permutations=cfg.cmi.permutations, eta=cfg.cmi.eta,
                   scree_candidates=p.scree_candidates, select_images=p.select_images, tolerance=p.tolerance,
                   seed=cfg.seed, protocol=p.protocol, max_drop=p.max_drop, reference=p.reference,
                   fallback=p.fallback, saturation_tol=cfg.cmi.saturation_tol)


@dataclass
class LayerDecision:
    """How one layer was pruned: its ranking, the candidate cuts and their accuracy."""

    layer: int
    name: str
    channels: int
    keep: int
    kept: list[int]                  #: channels left unmasked (ranking order; the authors' shift applied)
    condition: list[str]             #: layers whose kept maps conditioned the ranking (Z)
    candidates: list[int]            #: candidate keep counts (positions in the ranking)
    scores: list[float]              #: accuracy of each candidate (empty: nothing to choose)
    phase: str                       #: forward | start | forward-half | backward-half
    ranking: dict                    #: Ranking.to_dict()
    seconds: dict = field(default_factory=dict)   #: wall time spent here: ranking, cutoff
    selected: list[int] | None = None  #: the ranking prefix chosen (conditions later layers); None = kept
    reference: float | None = None   #: the accuracy max_drop is measured from (when max_drop is set)
    fallback: bool = False           #: no candidate was within max_drop; the fallback rule decided
    chosen_on: str = "held-out"      #: the images the candidates were scored on: held-out | test

    @property
    def conditioning(self) -> list[int]:
        """The channels whose maps condition later rankings (the authors' code: before the shift)."""
        return self.kept if self.selected is None else self.selected


@dataclass
class Plan:
    """A full pruning plan; serialises to JSON and reloads identically."""

    formulation: str
    cutoff: str
    direction: str
    widths: list[int]
    model: str                        #: fingerprint of the network the plan was made for
    settings: dict
    decisions: list[LayerDecision]    #: in the order they were made (per half for bi-directional)
    start: int | None = None          #: bi-directional start layer
    first_pass: dict = field(default_factory=dict)   #: bi-directional: per-layer keep counts of pass one
    seconds: float = 0.0
    complete: bool = False

    @property
    def name(self) -> str:
        return f"{self.formulation}-{self.cutoff}-{self.direction}"

    @property
    def protocol(self) -> str:
        return self.settings.get("protocol", "paper")

    def by_layer(self) -> dict[int, LayerDecision]:
        return {d.layer: d for d in self.decisions}

    def kept_channels(self) -> dict[int, list[int]]:
        return {d.layer: sorted(d.kept) for d in self.decisions}

    def keep_counts(self) -> list[int]:
        """Channels left per layer (what the network keeps: after the authors' shift, if any)."""
        kept = self.by_layer()
        return [len(kept[i].kept) if i in kept else c for i, c in enumerate(self.widths)]

    @property
    def filters_kept(self) -> int:
        return sum(self.keep_counts())

    @property
    def filters_total(self) -> int:
        return sum(self.widths)

    @property
    def efficiency(self) -> float:
        """The paper's pruning efficiency: pruned filters / all filters."""
        return 1 - self.filters_kept / self.filters_total

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        d["decisions"] = [LayerDecision(**x) for x in d["decisions"]]
        d["first_pass"] = {int(k): v for k, v in d.get("first_pass", {}).items()}
        return cls(**d)

    def save(self, path: Path) -> None:
        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: Path) -> "Plan":
        return cls.from_dict(load_json(path))
