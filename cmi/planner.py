"""Making a pruning plan: CMI formulation x cutoff strategy x direction, under a protocol (docs/method.md §4-§9).

Formulations (what a layer's ranking is conditioned on, Z):
  per-layer  nothing;  compact  the kept maps of the layer pruned just before;
  full       the kept maps of every layer pruned before.
Directions:
  forward        conv1_1 ... conv5_3;
  bidirectional  per-layer CMI + the same cutoff on every layer first; the layer with the highest
                 pruning percentage is the start, then one half goes forward to the last layer and
                 the other backward to the first, each conditioned on its own chain (the halves are
                 independent and run concurrently; the authors' full CMI runs them as one chain).
The ranking is CMI's by default; ``criterion`` names any criterion of :mod:`cmi.criteria`, whose order is
then cut by the same cutoffs (scree and X-Means on its sorted importance values; it is not conditioned).
Feature maps always come from the original network. Candidate cuts are scored by the masked network's
accuracy with the chain's earlier decisions applied, on held-out training images (``paper``) or on
the test set (``authors``, as their code did); :func:`cmi.cutoffs.choose_within_drop` picks one.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from .activations import check_vgg
from .cutoffs import check_keep, choose_within_drop
from .data import seeded_indices
from .evaluation import MaskedScorer
from .models import LAYER_NAMES
from .names import CUTOFFS, DIRECTIONS, FORMULATIONS, Spec, plan_name
from .plans import LayerDecision, Plan, plan_settings
from .protocols import get_protocol
from .ranking import Ranking, cached_ranking
from .store import cache_key, read_cache, save_json


class _Planner:
    """One plan's decisions: ranks a layer (conditioned per the formulation), scores candidate cuts."""

    def __init__(self, run, formulation: str, cutoff: str, criterion: str, settings: dict, on_decision,
                 scorer: MaskedScorer | None = None, progress: bool = False):
        self.run, self.acts, self.settings, self.progress = run, run.acts, settings, progress
        self.formulation, self.cutoff, self.criterion = formulation, cutoff, criterion
        self.protocol = get_protocol(settings["protocol"])
        self.on_decision = on_decision
        self.lock = threading.Lock()
        ds, n_sel, seed = run.ds, settings["select_images"], settings["seed"]
        if self.protocol.choose_on == "test":     # the authors' choice; select_images of them, seeded
            idx = seeded_indices(len(ds.test_y), n_sel, seed)
            x, y = ds.test_x[idx], ds.test_y[idx]
            self.eval_name = f"test[seed {seed}, {len(idx)}]"
        else:
            x = ds.val_x[:n_sel] if n_sel else ds.val_x
            y = ds.val_y[:n_sel] if n_sel else ds.val_y
            self.eval_name = f"val[:{len(y)}]"
        self.scorer = scorer or MaskedScorer(run.model, x, y, ds, device=run.device)

    def rank(self, layer: int, cond: list[tuple[int, list[int]]], desc: str) -> tuple[Ranking, bool]:
        s, run = self.settings, self.run
        if self.criterion != "cmi":
            if self.cutoff == "ptest":
                raise ValueError(f"the permutation-test cutoff cuts CMI rankings only, not {self.criterion!r}")
            from .criteria import get_criterion
            return get_criterion(self.criterion).ranking(run.context, layer, s["seed"]), True
        perm = (s["permutations"], s["eta"]) if self.cutoff == "ptest" else None
        return cached_ranking(self.acts, layer, cond, alpha=s["alpha"], sigma=s["sigma"], permutation=perm,
                              permute_condition=self.protocol.permute_condition,
                              saturation_tol=s["saturation_tol"], seed=s["seed"], cache_dir=run.folder,
                              device=run.device, progress=self.progress, desc=desc)

    def score(self, applied: dict[int, list[int]]) -> float:
        """Accuracy of the masked network with ``applied`` kept channels, cached by content (plans and
        the bi-directional first passes of different formulations share many of these); computed by
        a :class:`cmi.evaluation.MaskedScorer`, which reruns only the layers a candidate cut changes."""
        key = {"model": self.acts.model, "images": self.eval_name,
               "kept": sorted([l, sorted(k)] for l, k in applied.items())}
        folder = self.run.folder
        path = Path(folder) / "scores" / f"{cache_key(key)}.json" if folder is not None else None
        cached = read_cache(path, lambda d: float(d["accuracy"]), "cached score")
        if cached is not None:
            return cached
        acc = self.scorer(applied)
        if path is not None:
            save_json({"accuracy": acc, "images": self.eval_name}, path)
        return acc

    def candidates(self, ranking: Ranking, c: int) -> tuple[list[int], dict[int, list[int]], list[int]]:
        """The ranking's full order, and the candidate keep counts with the channels each keeps."""
        full_order = ranking.order + [j for j in range(c) if j not in ranking.order]
        proto = self.protocol
        counts = proto.cutoffs[self.cutoff](ranking, self.settings["scree_candidates"]) or [c]   # no cut: keep all
        options = {k: proto.kept(full_order[:k], c) for k in counts}
        options = {k: v for k, v in options.items() if v}        # the authors' shift can empty a 1-channel cut
        return full_order, (options or {c: proto.kept(full_order, c)}), counts

    def choose(self, layer: int, options: dict[int, list[int]], applied: dict, c: int):
        """(keep, scores, reference, fell_back) of a layer's candidate cuts, given the chain's ``applied`` cuts."""
        s, candidates = self.settings, list(options)
        if len(candidates) == 1:
            return candidates[0], [], None, False
        scores = [self.score({**applied, layer: options[k]}) for k in candidates]
        reference = None
        if s["max_drop"] is not None:   # from the unpruned network, or from the chain so far
            reference = self.score({} if s["reference"] == "network" else applied)
        keep, fell_back = choose_within_drop(candidates, scores, reference, s["max_drop"], s["tolerance"],
                                             s["fallback"], c)
        return keep, scores, reference, fell_back

    def decide(self, layer: int, chain: list[LayerDecision], phase: str) -> LayerDecision:
        """Rank ``layer`` conditioned on the chain (per the formulation) and pick its cut."""
        name, c = LAYER_NAMES[layer], self.acts.widths[layer]
        cond_layers = self.conditioning([d.layer for d in chain])
        by_layer = {d.layer: d for d in chain}
        t0 = time.perf_counter()
        ranking, cached = self.rank(layer, [(l, by_layer[l].conditioning) for l in cond_layers],
                                    desc=f"{name} ({phase})")
        t1 = time.perf_counter()
        full_order, options, _ = self.candidates(ranking, c)
        prev_only = self.formulation == "compact" and self.protocol.compact_scores_previous_only
        applied = {d.layer: d.kept for d in (chain[-1:] if prev_only else chain)}
        keep, scores, reference, fell_back = self.choose(layer, options, applied, c)
        keep = check_keep(keep, c, name)
        selected = full_order[:keep]
        kept = options.get(keep, self.protocol.kept(selected, c))
        return LayerDecision(layer=layer, name=name, channels=c, keep=keep, kept=kept,
                             condition=[LAYER_NAMES[l] for l in cond_layers], candidates=list(options),
                             scores=scores, phase=phase, ranking=ranking.to_dict(),
                             seconds={"ranking": t1 - t0, "cutoff": time.perf_counter() - t1,
                                      "ranking_cached": cached},
                             selected=None if kept == selected else selected, reference=reference,
                             fallback=fell_back, chosen_on=self.protocol.choose_on if scores else "")

    def conditioning(self, chain: list[int]) -> list[int]:
        if self.formulation == "per-layer" or not chain or self.criterion != "cmi":
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


def _check_spec(spec: Spec) -> Spec:
    if not (isinstance(spec, (tuple, list)) and len(spec) == 3):
        raise ValueError(f"a plan is (formulation, cutoff, direction), got {spec!r}")
    for value, allowed, what in zip(spec, (FORMULATIONS, CUTOFFS, DIRECTIONS), ("formulation", "cutoff", "direction")):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    return tuple(spec)


def _check_criterion(criterion: str, spec: Spec) -> None:
    from .criteria import get_criterion

    get_criterion(criterion)                  # an unknown name: one ValueError naming the known ones
    if criterion != "cmi" and spec[1] == "ptest":
        raise ValueError(f"the permutation-test cutoff cuts CMI rankings only, not {criterion!r}")


def _progress_path(run, settings: dict, name: str) -> Path | None:
    return Path(run.folder) / "plans" / cache_key(settings, 10) / f"{name}.json" if run.folder is not None else None


def _saved(run, spec: Spec, settings: dict, path: Path | None) -> Plan | None:
    """The plan saved at ``path`` (complete or in progress) when it belongs to this run's activations and settings."""
    saved = read_cache(path, Plan.from_dict, "saved plan")
    if saved is not None and (saved.model, saved.settings, saved.widths) == (run.acts.model, settings,
                                                                             list(run.acts.widths)):
        return saved
    return None


def is_cached(run, spec: Spec, criterion: str = "cmi") -> bool:
    """Whether :func:`plan` would load this plan whole from the run's cache (nothing to compute)."""
    settings = plan_settings(run.cfg, criterion)
    saved = _saved(run, spec, settings, _progress_path(run, settings, plan_name(spec)))
    return saved is not None and saved.complete


def plan(run, spec: Spec, *, criterion: str = "cmi", progress: bool = True) -> tuple[Plan, bool]:
    """Make one pruning plan on ``run`` (a :class:`cmi.run.Run`) under its ``prune.protocol``.

    Args:
        spec: ``(formulation, cutoff, direction)``: ``per-layer``, ``compact`` or ``full`` (what each
            ranking is conditioned on); ``scree``, ``xmeans`` or ``ptest``; ``forward`` or ``bidirectional``.
        criterion: the ranking the cutoffs cut: ``cmi`` (default) or any name of :mod:`cmi.criteria`.

    Candidate cuts are scored on the run's held-out split (or ``prune.select_images`` seeded test images
    under the ``authors`` protocol). Rankings (``rankings/``) and candidate scores (``scores/``) are cached
    in ``run.folder`` by content and shared by plans; the plan's progress is saved after every layer
    (``plans/<settings hash>/<name>.json``): an interrupted plan resumes after its last finished layer,
    a finished one is loaded. ``prune.parallel`` runs the two bi-directional halves concurrently (the
    result is the same either way: their rankings take turns, :func:`cmi.entropy.single_thread`).

    Returns:
        ``(plan, loaded)``: ``loaded`` is True when the finished plan came whole from the cache.
    """
    spec = _check_spec(spec)
    _check_criterion(criterion, spec)
    check_vgg(run.model)
    run.acts.check_model(run.model)
    settings = plan_settings(run.cfg, criterion)
    name = plan_name(spec)
    path = _progress_path(run, settings, name)
    saved = _saved(run, spec, settings, path)
    if saved is not None and saved.complete:
        return saved, True
    out = saved or Plan(*spec, list(run.acts.widths), run.acts.model, settings, [])
    t0, prior_seconds = time.perf_counter(), out.seconds
    bar = tqdm(total=len(out.widths), desc=name, disable=not progress, leave=False)
    bar.update(len(out.decisions))

    def checkpoint(p: Plan) -> None:
        p.seconds = time.perf_counter() - t0 + prior_seconds
        if path is not None:
            p.save(path)

    def on_decision(p: Plan) -> None:
        checkpoint(p)
        bar.update(1)

    run.model.eval()
    planner = _Planner(run, spec[0], spec[1], criterion, settings, on_decision, progress=progress)
    done = {d.layer: d for d in out.decisions}
    layers = list(range(len(out.widths)))
    if spec[2] == "forward":
        planner.run_chain(layers, [], done, "forward", out)
    else:
        _bidirectional(planner, out, done, checkpoint, on_decision)
    bar.close()
    out.complete = True
    checkpoint(out)
    return out, False


def _bidirectional(planner: _Planner, out: Plan, done: dict, checkpoint, on_decision) -> None:
    """Pass one: per-layer ranking and the same cutoff on every layer, each pruned alone; the layer
    pruned most is the start; then the forward and backward halves (concurrently, unless the
    protocol's full CMI makes them one chain)."""
    run, layers = planner.run, list(range(len(out.widths)))
    first = _Planner(run, "per-layer", planner.cutoff, planner.criterion, planner.settings, lambda p: None,
                     scorer=planner.scorer, progress=planner.progress)
    first_decisions = {}
    for layer in layers:
        if layer not in out.first_pass:
            first_decisions[layer] = first.decide(layer, [], "first-pass")
            out.first_pass[layer] = len(first_decisions[layer].kept)
            checkpoint(out)
    start = max(layers, key=lambda l: (1 - out.first_pass[l] / out.widths[l], -l))
    out.start = start
    if start not in done:
        d = first_decisions.get(start) or first.decide(start, [], "start")
        d.phase = "start"
        out.decisions.append(d)
        done[start] = d
        on_decision(out)
    forward, backward = layers[start + 1:], layers[:start][::-1]
    parallel = run.cfg.prune.parallel and ((os.cpu_count() or 1) > 1 or run.device.type == "cuda")
    if out.formulation == "full" and planner.protocol.full_bidirectional_one_chain:
        # the authors' full CMI: the backward half conditions on the forward half too
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
