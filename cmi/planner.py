"""Making a pruning plan: CMI formulation x cutoff strategy x direction, under a protocol (METHOD.md §4-§9).

Formulations (what a layer's ranking is conditioned on, Z):
  per-layer  nothing;  compact  the kept maps of the layer pruned just before;
  full       the kept maps of every layer pruned before.
Directions:
  forward        conv1_1 ... conv5_3;
  bidirectional  per-layer CMI + the same cutoff on every layer first; the layer with the highest
                 pruning percentage is the start, then one half goes forward to the last layer and
                 the other backward to the first, each conditioned on its own chain (the halves are
                 independent and run concurrently; the authors' full CMI runs them as one chain).
Feature maps always come from the original network. Candidate cuts are scored by the masked network's
accuracy with the chain's earlier decisions applied, on held-out training images (``paper``) or on
the test set (``authors``, as their code did); :func:`cmi.cutoffs.choose_within_drop` picks one.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from .activations import Activations, check_vgg
from .config import CUTOFFS, DIRECTIONS, FORMULATIONS
from .cutoffs import check_keep, choose_within_drop
from .data import Dataset, seeded_indices
from .device import resolve_device
from .models import LAYER_NAMES, VGG16
from .plans import LayerDecision, Plan, PlanSettings
from .protocols import get_protocol
from .ranking import SATURATION_TOL, Ranking, rank_channels
from .store import cache_key, read_cache, save_json
from .train import MaskedScorer


def cached_ranking(acts: Activations, layer: int, cond: list[tuple[int, list[int]]] = (), *, alpha: float = 1.01,
                   sigma: str = "paper", permutation: tuple[int, float] | None = None,
                   permute_condition: bool = True, saturation_tol: float | None = None, seed: int = 0,
                   cache_dir: Path | None = None, device=None, progress: bool = False,
                   desc: str = "ranking") -> tuple[Ranking, bool]:
    """:func:`rank_channels` of layer ``layer`` conditioned on the kept maps ``cond`` ([(layer, kept
    channels)]), cached in ``cache_dir/rankings/`` under a hash of everything it depends on.
    ``saturation_tol`` as in :func:`rank_channels` (None: its default); a permutation-test ranking is
    always exact (its own stop decides). Returns (ranking, whether it came from the cache)."""
    if permutation:
        saturation_tol = 0.0
    elif saturation_tol is None:
        saturation_tol = SATURATION_TOL
    key = {"model": acts.model, "n": acts.n, "layer": layer, "condition": [[l, sorted(k)] for l, k in cond],
           "alpha": alpha, "sigma": sigma, "permutation": list(permutation) if permutation else None,
           "seed": seed}
    if permutation and not permute_condition:
        key["permute_condition"] = False
    if saturation_tol:          # exact rankings keep the keys they had before the stop existed
        key["saturation_tol"] = saturation_tol
    path = Path(cache_dir) / "rankings" / f"{cache_key(key)}.json" if cache_dir is not None else None
    cached = read_cache(path, Ranking.from_dict, "cached ranking")
    if cached is not None:
        return cached, True
    feats = acts.features
    res = rank_channels(feats[layer], acts.labels, inputs=acts.inputs,
                        condition=[feats[l][:, sorted(k)] for l, k in cond], alpha=alpha, sigma=sigma,
                        permutation=permutation, permute_condition=permute_condition,
                        saturation_tol=saturation_tol, device=device, seed=seed, progress=progress, desc=desc)
    if path is not None:
        save_json(res.to_dict(), path)
    return res, False


class _Planner:
    def __init__(self, model, acts, formulation, cutoff, settings: PlanSettings, ds, device, cache_dir, progress,
                 on_decision, scorer: MaskedScorer | None = None):
        self.model, self.acts, self.settings, self.ds = model, acts, settings, ds
        self.formulation, self.cutoff = formulation, cutoff
        self.protocol = get_protocol(settings.protocol)
        self.device, self.cache_dir, self.progress, self.on_decision = device, cache_dir, progress, on_decision
        self.lock = threading.Lock()
        self.scorer = None
        if ds is not None:
            n_sel = settings.select_images
            if self.protocol.choose_on == "test":     # the authors' choice; select_images of them, seeded
                idx = seeded_indices(len(ds.test_y), n_sel, settings.seed)
                self.eval_x, self.eval_y = ds.test_x[idx], ds.test_y[idx]
                self.eval_name = f"test[seed {settings.seed}, {len(idx)}]"
            else:
                self.eval_x = ds.val_x[:n_sel] if n_sel else ds.val_x
                self.eval_y = ds.val_y[:n_sel] if n_sel else ds.val_y
                self.eval_name = f"val[:{len(self.eval_y)}]"
            self.scorer = scorer or MaskedScorer(model, self.eval_x, self.eval_y, ds, device=device)

    def rank(self, layer: int, cond: list[tuple[int, list[int]]], desc: str) -> tuple[Ranking, bool]:
        s = self.settings
        perm = (s.permutations, s.eta) if self.cutoff == "ptest" else None
        return cached_ranking(self.acts, layer, cond, alpha=s.alpha, sigma=s.sigma, permutation=perm,
                              permute_condition=self.protocol.permute_condition,
                              saturation_tol=s.saturation_tol, seed=s.seed,
                              cache_dir=self.cache_dir, device=self.device, progress=self.progress, desc=desc)

    def score(self, applied: dict[int, list[int]]) -> float:
        """Accuracy of the masked network with ``applied`` kept channels, cached by content (plans and
        the bi-directional first passes of different formulations share many of these); computed by
        a :class:`cmi.train.MaskedScorer`, which reruns only the layers a candidate cut changes."""
        key = {"model": self.acts.model, "images": self.eval_name,
               "kept": sorted([l, sorted(k)] for l, k in applied.items())}
        path = Path(self.cache_dir) / "scores" / f"{cache_key(key)}.json" if self.cache_dir is not None else None
        cached = read_cache(path, lambda d: float(d["accuracy"]), "cached score")
        if cached is not None:
            return cached
        acc = self.scorer(applied)
        if path is not None:
            save_json({"accuracy": acc, "images": self.eval_name}, path)
        return acc

    def decide(self, layer: int, chain: list[LayerDecision], phase: str) -> LayerDecision:
        """Rank ``layer`` conditioned on the chain (per the formulation) and pick its cut."""
        name, c = LAYER_NAMES[layer], self.acts.widths[layer]
        cond_layers = self.conditioning([d.layer for d in chain])
        by_layer = {d.layer: d for d in chain}
        t0 = time.perf_counter()
        ranking, cached = self.rank(layer, [(l, by_layer[l].conditioning) for l in cond_layers],
                                    desc=f"{name} ({phase})")
        t1 = time.perf_counter()
        full_order = ranking.order + [j for j in range(c) if j not in ranking.order]
        s, proto = self.settings, self.protocol
        candidates = proto.cutoffs[self.cutoff](ranking, s.scree_candidates) or [c]   # no cut suggested: keep all
        options = {k: proto.kept(full_order[:k], c) for k in candidates}
        options = {k: v for k, v in options.items() if v}        # the authors' shift can empty a 1-channel cut
        if not options:
            options = {c: proto.kept(full_order, c)}
        candidates = list(options)
        scope = chain[-1:] if (self.formulation == "compact" and proto.compact_scores_previous_only) else chain
        applied = {d.layer: d.kept for d in scope}
        scores: list[float] = []
        reference, fell_back = None, False
        if len(candidates) > 1:
            if self.ds is None:
                raise ValueError(f"the {self.cutoff} cutoff needs a dataset (held-out split) to score candidate cuts")
            scores = [self.score({**applied, layer: options[k]}) for k in candidates]
            if s.max_drop is not None:   # from the unpruned network, or from the chain so far
                reference = self.score({} if s.reference == "network" else applied)
            keep, fell_back = choose_within_drop(candidates, scores, reference, s.max_drop, s.tolerance,
                                                 s.fallback, c)
        else:
            keep = candidates[0]
        keep = check_keep(keep, c, name)
        selected = full_order[:keep]
        kept = options.get(keep, proto.kept(selected, c))
        return LayerDecision(layer=layer, name=name, channels=c, keep=keep, kept=kept,
                             condition=[LAYER_NAMES[l] for l in cond_layers], candidates=candidates,
                             scores=scores, phase=phase, ranking=ranking.to_dict(),
                             seconds={"ranking": t1 - t0, "cutoff": time.perf_counter() - t1,
                                      "ranking_cached": cached},
                             selected=None if kept == selected else selected, reference=reference,
                             fallback=fell_back, chosen_on=proto.choose_on if scores else "")

    def conditioning(self, chain: list[int]) -> list[int]:
        if self.formulation == "per-layer" or not chain:
            return []
        return [chain[-1]] if self.formulation == "compact" else list(chain)

    def run_chain(self, layers: list[int], chain: list[int], done: dict, phase: str, plan: Plan) -> None:
        """Prune ``layers`` in order, each conditioned on the chain (layer indices) pruned before it."""
        chain = list(chain)
        for layer in layers:
            prior = done.get(layer)
            if prior is None:
                with self.lock:
                    decided = {d.layer: d for d in plan.decisions}
                prior = self.decide(layer, [decided[l] for l in chain], phase)
                with self.lock:
                    plan.decisions.append(prior)
                    done[layer] = prior
                    self.on_decision(plan)
            chain.append(layer)


def _effective(settings: PlanSettings) -> PlanSettings:
    """The settings a plan runs with: a protocol that ranks exactly ranks every greedy pick."""
    if get_protocol(settings.protocol).exact_ranking:
        return dataclasses.replace(settings, saturation_tol=0.0)
    return settings


def _progress_path(settings: PlanSettings, cache_dir: Path | None, name: str) -> Path | None:
    return Path(cache_dir) / "plans" / cache_key(settings.to_dict(), 10) / f"{name}.json" if cache_dir else None


def _saved(acts: Activations, formulation: str, cutoff: str, direction: str, settings: PlanSettings,
           path: Path | None) -> Plan | None:
    """The plan saved at ``path`` (complete or in progress) when it belongs to these activations and settings."""
    saved = read_cache(path, Plan.from_dict, "saved plan")
    fresh = Plan(formulation, cutoff, direction, list(acts.widths), acts.model, settings.to_dict(), [])
    if saved is not None and (saved.model, saved.settings, saved.widths) == (fresh.model, fresh.settings, fresh.widths):
        return saved
    return None


def is_cached(acts: Activations, formulation: str, cutoff: str, direction: str, settings: PlanSettings,
              cache_dir: Path | None) -> bool:
    """Whether :func:`plan` would load this plan whole from ``cache_dir`` (nothing to compute)."""
    settings = _effective(settings)
    saved = _saved(acts, formulation, cutoff, direction, settings,
                   _progress_path(settings, cache_dir, f"{formulation}-{cutoff}-{direction}"))
    return saved is not None and saved.complete


def plan(model: VGG16, acts: Activations, *, formulation: str = "per-layer", cutoff: str = "scree",
         direction: str = "forward", ds: Dataset | None = None, settings: PlanSettings = PlanSettings(),
         device=None, cache_dir: Path | None = None, progress: bool = True, parallel: bool | None = None
         ) -> tuple[Plan, bool]:
    """Run one pruning plan on ``model`` from its captured activations ``acts``.

    Args:
        formulation: ``per-layer``, ``compact`` or ``full`` (what each ranking is conditioned on).
        cutoff: ``scree``, ``xmeans`` or ``ptest``.
        direction: ``forward`` or ``bidirectional``.
        ds: the dataset whose held-out (val) split, or test split under the ``authors`` protocol,
            scores candidate cuts (scree, X-Means); ``settings.select_images`` of them (the test
            images a seeded draw).
        settings: estimator, cutoff and choice settings, ``protocol`` among them.
        cache_dir: folder for rankings (``rankings/``) and candidate scores (``scores/``), shared by
            plans and keyed by content, and for this plan's progress (``plans/<settings hash>/<name>.json``):
            an interrupted plan resumes after its last finished layer, a finished one is loaded.
        parallel: run the two bi-directional halves concurrently: ``True``, ``False``, or ``None`` for
            "when more than one CPU core or a GPU is available". The result is the same either way.

    Returns:
        ``(plan, loaded)``: ``loaded`` is True when the finished plan came whole from the cache.
    """
    for value, allowed, what in ((formulation, FORMULATIONS, "formulation"), (cutoff, CUTOFFS, "cutoff"),
                                 (direction, DIRECTIONS, "direction")):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    protocol = get_protocol(settings.protocol)
    settings = _effective(settings)
    check_vgg(model)
    acts.check_model(model)
    device = resolve_device(device)
    if parallel is None:
        parallel = (os.cpu_count() or 1) > 1 or device.type == "cuda"
    one_chain = direction == "bidirectional" and formulation == "full" and protocol.full_bidirectional_one_chain
    t0 = time.perf_counter()
    name = f"{formulation}-{cutoff}-{direction}"
    progress_path = _progress_path(settings, cache_dir, name)
    current = Plan(formulation, cutoff, direction, list(acts.widths), acts.model, settings.to_dict(), [])
    saved = _saved(acts, formulation, cutoff, direction, settings, progress_path)
    if saved is not None:
        if saved.complete:
            return saved, True
        current = saved
    prior_seconds = current.seconds

    def checkpoint(p: Plan) -> None:
        if progress_path is not None:
            p.seconds = time.perf_counter() - t0 + prior_seconds
            p.save(progress_path)

    layers = list(range(len(acts.widths)))
    bar = tqdm(total=len(layers), desc=name, disable=not progress, leave=False)

    def on_decision(p: Plan) -> None:
        checkpoint(p)
        bar.update(1)

    model = model.eval()
    planner = _Planner(model, acts, formulation, cutoff, settings, ds, device, cache_dir, progress, on_decision)
    out = Plan(formulation, cutoff, direction, list(acts.widths), acts.model, settings.to_dict(),
               list(current.decisions), current.start, dict(current.first_pass))
    done = {d.layer: d for d in out.decisions}
    bar.update(len(out.decisions))
    if direction == "forward":
        planner.run_chain(layers, [], done, "forward", out)
    else:
        # pass one: per-layer CMI and the same cutoff on every layer, each layer pruned alone
        first = _Planner(model, acts, "per-layer", cutoff, settings, ds, device, cache_dir, progress, lambda p: None,
                         scorer=planner.scorer)
        first_decisions = {}
        for layer in layers:
            if layer not in out.first_pass:
                first_decisions[layer] = first.decide(layer, [], "first-pass")
                out.first_pass[layer] = len(first_decisions[layer].kept)
                checkpoint(out)
        start = max(layers, key=lambda l: (1 - out.first_pass[l] / acts.widths[l], -l))
        out.start = start
        if start not in done:
            d = first_decisions.get(start) or first.decide(start, [], "start")
            d.phase = "start"
            out.decisions.append(d)
            done[start] = d
            on_decision(out)
        forward, backward = layers[start + 1:], layers[:start][::-1]
        if one_chain:        # the authors' full CMI: the backward half conditions on the forward half too
            planner.run_chain(forward, [start], done, "forward-half", out)
            planner.run_chain(backward, [start] + forward, done, "backward-half", out)
        elif parallel:
            with ThreadPoolExecutor(2) as pool:
                for f in [pool.submit(planner.run_chain, ls, [start], done, ph, out)
                          for ls, ph in ((forward, "forward-half"), (backward, "backward-half"))]:
                    f.result()
        else:
            planner.run_chain(forward, [start], done, "forward-half", out)
            planner.run_chain(backward, [start], done, "backward-half", out)
        # a stable order whichever half finished first: start, forward half, backward half
        rank_phase = {"start": 0, "forward-half": 1, "backward-half": 2}
        out.decisions.sort(key=lambda d: (rank_phase[d.phase], d.layer if d.phase != "backward-half" else -d.layer))
    bar.close()
    out.complete = True
    out.seconds = time.perf_counter() - t0 + prior_seconds
    if progress_path is not None:
        out.save(progress_path)
    return out, False
