"""Pruning plans: CMI formulation x cutoff strategy x direction, in one call (METHOD.md §4-§7).

:func:`plan` ranks every layer, picks a cut and records everything needed to reproduce the
decision; :func:`mask_model` applies a plan the paper's way (pruned filters' conv weights and bias
zeroed, BN untouched) and :func:`remove_channels` builds the physically smaller network with
Torch-Pruning's dependency graph.

Formulations (what a layer's ranking is conditioned on, Z):
  per-layer  nothing;  compact  the kept maps of the layer pruned just before;
  full       the kept maps of every layer pruned before.
Directions:
  forward        conv1_1 ... conv5_3;
  bidirectional  per-layer CMI + the same cutoff on every layer first; the layer with the highest
                 pruning percentage is the start, then one half goes forward to the last layer and
                 the other backward to the first, each conditioned on its own chain. The halves are
                 independent, so they run concurrently.
Feature maps always come from the original network; candidate cuts are scored by the masked
network's accuracy on held-out training images with every earlier decision of the chain applied.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .activations import Activations, check_vgg
from .config import CUTOFFS, DIRECTIONS, FORMULATIONS
from .cutoffs import check_keep, choose, ptest_cut, scree_candidates, xmeans_candidates
from .data import Dataset
from .models import LAYER_NAMES, VGG16, build_model
from .ranking import Ranking, rank_channels
from .store import CACHE_VERSION, load_json, load_torch, save_json, save_torch
from .train import evaluate


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

    @classmethod
    def from_config(cls, cfg) -> "PlanSettings":
        return cls(alpha=cfg.cmi.alpha, sigma=cfg.cmi.sigma, permutations=cfg.cmi.permutations, eta=cfg.cmi.eta,
                   scree_candidates=cfg.prune.scree_candidates, select_images=cfg.prune.select_images,
                   tolerance=cfg.prune.tolerance, seed=cfg.seed)


@dataclass
class LayerDecision:
    """How one layer was pruned: its ranking, the candidate cuts and their held-out accuracy."""

    layer: int
    name: str
    channels: int
    keep: int
    kept: list[int]                  #: kept channel indices, in ranking order
    condition: list[str]             #: layers whose kept maps conditioned the ranking (Z)
    candidates: list[int]            #: candidate keep counts
    scores: list[float]              #: held-out accuracy of each candidate (empty: nothing to choose)
    phase: str                       #: forward | start | forward-half | backward-half
    ranking: dict                    #: Ranking.to_dict()
    seconds: dict = field(default_factory=dict)   #: wall time spent here: ranking, cutoff


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

    def by_layer(self) -> dict[int, LayerDecision]:
        return {d.layer: d for d in self.decisions}

    def kept_channels(self) -> dict[int, list[int]]:
        return {d.layer: sorted(d.kept) for d in self.decisions}

    def keep_counts(self) -> list[int]:
        kept = self.by_layer()
        return [kept[i].keep if i in kept else c for i, c in enumerate(self.widths)]

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


# ----------------------------------------------------------------------------- applying a plan
def _check_plan_fits(model: VGG16, kept: dict[int, list[int]]) -> list[int]:
    widths = [c.out_channels for c in check_vgg(model).convs()]
    for layer, idx in kept.items():
        name = LAYER_NAMES[layer] if 0 <= layer < len(LAYER_NAMES) else f"layer {layer}"
        if not 0 <= layer < len(widths):
            raise ValueError(f"plan names {name}, but the model has {len(widths)} conv layers")
        check_keep(len(idx), widths[layer], name)
        if len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= widths[layer]:
            raise ValueError(f"{name}: kept channels must be distinct indices in 0..{widths[layer] - 1}")
    return widths


def check_plan_for_model(plan: Plan, model: VGG16) -> None:
    widths = [c.out_channels for c in check_vgg(model).convs()]
    if widths != plan.widths:
        raise ValueError(f"the plan {plan.name} is for layer widths {plan.widths}, but the model has {widths} "
                         f"(a plan for another width or an already pruned model?)")


def _kept_for(model: VGG16, kept: "Plan | dict[int, list[int]]") -> dict[int, list[int]]:
    """The kept channels per layer of a plan (checked against the model's widths) or of a dict."""
    if isinstance(kept, Plan):
        check_plan_for_model(kept, model)
        return kept.kept_channels()
    return kept


def mask_model(model: VGG16, kept: "Plan | dict[int, list[int]]") -> VGG16:
    """A copy with every pruned filter's conv weights and bias set to zero (BN left as is).
    ``kept``: a :class:`Plan` for this model's widths, or {layer index: kept channel indices}."""
    kept = _kept_for(model, kept)
    widths = _check_plan_fits(model, kept)
    out = copy.deepcopy(model)
    convs = out.convs()
    with torch.no_grad():
        for layer, idx in kept.items():
            mask = torch.ones(widths[layer], dtype=torch.bool)
            mask[list(idx)] = False
            convs[layer].weight[mask] = 0
            if convs[layer].bias is not None:
                convs[layer].bias[mask] = 0
    return out


def remove_channels(model: VGG16, kept: "Plan | dict[int, list[int]]") -> VGG16:
    """A physically smaller copy: pruned filters removed with their BN channels and the next layer's
    input channels, through Torch-Pruning's DependencyGraph. ``model.kept`` records what was kept.
    ``kept`` as for :func:`mask_model`."""
    import torch_pruning as tp

    kept = _kept_for(model, kept)
    widths = _check_plan_fits(model, kept)
    out = copy.deepcopy(model).cpu().eval()
    convs = out.convs()
    graph = tp.DependencyGraph().build_dependency(out, example_inputs=torch.zeros(1, 3, 32, 32))
    for layer, idx in sorted(kept.items()):
        pruned = sorted(set(range(widths[layer])) - set(idx))
        if pruned:
            graph.get_pruning_group(convs[layer], tp.prune_conv_out_channels, idxs=pruned).prune()
    out.kept = {int(k): sorted(v) for k, v in kept.items()}
    return out


def save_pruned(model: VGG16, path: Path) -> None:
    """State dict + the base spec + kept channels per layer: no pickled classes."""
    spec = {"num_classes": model.num_classes, "width": model.width, "head": model.head_kind}
    save_torch({"spec": spec, "kept": {str(k): v for k, v in getattr(model, "kept", {}).items()},
                "state_dict": model.state_dict()}, path)


def load_pruned(path: Path) -> VGG16:
    blob = load_torch(path, what="pruned model file")
    base = build_model(**blob["spec"])
    model = remove_channels(base, {int(k): v for k, v in blob["kept"].items()})
    model.load_state_dict(blob["state_dict"])
    return model.eval()


# ----------------------------------------------------------------------------- planning
def cached_ranking(acts: Activations, layer: int, cond: list[tuple[int, list[int]]] = (), *, alpha: float = 1.01,
                   sigma: str = "paper", permutation: tuple[int, float] | None = None, seed: int = 0,
                   cache_dir: Path | None = None, device=None, progress: bool = False,
                   desc: str = "ranking") -> tuple[Ranking, bool]:
    """:func:`rank_channels` of layer ``layer`` conditioned on the kept maps ``cond`` ([(layer, kept
    channels)]), cached in ``cache_dir/rankings/`` under a hash of everything it depends on.
    Returns (ranking, whether it came from the cache)."""
    key = json.dumps({"model": acts.model, "n": acts.n, "layer": layer,
                      "condition": [[l, sorted(k)] for l, k in cond], "alpha": alpha, "sigma": sigma,
                      "permutation": list(permutation) if permutation else None, "seed": seed,
                      "cache_version": CACHE_VERSION}, sort_keys=True)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "rankings" / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
        if path.is_file():
            return Ranking.from_dict(load_json(path)), True
    feats = acts.features
    res = rank_channels(feats[layer], acts.labels, inputs=acts.inputs,
                        condition=[feats[l][:, sorted(k)] for l, k in cond], alpha=alpha, sigma=sigma,
                        permutation=permutation, device=device, seed=seed, progress=progress, desc=desc)
    if path is not None:
        save_json(res.to_dict(), path)
    return res, False


class _Planner:
    def __init__(self, model, acts, formulation, cutoff, direction, settings, ds, device, cache_dir, progress,
                 on_decision):
        self.model, self.acts, self.settings, self.ds = model, acts, settings, ds
        self.formulation, self.cutoff, self.direction = formulation, cutoff, direction
        self.device, self.cache_dir, self.progress, self.on_decision = device, cache_dir, progress, on_decision
        self.lock = threading.Lock()
        n_sel = settings.select_images
        if ds is not None:
            self.val_x = ds.val_x[:n_sel] if n_sel else ds.val_x
            self.val_y = ds.val_y[:n_sel] if n_sel else ds.val_y

    def rank(self, layer: int, cond: list[tuple[int, list[int]]], desc: str) -> tuple[Ranking, bool]:
        s = self.settings
        perm = (s.permutations, s.eta) if self.cutoff == "ptest" else None
        return cached_ranking(self.acts, layer, cond, alpha=s.alpha, sigma=s.sigma, permutation=perm, seed=s.seed,
                              cache_dir=self.cache_dir, device=self.device, progress=self.progress, desc=desc)

    # -- scoring candidate cuts on held-out images
    def score(self, applied: dict[int, list[int]], layer: int, kept: list[int]) -> float:
        masked = mask_model(self.model, {**applied, layer: kept})
        return evaluate(masked, self.val_x, self.val_y, self.ds, device=self.device)["accuracy"]

    def decide(self, layer: int, cond_layers: list[int], applied: dict[int, list[int]], phase: str) -> LayerDecision:
        name, c = LAYER_NAMES[layer], self.acts.widths[layer]
        t0 = time.perf_counter()
        ranking, cached = self.rank(layer, [(l, applied[l]) for l in cond_layers], desc=f"{name} ({phase})")
        t1 = time.perf_counter()
        full_order = ranking.order + [j for j in range(c) if j not in ranking.order]
        if self.cutoff == "ptest":
            candidates = [ptest_cut(ranking.order)]
        elif self.cutoff == "scree":
            candidates = scree_candidates(ranking.cmi, self.settings.scree_candidates)
        else:
            candidates = xmeans_candidates(ranking.cmi) or [c]   # one cluster: no cut suggested
        scores: list[float] = []
        if len(candidates) > 1:
            if self.ds is None:
                raise ValueError(f"the {self.cutoff} cutoff needs a dataset (held-out split) to score candidate cuts")
            scores = [self.score(applied, layer, full_order[:k]) for k in candidates]
            keep = choose(candidates, scores, self.settings.tolerance)
        else:
            keep = candidates[0]
        keep = check_keep(keep, c, name)
        decision = LayerDecision(layer=layer, name=name, channels=c, keep=keep, kept=full_order[:keep],
                                 condition=[LAYER_NAMES[l] for l in cond_layers], candidates=candidates,
                                 scores=scores, phase=phase, ranking=ranking.to_dict(),
                                 seconds={"ranking": t1 - t0, "cutoff": time.perf_counter() - t1,
                                          "ranking_cached": cached})
        return decision

    def conditioning(self, chain: list[int]) -> list[int]:
        if self.formulation == "per-layer" or not chain:
            return []
        return [chain[-1]] if self.formulation == "compact" else list(chain)

    def run_chain(self, layers: list[int], chain: list[int], done: dict, phase: str, plan: Plan) -> None:
        """Prune ``layers`` in order, each conditioned on the chain pruned before it."""
        chain = list(chain)
        for layer in layers:
            prior = done.get((phase, layer))
            if prior is None:
                applied = {l: self.kept_of(plan, l, phase) for l in chain}
                prior = self.decide(layer, self.conditioning(chain), applied, phase)
                with self.lock:
                    plan.decisions.append(prior)
                    done[(phase, layer)] = prior
                    self.on_decision(plan)
            chain.append(layer)

    def kept_of(self, plan: Plan, layer: int, phase: str) -> list[int]:
        with self.lock:
            for d in plan.decisions:
                if d.layer == layer and (d.phase == phase or d.phase == "start"):
                    return d.kept
        raise KeyError(layer)


def plan(model: VGG16, acts: Activations, *, formulation: str = "per-layer", cutoff: str = "scree",
         direction: str = "forward", ds: Dataset | None = None, settings: PlanSettings = PlanSettings(),
         device=None, cache_dir: Path | None = None, progress: bool = True, parallel: bool | None = None) -> Plan:
    """Run one pruning plan on ``model`` from its captured activations ``acts``.

    Args:
        formulation: ``per-layer``, ``compact`` or ``full`` (what each ranking is conditioned on).
        cutoff: ``scree``, ``xmeans`` or ``ptest``.
        direction: ``forward`` or ``bidirectional``.
        ds: the dataset whose held-out (val) split scores candidate cuts (scree, X-Means).
        cache_dir: folder for rankings (``rankings/``, shared by plans, keyed by content) and for
            this plan's progress (``plans/<settings hash>/<name>.json``): an interrupted plan resumes
            after its last finished layer, and a finished one is loaded instead of recomputed.
        parallel: run the two bi-directional halves concurrently (default: when more than one
            CPU core or a GPU is available). The result is the same either way.
    """
    for value, allowed, what in ((formulation, FORMULATIONS, "formulation"), (cutoff, CUTOFFS, "cutoff"),
                                 (direction, DIRECTIONS, "direction")):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    check_vgg(model)
    acts.check_model(model)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if parallel is None:
        parallel = (os.cpu_count() or 1) > 1 or device.type == "cuda"
    t0 = time.perf_counter()
    name = f"{formulation}-{cutoff}-{direction}"
    settings_key = hashlib.sha256(json.dumps({**asdict(settings), "cache_version": CACHE_VERSION},
                                             sort_keys=True).encode()).hexdigest()[:10]
    progress_path = Path(cache_dir) / "plans" / settings_key / f"{name}.json" if cache_dir is not None else None
    fresh = Plan(formulation, cutoff, direction, list(acts.widths), acts.model, asdict(settings), [])
    current = fresh
    if progress_path is not None and progress_path.is_file():
        saved = Plan.load(progress_path)
        if saved.model == fresh.model and saved.settings == fresh.settings and saved.widths == fresh.widths:
            if saved.complete:
                saved.loaded = True   # not a field: tells callers nothing was computed
                return saved
            current = saved

    def checkpoint(p: Plan) -> None:
        if progress_path is not None:
            p.seconds = time.perf_counter() - t0 + prior_seconds
            p.save(progress_path)

    prior_seconds = current.seconds
    layers = list(range(len(acts.widths)))
    bar = tqdm(total=len(layers), desc=name, disable=not progress, leave=False)

    def on_decision(p: Plan) -> None:
        checkpoint(p)
        bar.update(1)

    planner = _Planner(model.eval(), acts, formulation, cutoff, direction, settings, ds, device, cache_dir,
                       progress, on_decision)
    done = {(d.phase, d.layer): d for d in current.decisions}
    out = Plan(formulation, cutoff, direction, list(acts.widths), acts.model, asdict(settings),
               list(current.decisions), current.start, dict(current.first_pass))
    bar.update(len(out.decisions))
    if direction == "forward":
        planner.run_chain(layers, [], done, "forward", out)
    else:
        # pass one: per-layer CMI and the same cutoff on every layer, each layer pruned alone
        first = _Planner(planner.model, acts, "per-layer", cutoff, direction, settings, ds, device, cache_dir,
                         progress, lambda p: None)
        first_decisions = {}
        for layer in layers:
            if layer not in out.first_pass:
                first_decisions[layer] = first.decide(layer, [], {}, "first-pass")
                out.first_pass[layer] = first_decisions[layer].keep
                checkpoint(out)
        start = max(layers, key=lambda l: (1 - out.first_pass[l] / acts.widths[l], -l))
        out.start = start
        if ("start", start) not in done:
            d = first_decisions.get(start) or first.decide(start, [], {}, "start")
            d.phase = "start"
            out.decisions.append(d)
            done[("start", start)] = d
            on_decision(out)
        halves = [(layers[start + 1:], "forward-half"), (layers[:start][::-1], "backward-half")]
        if parallel:
            with ThreadPoolExecutor(2) as pool:
                for f in [pool.submit(planner.run_chain, ls, [start], done, ph, out) for ls, ph in halves]:
                    f.result()
        else:
            for ls, ph in halves:
                planner.run_chain(ls, [start], done, ph, out)
        # a stable order whichever half finished first: start, forward half, backward half
        rank_phase = {"start": 0, "forward-half": 1, "backward-half": 2}
        out.decisions.sort(key=lambda d: (rank_phase[d.phase], d.layer if d.phase != "backward-half" else -d.layer))
    bar.close()
    out.complete = True
    out.seconds = time.perf_counter() - t0 + prior_seconds
    if progress_path is not None:
        out.save(progress_path)
    return out
