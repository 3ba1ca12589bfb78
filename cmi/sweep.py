"""The pruning study of a config: every plan of ``cfg.prune`` made on one run, evaluated, tabulated.

    python -m cmi sweep --profile quick

Plans come from :func:`cmi.run.make_plans`, evaluations from :func:`cmi.evaluation.evaluate` with the
sweep's budget (:func:`cmi.evaluation.sweep_budget`: the whole test split; ``prune.finetune_epochs``
over the whole training split), all cached in the run's folder. This setting's tables go to
:attr:`cmi.run.Run.tables`: ``results.csv`` (one row per plan plus the baseline), ``layers.csv``
(kept filters per layer and plan, tidy), ``timings.json`` (the costs when computed), ``config.yaml``.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .evaluation import evaluate, evaluation_path, sweep_budget
from .models import LAYER_NAMES
from .plans import Plan
from .report import model_cost
from .run import Run, make_plans, plan_specs, prepare_run
from .store import atomic_write_text, cache_key, read_cache, save_config, save_json, with_keys
from .surgery import remove_channels
from .device import hardware_name

RESULT_COLUMNS = ["plan", "formulation", "cutoff", "direction", "filters_kept", "filters_total",
                  "pruning_efficiency", "params", "macs", "latency_b1_ms", "latency_b1_iqr_ms", "latency_b256_ms",
                  "latency_b256_iqr_ms", "latency_threads", "acc_baseline",
                  "acc_masked", "acc_removed", "acc_finetuned", "plan_seconds", "finetune_seconds"]
LAYER_COLUMNS = ["plan", "formulation", "cutoff", "direction", "layer", "name", "channels", "kept",
                 "kept_fraction", "phase", "condition"]
#: Parts of the study by their label in the timing table.
TIMING_PARTS = {"baseline training": "baseline", "activation capture": "capture", "CMI rankings": "ranking",
                "cutoffs (scoring candidate cuts)": "cutoff", "evaluation (masked, removed, cost)": "evaluation",
                "fine-tuning": "finetune", "plans (rankings + cutoffs, wall)": "plans_wall",
                "whole sweep call": "total"}


@dataclass
class SweepResult:
    rows: list[dict]
    layers: list[dict]
    plans: dict[str, Plan]
    timings: dict                                  #: seconds of this call's work
    run: Run
    recorded: dict = field(default_factory=dict)   #: timings.json: the costs when last computed

    @property
    def baseline(self) -> dict:
        return self.run.baseline.metrics

    def timing_rows(self) -> list[dict]:
        """Seconds per part of the study, as computed (``recorded``) and in this call."""
        computed = dict(self.recorded)
        computed["baseline"] = self.baseline.get("train_seconds", computed.get("baseline"))
        capture = read_cache(self.run.folder / "capture.json", lambda d: float(d["seconds"]), "capture record")
        if capture is not None:
            computed["capture"] = capture
        return [{"part": label, "seconds when computed": computed.get(key), "seconds this run": self.timings.get(key)}
                for label, key in TIMING_PARTS.items()]


def layer_rankings(cfg: Config, alpha: float | None = None, permutation: bool = False,
                   progress: bool = True) -> list:
    """Per-layer CMI rankings (no conditioning) of all 13 layers of the baseline, cached."""
    from .ranking import cached_ranking

    run = prepare_run(cfg, progress)
    alpha = cfg.cmi.alpha if alpha is None else alpha
    perm = (cfg.cmi.permutations, cfg.cmi.eta) if permutation else None
    return [cached_ranking(run.acts, layer, [], alpha=alpha, sigma=cfg.cmi.sigma, permutation=perm, seed=cfg.seed,
                           saturation_tol=cfg.cmi.saturation_tol, cache_dir=run.folder, device=run.device,
                           progress=progress, desc=name)[0]
            for layer, name in enumerate(LAYER_NAMES)]


def _write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def cached_cost(run: Run, kept: dict[int, list[int]] | None) -> dict:
    """:func:`cmi.report.model_cost` of the baseline (``kept`` None) or of it pruned to ``kept``, cached."""
    name = "baseline" if kept is None else cache_key(sorted([l, sorted(k)] for l, k in kept.items()))
    path = run.folder / "evals" / f"cost-{name}.json" if run.folder is not None else None
    cost = read_cache(path, with_keys("params", "macs", "latency_b1_ms"), "cached cost")
    if cost is None:
        cost = model_cost(run.model if kept is None else remove_channels(run.model, kept), run.cfg.prune.latency_seconds)
        if path is not None:
            save_json(cost, path)
    return cost


def _plan_rows(p: Plan, run: Run, ev: dict) -> tuple[dict, list[dict]]:
    spec = {"plan": p.name, "formulation": p.formulation, "cutoff": p.cutoff, "direction": p.direction}
    row = {**spec, "filters_kept": p.filters_kept, "filters_total": p.filters_total,
           "pruning_efficiency": p.efficiency, "acc_baseline": run.baseline.metrics["test_accuracy"],
           "plan_seconds": p.seconds, "acc_finetuned": None, "finetune_seconds": 0.0, **ev,
           **cached_cost(run, p.kept_channels())}
    by_layer, counts = p.by_layer(), p.keep_counts()
    layers = []
    for i, c in enumerate(p.widths):
        d = by_layer.get(i)
        layers.append({**spec, "layer": i, "name": LAYER_NAMES[i], "channels": c, "kept": counts[i],
                       "kept_fraction": counts[i] / c, "phase": d.phase if d else "",
                       "condition": " ".join(d.condition) if d else ""})
    return row, layers


def run_sweep(cfg: Config, *, progress: bool = True) -> SweepResult:
    """Make (or load) every plan of ``cfg.prune``, evaluate each and write ``results.csv`` and ``layers.csv``.

    ``timings`` (seconds) counts the work done by this call; ``timings.json`` keeps those of the last
    call that computed something, so a fully cached rerun does not overwrite the real costs."""
    t_all = time.perf_counter()
    run = prepare_run(cfg, progress)
    save_config(cfg, run.tables / "config.yaml")
    timings = {**run.timings, "ranking": 0.0, "cutoff": 0.0, "evaluation": 0.0, "finetune": 0.0}
    t0 = time.perf_counter()
    made = make_plans(run, plan_specs(cfg), progress=progress)
    timings["plans_wall"] = time.perf_counter() - t0
    for p in made.plans:
        if p.name in made.computed:
            timings["ranking"] += sum(d.seconds.get("ranking", 0.0) for d in p.decisions)
            timings["cutoff"] += sum(d.seconds.get("cutoff", 0.0) for d in p.decisions)
    modes = ("masked", "removed") + (("finetuned",) if cfg.prune.finetune_epochs > 0 else ())
    budget = sweep_budget(cfg)
    acc = run.baseline.metrics["test_accuracy"]
    total = sum(run.acts.widths)
    rows = [{"plan": "baseline", "filters_kept": total, "filters_total": total, "pruning_efficiency": 0.0,
             "acc_baseline": acc, "acc_masked": acc, "acc_removed": acc, **cached_cost(run, None)}]
    layer_rows, computed = [], bool(made.computed)
    for p in made.plans:
        kept = p.kept_channels()
        fresh = not evaluation_path(run, kept, modes, budget).is_file()
        ev = evaluate(run, kept, modes, budget, save_finetuned=True)
        if fresh:
            computed = True
            timings["evaluation"] += ev["seconds"] - ev.get("finetune_seconds", 0.0)
            timings["finetune"] += ev.get("finetune_seconds", 0.0)
        row, layers = _plan_rows(p, run, {k: v for k, v in ev.items() if k.startswith("acc_") or k == "finetune_seconds"})
        rows.append(row)
        layer_rows += layers
    timings["total"] = time.perf_counter() - t_all
    _write_csv(rows, RESULT_COLUMNS, run.tables / "results.csv")
    _write_csv(layer_rows, LAYER_COLUMNS, run.tables / "layers.csv")
    recorded = None if computed else read_cache(run.tables / "timings.json", lambda d: dict(d["timings"]),
                                                "timings record")
    if recorded is None:
        save_json({"timings": timings, "device": str(run.device), "hardware": hardware_name(run.device),
                   "profile": cfg.profile, "dataset": cfg.data.name}, run.tables / "timings.json")
        recorded = timings
    return SweepResult(rows, layer_rows, {p.name: p for p in made.plans}, timings, run, recorded)

