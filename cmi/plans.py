"""What a pruning plan is: its settings, one decision per layer, and the whole plan (JSON round-trip).

Made by :func:`cmi.planner.plan` from a :class:`cmi.run.Run`, applied by :mod:`cmi.surgery`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .store import load_json, save_json


#: The config fields a plan's decisions depend on, besides the model, its activations and the protocol.
PLAN_FIELDS = {"cmi": ("alpha", "sigma", "permutations", "eta"),
               "prune": ("scree_candidates", "select_images", "tolerance", "max_drop", "reference", "fallback")}


def plan_settings(cfg, criterion: str = "cmi") -> dict:
    """Everything besides the model and activations that a plan of ``cfg`` decides with, derived from
    the config (a plan stores it, and its cache key hashes it): the seed, the protocol, the criterion
    that ranks, the fields of :data:`PLAN_FIELDS`, and the rankings' saturation stop as the protocol
    applies it (:meth:`cmi.protocols.Protocol.saturation_tol`)."""
    from .protocols import get_protocol

    protocol = get_protocol(cfg.prune.protocol)
    return {"seed": cfg.seed, "protocol": protocol.name, "criterion": criterion,
            **{f: getattr(getattr(cfg, sec), f) for sec, fields in PLAN_FIELDS.items() for f in fields},
            "saturation_tol": protocol.saturation_tol(cfg.cmi.saturation_tol)}


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
        plan = cls(**d)
        for x in plan.decisions:     # a cache file edited or misplaced: a ValueError that read_cache reports
            if not (0 <= x.layer < len(plan.widths) and x.kept and len(set(x.kept)) == len(x.kept)
                    and all(isinstance(i, int) and 0 <= i < plan.widths[x.layer] for i in x.kept)):
                raise ValueError(f"layer {x.layer}'s kept channels {x.kept[:8]}... do not fit widths {plan.widths}")
        return plan

    def save(self, path: Path) -> None:
        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: Path) -> "Plan":
        return cls.from_dict(load_json(path))
