"""The whole pruning study of a config: baseline, activations, every plan, evaluation, tables.

    python -m cmi sweep --profile quick

Everything expensive is cached under ``<artifacts>/cmi/<hash>/`` (the hash covers data, model,
training, seed and the number of CMI samples): ``activations.pt``, ``rankings/`` (shared by all
plans), ``plans/`` (each plan, resumable), ``evals/`` (accuracy, cost and fine-tuned weights per
plan). The tables of one setting of the training, CMI and pruning sections go to
``runs/<hash>/`` (:func:`run_dir`), so sweeps with other settings never overwrite each other's:
``results.csv`` (one row per plan plus the baseline), ``layers.csv`` (kept filters per layer and
plan, tidy), ``timings.json`` (the costs when computed) and ``config.yaml``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from .activations import Activations, capture
from .config import Config, save_config
from .data import load_dataset
from .models import LAYER_NAMES
from .planner import cached_ranking, plan
from .plans import Plan, PlanSettings
from .report import model_cost
from .store import atomic_write_text, cache_key, read_cache, save_json, stage_dir, with_keys
from .surgery import mask_model, remove_channels, save_pruned
from .train import evaluate, fit, hardware_name, resolve_device, train_baseline

RESULT_COLUMNS = ["plan", "formulation", "cutoff", "direction", "filters_kept", "filters_total",
                  "pruning_efficiency", "params", "macs", "latency_b1_ms", "latency_b1_iqr_ms", "latency_b256_ms",
                  "latency_b256_iqr_ms", "latency_threads", "acc_baseline",
                  "acc_masked", "acc_removed", "acc_finetuned", "plan_seconds", "finetune_seconds"]
LAYER_COLUMNS = ["plan", "formulation", "cutoff", "direction", "layer", "name", "channels", "kept",
                 "kept_fraction", "phase", "condition"]


@dataclass
class SweepResult:
    rows: list[dict]
    layers: list[dict]
    plans: dict[str, Plan]
    timings: dict
    folder: Path                                   #: the cache shared by every setting (sweep_dir)
    baseline: dict = field(default_factory=dict)
    recorded: dict = field(default_factory=dict)   #: timings.json: the costs when last computed
    run: Path | None = None                        #: this setting's tables (run_dir)

    def timing_rows(self) -> list[dict]:
        """Seconds per part of the study, as computed (``recorded``) and in this call."""
        parts = {"baseline training": "baseline", "activation capture": "capture", "CMI rankings": "ranking",
                 "cutoffs (scoring candidate cuts)": "cutoff", "evaluation (masked, removed, cost)": "evaluation",
                 "fine-tuning": "finetune", "plans (rankings + cutoffs, wall)": "plans_wall",
                 "whole sweep call": "total"}
        computed = dict(self.recorded)
        computed["baseline"] = self.baseline.get("train_seconds", computed.get("baseline"))
        capture = read_cache(self.folder / "capture.json", lambda d: float(d["seconds"]), "capture record")
        if capture is not None:
            computed["capture"] = capture
        return [{"part": label, "seconds when computed": computed.get(key), "seconds this run": self.timings.get(key)}
                for label, key in parts.items()]


def sweep_dir(cfg: Config) -> Path:
    return stage_dir("cmi", cfg.digest("data", "model", "train", "cmi.n_samples"))


def run_dir(cfg: Config) -> Path:
    """Where the tables of ``cfg``'s sweep go: one folder per setting of the sections they depend
    on (training, CMI, pruning) inside :func:`sweep_dir`."""
    return sweep_dir(cfg) / "runs" / cfg.digest("train", "cmi", "prune")


def _adopt_legacy_tables(cfg: Config, folder: Path, run: Path) -> None:
    """Sweeps before :func:`run_dir` wrote their tables into the cache folder itself; move them
    into this setting's folder when the config saved beside them is this one."""
    legacy = folder / "config.yaml"
    if (run / "timings.json").exists() or not (folder / "timings.json").is_file() or not legacy.is_file():
        return
    try:
        old = yaml.safe_load(legacy.read_text())
    except yaml.YAMLError:
        return
    new = yaml.safe_load(cfg.to_yaml())
    if isinstance(old, dict) and all(old.get(k) == new[k] for k in ("seed", "train", "cmi", "prune")):
        run.mkdir(parents=True, exist_ok=True)
        for name in ("results.csv", "layers.csv", "timings.json"):
            if (folder / name).is_file():
                os.replace(folder / name, run / name)


def plan_names(cfg: Config) -> list[tuple[str, str, str]]:
    p = cfg.prune
    return list(itertools.product(p.formulations, p.cutoffs, p.directions))


def load_or_capture(cfg: Config, model, ds, folder: Path, device) -> tuple[Activations, bool]:
    path = folder / "activations.pt"
    if path.is_file():
        acts = Activations.load(path)
        acts.check_model(model)
        return acts, True
    t0 = time.perf_counter()
    acts = capture(model, ds, n=cfg.cmi.n_samples, seed=cfg.seed, device=device)
    model.cpu()
    acts.save(path)
    save_json({"seconds": time.perf_counter() - t0, "images": cfg.cmi.n_samples}, folder / "capture.json")
    return acts, False


def _write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _finetune_key(cfg: Config) -> str:
    return cache_key({"epochs": cfg.prune.finetune_epochs, "lr": cfg.prune.finetune_lr,
                      "train": dataclasses.asdict(cfg.train), "plan": PlanSettings.from_config(cfg).to_dict()},
                     10)


#: The newest key of :func:`cmi.report.model_cost`: a cached evaluation without it is re-costed.
COST_KEY = "latency_b1_iqr_ms"


def evaluate_plan(cfg: Config, p: Plan, base_model, ds, folder: Path, device, progress: bool) -> tuple[dict, bool]:
    """Masked / removed / fine-tuned test accuracy and the removed model's cost, cached per plan;
    returns ``(row, computed)``, ``computed`` False when the row was loaded from the cache."""
    path = folder / "evals" / _finetune_key(cfg) / f"{p.name}.json"
    cached = read_cache(path, with_keys("acc_masked"), "cached plan evaluation")
    if cached is not None:
        if COST_KEY not in cached:      # evaluated before latencies had their IQR: measure the cost again
            cached.update(model_cost(remove_channels(base_model, p)))
            save_json(cached, path)
        return cached, False
    test = lambda m: evaluate(m, ds.test_x, ds.test_y, ds, device=device)["accuracy"]  # noqa: E731
    row = {"acc_masked": test(mask_model(base_model, p))}
    removed = remove_channels(base_model, p)
    row["acc_removed"] = test(removed)
    row.update(model_cost(removed))
    row["acc_finetuned"], row["finetune_seconds"] = None, 0.0
    if cfg.prune.finetune_epochs > 0:
        t0 = time.perf_counter()
        tcfg = dataclasses.replace(cfg.train, epochs=cfg.prune.finetune_epochs, lr=cfg.prune.finetune_lr,
                                   warmup_epochs=0.0)
        fit(removed, ds, tcfg, seed=cfg.seed, device=device, augment_images=cfg.data.augment,
            progress=progress, eval_each_epoch=False)
        row["finetune_seconds"] = time.perf_counter() - t0
        row["acc_finetuned"] = test(removed)
        save_pruned(removed.cpu(), p, path.with_suffix(".pt"))
    save_json(row, path)
    return row, True


def prepare(cfg: Config, progress: bool = True, timings: dict | None = None):
    """Baseline (trained or cached), dataset, sweep folder and activations (captured or cached)."""
    timings = {} if timings is None else timings
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    base = train_baseline(cfg, progress=progress)
    timings["baseline"] = time.perf_counter() - t0
    ds = load_dataset(cfg)
    folder, run = sweep_dir(cfg), run_dir(cfg)
    _adopt_legacy_tables(cfg, folder, run)
    save_config(cfg, run / "config.yaml")
    t0 = time.perf_counter()
    acts, _ = load_or_capture(cfg, base.model, ds, folder, device)
    timings["capture"] = time.perf_counter() - t0
    return base, ds, folder, acts, device


def layer_rankings(cfg: Config, alpha: float | None = None, permutation: bool = False,
                   progress: bool = True) -> list:
    """Per-layer CMI rankings (no conditioning) of all 13 layers of the baseline, cached."""
    base, ds, folder, acts, device = prepare(cfg, progress)
    alpha = cfg.cmi.alpha if alpha is None else alpha
    perm = (cfg.cmi.permutations, cfg.cmi.eta) if permutation else None
    return [cached_ranking(acts, layer, [], alpha=alpha, sigma=cfg.cmi.sigma, permutation=perm, seed=cfg.seed,
                           saturation_tol=cfg.cmi.saturation_tol,
                           cache_dir=folder, device=device, progress=progress, desc=name)[0]
            for layer, name in enumerate(LAYER_NAMES)]


def run_sweep(cfg: Config, *, progress: bool = True) -> SweepResult:
    """Run (or load) every plan of ``cfg.prune`` and write ``results.csv`` and ``layers.csv``.

    ``timings`` (seconds) counts the work done by this call; ``timings.json`` keeps those of the last
    call that computed something, so a fully cached rerun does not overwrite the real costs."""
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    base, ds, folder, acts, device = prepare(cfg, progress, timings)

    settings = PlanSettings.from_config(cfg)
    plans: dict[str, Plan] = {}
    rows: list[dict] = []
    layer_rows: list[dict] = []
    timings.update({"ranking": 0.0, "cutoff": 0.0, "evaluation": 0.0, "finetune": 0.0, "plans_wall": 0.0})
    cost_path = folder / "evals" / "baseline_cost.json"
    cost = read_cache(cost_path, with_keys(COST_KEY), "cached baseline cost")
    if cost is None:
        cost = model_cost(base.model)
        save_json(cost, cost_path)
    baseline_row = {"plan": "baseline", "filters_kept": sum(acts.widths), "filters_total": sum(acts.widths),
                    "pruning_efficiency": 0.0, "acc_baseline": base.metrics["test_accuracy"],
                    "acc_masked": base.metrics["test_accuracy"], "acc_removed": base.metrics["test_accuracy"],
                    **cost}
    rows.append(baseline_row)
    specs = plan_names(cfg)
    computed = False
    for formulation, cutoff, direction in tqdm(specs, desc="plans", disable=not progress):
        t0 = time.perf_counter()
        p, loaded = plan(base.model, acts, formulation=formulation, cutoff=cutoff, direction=direction, ds=ds,
                         settings=settings, device=device, cache_dir=folder, progress=progress,
                         parallel=cfg.prune.parallel)
        timings["plans_wall"] += time.perf_counter() - t0
        if not loaded:   # computed (or resumed) in this run
            computed = True
            for d in p.decisions:
                timings["ranking"] += d.seconds.get("ranking", 0.0)
                timings["cutoff"] += d.seconds.get("cutoff", 0.0)
        plans[p.name] = p
        t0 = time.perf_counter()
        ev, ev_computed = evaluate_plan(cfg, p, base.model, ds, folder, device, progress)
        if ev_computed:
            computed = True
            timings["evaluation"] += time.perf_counter() - t0 - ev.get("finetune_seconds", 0.0)
            timings["finetune"] += ev.get("finetune_seconds", 0.0)
        rows.append({"plan": p.name, "formulation": formulation, "cutoff": cutoff, "direction": direction,
                     "filters_kept": p.filters_kept, "filters_total": p.filters_total,
                     "pruning_efficiency": p.efficiency, "acc_baseline": base.metrics["test_accuracy"],
                     "plan_seconds": p.seconds, **ev})
        by_layer, counts = p.by_layer(), p.keep_counts()
        for i, c in enumerate(p.widths):
            d = by_layer.get(i)
            layer_rows.append({"plan": p.name, "formulation": formulation, "cutoff": cutoff, "direction": direction,
                               "layer": i, "name": LAYER_NAMES[i], "channels": c, "kept": counts[i],
                               "kept_fraction": counts[i] / c, "phase": d.phase if d else "",
                               "condition": " ".join(d.condition) if d else ""})
    timings["total"] = time.perf_counter() - t_all
    run = run_dir(cfg)
    _write_csv(rows, RESULT_COLUMNS, run / "results.csv")
    _write_csv(layer_rows, LAYER_COLUMNS, run / "layers.csv")
    recorded = None if computed else read_cache(run / "timings.json", lambda d: dict(d["timings"]), "timings record")
    if recorded is None:
        save_json({"timings": timings, "device": str(device), "hardware": hardware_name(device),
                   "profile": cfg.profile, "dataset": cfg.data.name}, run / "timings.json")
        recorded = timings
    return SweepResult(rows, layer_rows, plans, timings, folder, base.metrics, recorded, run)
