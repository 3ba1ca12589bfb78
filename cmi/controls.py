"""Does the CMI ranking choose better filters than a trivial rule? The controls study (METHOD.md §7-§10).

Three measurements on one trained baseline, every result cached by content under the sweep folder
(``controls/``), so an interrupted study resumes and a rerun only reads files:

- :func:`plan_controls`: for every plan of each protocol, keep exactly its per-layer kept counts and
  let each criterion (:mod:`cmi.criteria`) pick which channels; random over several seeds. Each
  pruned network is evaluated in four modes (:data:`MODES`).
- :func:`sensitivity`: each layer pruned alone to a range of kept fractions by each criterion
  (Li et al. 2017, Fig. 2), masked and removed + BN recalibration.
- :func:`saturation`: per layer and kernel-width rule, the greedy pick after which CMI_t is zero
  (relative to I(Y; L)), i.e. where further picks are decided by round-off (METHOD.md §10).

Modes: ``masked`` the paper's (pruned filters zeroed, BN untouched); ``removed`` Torch-Pruning's
smaller network; ``recalibrated`` removed + BN running statistics re-estimated on training images,
no gradient step; ``finetuned`` recalibrated + one epoch over a fixed subset of training images (the
same budget for every criterion).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .config import MODES, Config
from .criteria import Context, get_criterion
from .data import seeded_indices
from .models import LAYER_NAMES
from .planner import cached_ranking, is_cached, plan
from .plans import Plan, PlanSettings
from .protocols import get_protocol, protocol_names
from .store import cache_key, read_cache, save_json, with_keys
from .surgery import mask_model, recalibrate_bn, remove_channels
from .train import evaluate, fit



@dataclass
class Study:
    cfg: Config
    model: torch.nn.Module
    ds: object
    folder: Path
    acts: object
    device: torch.device
    baseline: dict

    @functools.cached_property
    def ctx(self) -> Context:
        return Context(self.model, self.acts, alpha=self.cfg.cmi.alpha, seed=self.cfg.seed,
                       cache_dir=self.folder, device=self.device, saturation_tol=self.cfg.cmi.saturation_tol)


def prepare_study(cfg: Config, progress: bool = True) -> Study:
    from .sweep import prepare
    base, ds, folder, acts, device = prepare(cfg, progress)
    return Study(cfg, base.model.cpu().eval(), ds, folder, acts, device, base.metrics)


def evaluate_kept(study: Study, kept: dict[int, list[int]], modes=MODES, test_images: int | None = None,
                  recal_images: int | None = None) -> dict:
    """Test accuracy of the baseline pruned to ``kept`` ({layer: kept channels}) in each of ``modes``,
    cached by content. ``test_images``: a seeded draw of that many test images (None: all);
    ``recal_images``: training images that recalibrate BN (default ``controls.recal_images``)."""
    cfg, ds, c = study.cfg, study.ds, study.cfg.controls
    recal_images = recal_images or c.recal_images
    ft = {"images": c.finetune_images, "lr": cfg.prune.finetune_lr, "train": dataclasses.asdict(cfg.train),
          "augment": cfg.data.augment} if "finetuned" in modes else None
    key = {"model": study.acts.model, "kept": sorted([int(l), sorted(k)] for l, k in kept.items()),
           "modes": list(modes), "test_images": test_images, "recal_images": recal_images, "finetune": ft,
           "seed": cfg.seed}
    path = study.folder / "controls" / "evals" / f"{cache_key(key)}.json"
    cached = read_cache(path, with_keys("filters_kept", "seconds"), "cached evaluation")
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    idx = seeded_indices(len(ds.test_y), test_images, cfg.seed)
    tx, ty = ds.test_x[idx], ds.test_y[idx]

    def test(m):
        return evaluate(m, tx, ty, ds, device=study.device)["accuracy"]

    out: dict = {}
    if "masked" in modes:
        out["acc_masked"] = test(mask_model(study.model, kept))
    if {"removed", "recalibrated", "finetuned"} & set(modes):
        removed = remove_channels(study.model, kept)
        if "removed" in modes:
            out["acc_removed"] = test(removed)
        recal_x = ds.train_x[seeded_indices(len(ds.train_y), recal_images, cfg.seed + 1)]
        recalibrate_bn(removed, recal_x, ds.normalize, device=study.device)
        if "recalibrated" in modes:
            out["acc_recalibrated"] = test(removed)
        if "finetuned" in modes:
            fidx = seeded_indices(len(ds.train_y), c.finetune_images, cfg.seed + 2)
            sub = dataclasses.replace(ds, train_x=ds.train_x[fidx], train_y=ds.train_y[fidx])
            tcfg = dataclasses.replace(cfg.train, epochs=1, lr=cfg.prune.finetune_lr, warmup_epochs=0.0)
            fit(removed, sub, tcfg, seed=cfg.seed, device=study.device, augment_images=cfg.data.augment,
                progress=False, eval_each_epoch=False)
            out["acc_finetuned"] = test(removed)
    out["filters_kept"] = sum(len(k) for k in kept.values()) + sum(
        w for l, w in enumerate(study.acts.widths) if l not in kept)
    out["seconds"] = time.perf_counter() - t0
    save_json(out, path)
    return out


def criterion_kept(study: Study, criterion: str, counts: list[int], plan_: Plan | None = None,
                   seed: int = 0) -> dict[int, list[int]]:
    """What ``criterion`` keeps at the per-layer ``counts`` (layers at full width are left out)."""
    crit = get_criterion(criterion)
    decisions = plan_.by_layer() if plan_ is not None else {}
    return {l: crit.select(study.ctx, l, k, decisions.get(l), seed)
            for l, (k, w) in enumerate(zip(counts, study.acts.widths)) if k < w}


def protocol_plans(study: Study, protocol: str, progress: bool = True, only=None) -> list[Plan]:
    """Every plan of ``cfg.prune`` that ``protocol`` defines (the authors' code defines nine), or of
    those the ones in ``only`` ((formulation, cutoff, direction) triples), computed, resumed or loaded
    from the cache; the permutation-test plans are computed last (the slowest), the list is returned
    in the canonical order."""
    cfg = study.cfg.replace({"prune.protocol": protocol})
    settings = PlanSettings.from_config(cfg)
    p = cfg.prune
    defined = get_protocol(protocol).plans
    specs = [s for s in itertools.product(p.formulations, p.cutoffs, p.directions)
             if (defined is None or s in defined) and (only is None or s in only)]
    ordered = sorted(specs, key=lambda s: s[1] == "ptest")
    todo = ([s for s in ordered if not is_cached(study.acts, *s, settings, study.folder)]
            if _plan_workers(study) > 1 else [])
    if len(todo) > 2:
        # the first plan alone (it ranks the per-layer sets the others share), then the rest in processes
        precompute_plans(study, [(protocol, s) for s in todo[1:]], first=(protocol, todo[0]), progress=progress)
    made = {}
    for formulation, cutoff, direction in ordered:
        made[formulation, cutoff, direction], _ = plan(
            study.model, study.acts, formulation=formulation, cutoff=cutoff, direction=direction, ds=study.ds,
            settings=settings, device=study.device, cache_dir=study.folder, progress=progress, parallel=p.parallel)
    return [made[s] for s in specs]


def _plan_workers(study: Study) -> int:
    """Processes that compute plans side by side: 2 on a multi-core CPU (a plan's eigendecompositions
    run on one thread), else 1."""
    return 2 if study.device.type == "cpu" and (os.cpu_count() or 1) > 1 else 1


_WORKER: dict = {}


def _worker_init(cfg: Config, threads: int) -> None:
    torch.set_num_threads(threads)           # the parent's: a plan's arithmetic must not depend on where it ran
    _WORKER["study"] = prepare_study(cfg, progress=False)


def _worker_plan(protocol: str, spec: tuple[str, str, str]) -> None:
    _plan_one(_WORKER["study"], protocol, spec)


def _plan_one(study: Study, protocol: str, spec: tuple[str, str, str]) -> None:
    cfg = study.cfg.replace({"prune.protocol": protocol})
    formulation, cutoff, direction = spec
    plan(study.model, study.acts, formulation=formulation, cutoff=cutoff, direction=direction, ds=study.ds,
         settings=PlanSettings.from_config(cfg), device=study.device, cache_dir=study.folder, progress=False,
         parallel=cfg.prune.parallel)


def precompute_plans(study: Study, jobs: list[tuple[str, tuple[str, str, str]]], first=None,
                     progress: bool = True) -> None:
    """Compute the plans ``jobs`` ((protocol, (formulation, cutoff, direction))) into the cache, two at a
    time in worker processes (each loads the study from the cache); ``first``, a job, is computed
    before the others start, here. The plans are the ones :func:`cmi.planner.plan` computes in this
    process, bit for bit: every worker runs with this process's thread count, and each plan's arithmetic
    depends only on its inputs and that count (the test compares them)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    if first is not None:
        _plan_one(study, *first)
    if not jobs:
        return
    # the likely slowest first, so that neither process is left with a long plan at the end
    jobs = sorted(jobs, key=lambda j: (j[1][0] == "per-layer", j[1][1] != "ptest", j[1][0] != "full"))
    try:
        with ProcessPoolExecutor(_plan_workers(study), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(study.cfg, torch.get_num_threads())) as pool:
            futures = [pool.submit(_worker_plan, proto, spec) for proto, spec in jobs]
            for f in tqdm(as_completed(futures), total=len(futures), desc="plans (2 processes)",
                          disable=not progress):
                f.result()
    except BrokenProcessPool as e:   # e.g. a script without `if __name__ == "__main__":` (spawn re-runs it)
        warnings.warn(f"the plan worker processes stopped ({e}); the remaining plans are computed in this "
                      "process. A script that calls this needs an `if __name__ == '__main__':` guard.",
                      RuntimeWarning, stacklevel=2)


def study_plans(study: Study, progress: bool = True) -> list[tuple[str, Plan]]:
    """(protocol, plan) for every plan of every protocol in ``controls.protocols``."""
    return [(proto, p) for proto in study.cfg.controls.protocols for p in protocol_plans(study, proto, progress)]


def plan_controls(study: Study, progress: bool = True, plans: list[tuple[str, Plan]] | None = None) -> list[dict]:
    """One row per protocol x plan x criterion x seed: filters kept and accuracy in every mode.
    ``plans``: :func:`study_plans` when already loaded."""
    c = study.cfg.controls
    plans = study_plans(study, progress) if plans is None else plans
    jobs = [(proto, p, crit, seed) for proto, p in plans for crit in c.criteria
            for seed in (range(c.seeds) if get_criterion(crit).seeded else [0])]
    rows = []
    for proto, p, crit, seed in tqdm(jobs, desc="controls", disable=not progress):
        counts = p.keep_counts()
        kept = criterion_kept(study, crit, counts, p, seed)
        ev = evaluate_kept(study, kept, modes=c.modes, test_images=c.test_images)
        assert ev["filters_kept"] == sum(counts), (p.name, crit)
        rows.append({"protocol": proto, "plan": p.name, "formulation": p.formulation, "cutoff": p.cutoff,
                     "direction": p.direction, "criterion": crit, "seed": seed, "filters_kept": sum(counts),
                     "filters_total": p.filters_total, **{f"acc_{m}": ev.get(f"acc_{m}") for m in MODES},
                     "seconds": ev["seconds"]})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sd over seeds per protocol x plan x criterion, and CMI's rank (1 = most accurate)
    among the criteria in each mode; ties share the better rank."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["protocol"], r["plan"], r["criterion"]), []).append(r)
    out = []
    for (proto, name, crit), rs in groups.items():
        row = {"protocol": proto, "plan": name, "criterion": crit, "seeds": len(rs),
               "filters_kept": rs[0]["filters_kept"], "filters_total": rs[0]["filters_total"]}
        for m in MODES:
            vals = [r[f"acc_{m}"] for r in rs if r.get(f"acc_{m}") is not None]
            row[f"{m}_mean"] = statistics.fmean(vals) if vals else None
            row[f"{m}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None
        out.append(row)
    for r in out:
        for m in MODES:
            peers = [o[f"{m}_mean"] for o in out if (o["protocol"], o["plan"]) == (r["protocol"], r["plan"])
                     and o[f"{m}_mean"] is not None]
            r[f"{m}_rank"] = (1 + sum(v > r[f"{m}_mean"] for v in peers)) if r[f"{m}_mean"] is not None else None
    return out


def wide_table(summary: list[dict], mode: str, criteria: tuple[str, ...]) -> list[dict]:
    """One row per protocol x plan: accuracy (%) in ``mode`` of each criterion as 'mean ± sd', and
    CMI's rank among them."""
    by = {}
    for r in summary:
        by.setdefault((r["protocol"], r["plan"]), {})[r["criterion"]] = r
    rows = []
    for (proto, name), crits in by.items():
        first = next(iter(crits.values()))
        row = {"protocol": proto, "plan": name, "filters kept": f"{first['filters_kept']} / {first['filters_total']}"}
        for crit in criteria:
            r = crits.get(crit)
            if r is None or r[f"{mode}_mean"] is None:
                row[crit] = ""
                continue
            sd = f" ± {100 * r[f'{mode}_sd']:.2f}" if r["seeds"] > 1 else ""
            row[crit] = f"{100 * r[f'{mode}_mean']:.2f}{sd}"
        cmi = crits.get("cmi")
        row["cmi rank"] = f"{cmi[f'{mode}_rank']} / {len(crits)}" if cmi and cmi[f"{mode}_rank"] else ""
        rows.append(row)
    return rows


def verdict_table(summary: list[dict], criteria: tuple[str, ...]) -> list[dict]:
    """Per protocol x mode, over all plans: each criterion's mean accuracy (%), CMI's mean rank, and on
    how many plans CMI is more accurate than each other criterion (random: than its seed mean plus one
    sd, so a win is beyond the seeds' spread)."""
    rows = []
    for proto in dict.fromkeys(r["protocol"] for r in summary):
        part = [r for r in summary if r["protocol"] == proto]
        plans = list(dict.fromkeys(r["plan"] for r in part))
        by = {(r["plan"], r["criterion"]): r for r in part}
        for m in MODES:
            if all(r[f"{m}_mean"] is None for r in part):
                continue
            row = {"protocol": proto, "mode": m, "plans": len(plans)}
            for crit in criteria:
                vals = [by[p, crit][f"{m}_mean"] for p in plans if (p, crit) in by]
                row[f"{crit} mean (%)"] = round(100 * statistics.fmean(vals), 2) if vals else None
            ranks = [by[p, "cmi"][f"{m}_rank"] for p in plans if (p, "cmi") in by]
            row["cmi mean rank"] = round(statistics.fmean(ranks), 2) if ranks else None
            for crit in criteria:
                if crit == "cmi":
                    continue
                wins = 0
                for p in plans:
                    a, b = by.get((p, "cmi")), by.get((p, crit))
                    if a and b and a[f"{m}_mean"] is not None:
                        wins += a[f"{m}_mean"] > b[f"{m}_mean"] + (b[f"{m}_sd"] or 0.0)
                row[f"cmi > {crit} (plans)"] = wins
            rows.append(row)
    return rows


def kept_counts_table(plans: list[tuple[str, Plan]]) -> list[dict]:
    """Per protocol x plan (:func:`study_plans`): kept filters per layer, how they were chosen, and the
    fallbacks taken."""
    return [{"protocol": proto, "plan": p.name, **dict(zip(LAYER_NAMES, p.keep_counts())),
             "filters kept": p.filters_kept, "pruned (%)": round(100 * p.efficiency, 1),
             "chosen on": ", ".join(sorted({d.chosen_on for d in p.decisions if d.chosen_on})) or "-",
             "fallbacks": sum(d.fallback for d in p.decisions)} for proto, p in plans]


def sensitivity(study: Study, progress: bool = True) -> list[dict]:
    """Each layer pruned alone to each kept fraction by each criterion: test accuracy masked and
    removed + BN recalibration (on a seeded draw of ``controls.sensitivity_test_images`` test images)."""
    c = study.cfg.controls
    jobs = [(l, f, crit, seed) for l in range(len(study.acts.widths)) for f in c.sensitivity_keep
            for crit in c.criteria for seed in (range(c.sensitivity_seeds) if get_criterion(crit).seeded else [0])]
    rows = []
    for layer, frac, crit, seed in tqdm(jobs, desc="sensitivity", disable=not progress):
        width = study.acts.widths[layer]
        keep = max(1, round(frac * width))
        kept = {layer: get_criterion(crit).select(study.ctx, layer, keep, None, seed)}
        ev = evaluate_kept(study, kept, modes=("masked", "recalibrated"), test_images=c.sensitivity_test_images,
                           recal_images=c.sensitivity_recal_images)
        rows.append({"layer": layer, "name": LAYER_NAMES[layer], "keep_fraction": frac, "kept": keep,
                     "channels": width, "criterion": crit, "seed": seed, "acc_masked": ev["acc_masked"],
                     "acc_recalibrated": ev["acc_recalibrated"], "seconds": ev["seconds"]})
    return rows


def saturation(study: Study, progress: bool = True) -> list[dict]:
    """Per layer and kernel-width rule: I(Y; L), CMI_1, and the pick at which CMI_t reaches ~0."""
    c, cfg = study.cfg.controls, study.cfg
    rows = []
    for rule in c.sigma_rules:
        for layer, name in enumerate(LAYER_NAMES):
            r, _ = cached_ranking(study.acts, layer, [], alpha=cfg.cmi.alpha, sigma=rule, seed=cfg.seed,
                                  saturation_tol=c.saturation_tol,
                                  cache_dir=study.folder, device=study.device, progress=progress,
                                  desc=f"{name} σ={rule}")
            mi_all = r.info["mi_labels_all"]
            sig = r.sigma["features"]
            sig = statistics.median(sig) if isinstance(sig, list) else sig
            rows.append({"sigma_rule": rule, "layer": name, "channels": r.n_channels, "sigma (median)": sig,
                         "I(Y;L) nats": mi_all, "CMI_1 nats": r.cmi[0] if r.cmi else None,
                         "picks to saturate": r.saturated_at,
                         "ranking seconds": r.seconds})
    return rows


def equal_counts_report(study: Study, out=None, progress: bool = True) -> dict:
    """The controls at equal per-layer counts, both protocols: plans, one row per pruned network, the
    summary over seeds, the wide per-mode tables, the verdict and the kept counts. Written through
    ``out`` (an :class:`cmi.outputs.Outputs`) when given. Returns the tables and their timings."""
    cfg = study.cfg
    timings = {}
    t0 = time.perf_counter()
    plans = study_plans(study, progress)
    timings["plans (both protocols; cached rankings shared)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = plan_controls(study, progress, plans)
    timings["controls at equal counts (every mode)"] = time.perf_counter() - t0
    crits = tuple(cfg.controls.criteria)
    summary = summarize(raw)
    tables = {"plans": plans, "kept": kept_counts_table(plans), "raw": raw, "summary": summary,
              "verdict": verdict_table(summary, crits),
              **{f"wide_{m}": wide_table(summary, m, crits) for m in cfg.controls.modes}, "timings": timings}
    if out is not None:
        out.table(timings_table(timings, {"controls evaluations (sum when computed)": sum(r["seconds"] for r in raw)}),
                  "controls_timings", "Wall time of the controls at equal counts (seconds; `make controls` adds "
                  "the sensitivity curves and the saturation table)", floatfmt=".1f")
        base = study.baseline["test_accuracy"]
        label = {p: PROTOCOL_LABELS[p] for p in cfg.controls.protocols}
        out.table(tables["kept"], "controls_kept_counts", "Filters kept per layer by every plan of each protocol "
                  f"({'; '.join(f'{k}: {v}' for k, v in label.items())})", floatfmt=".4g")
        out.table(raw, "controls_raw", "Every pruned network of the controls: test accuracy per mode, per seed")
        out.table(summary, "controls", "Controls at equal per-layer counts: test accuracy per mode (mean, sd "
                  "over seeds) and each criterion's rank (1 = most accurate) among the criteria", floatfmt=".4g")
        for m in cfg.controls.modes:
            out.table(tables[f"wide_{m}"], f"controls_{m}",
                      f"Test accuracy (%) {MODE_TITLES[m]}, each criterion at the plan's per-layer counts "
                      f"(random: mean ± sd over {cfg.controls.seeds} seeds); baseline {100 * base:.2f}%. "
                      "Rows of the authors protocol were chosen on test data.")
        out.table(tables["verdict"], "controls_verdict", "Controls over all plans: mean test accuracy (%) per "
                  "criterion at the plans' counts, CMI's mean rank among the criteria (1 = best), and the number "
                  "of plans on which CMI beats each other criterion (random: its mean + 1 sd over seeds)",
                  floatfmt=".2f")
    return tables


ABLATION_MODES = ("masked", "recalibrated")


#: the path ablation's protocols: both end points, then each path on alone / off alone
ablation_variants = protocol_names


def ablation_specs(cfg: Config) -> list[tuple[str, str, str]]:
    """(formulation, cutoff, direction) of the path ablation's plans: ``controls.ablation_plans`` (None:
    all nine the authors' code defines), among those ``cfg.prune`` includes."""
    p, names = cfg.prune, cfg.controls.ablation_plans
    return [s for s in itertools.product(p.formulations, p.cutoffs, p.directions)
            if s in get_protocol("authors").plans and (names is None or "-".join(s) in names)]


def _max_drop(cfg: Config) -> float:
    """The plans' choice rule, ``prune.max_drop``, or 1 pp where it is unset (for "keeps accuracy")."""
    return cfg.prune.max_drop if cfg.prune.max_drop is not None else 0.01


def path_ablation(study: Study, progress: bool = True) -> list[dict]:
    """Which of the authors' code paths (METHOD.md §9) moves the plans their code defines? One row per
    protocol of :func:`ablation_variants` x plan (the nine of ``cmi.authors.PLANS`` that ``cfg.prune``
    includes): filters kept, fallbacks, whether its kept channels differ from the same plan under the
    variant's base protocol, and the CMI plan's test accuracy masked and removed + BN recalibration
    (``controls.test_images``). Plans, rankings, candidate scores and evaluations are cached by content,
    so a path that changes nothing in a plan costs nothing there. ``controls.ablation_plans`` picks
    the plans (all nine by default)."""
    c = study.cfg.controls
    wanted = ablation_specs(study.cfg)
    plans: dict[str, dict[str, Plan]] = {}
    for proto in tqdm(ablation_variants(), desc="path ablation", disable=not progress):
        plans[proto] = {p.name: p for p in protocol_plans(study, proto, progress=False, only=wanted)}
    rows = []
    for proto, made in plans.items():
        base = "paper" if proto.startswith("paper") else "authors"
        for name, p in made.items():
            kept = criterion_kept(study, "cmi", p.keep_counts(), p)
            ev = evaluate_kept(study, kept, modes=ABLATION_MODES, test_images=c.test_images)
            other = plans[base][name]
            rows.append({"protocol": proto, "base": base, "path": proto[len(base) + 1:] or "-", "plan": name,
                         "filters_kept": p.filters_kept, "filters_total": p.filters_total,
                         "pruned (%)": round(100 * p.efficiency, 1), "fallbacks": sum(d.fallback for d in p.decisions),
                         "changed": p.kept_channels() != other.kept_channels(),
                         **{f"acc_{m}": ev[f"acc_{m}"] for m in ABLATION_MODES}, "seconds": ev["seconds"]})
    return rows


def ablation_summary(rows: list[dict], baseline_acc: float, max_drop: float = 0.01) -> list[dict]:
    """One row per protocol of :func:`path_ablation`'s rows: filters removed, plans removing >= 1/3,
    plans within ``max_drop`` of ``baseline_acc`` masked, mean accuracies (%), and the path's effect:
    (with the path) - (without it) on the mean removed and the mean accuracy, in pp, i.e.
    ``paper+<path>`` - ``paper`` and ``authors`` - ``authors-<path>`` over the same plans."""
    from .verdict import PAPER_REMOVED

    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["protocol"], []).append(r)

    def mean(part, key):
        return statistics.fmean(r[key] for r in part)

    out = []
    for proto, part in by.items():
        base, path = part[0]["base"], part[0]["path"]
        removed = [r["pruned (%)"] for r in part]
        row = {"protocol": proto, "path": path,
               "switched": "-" if path == "-" else ("on in the paper's text" if base == "paper" else
                                                    "off in the authors' code"),
               "plans": len(part), "plans changed": sum(r["changed"] for r in part),
               "pruned mean (%)": round(statistics.fmean(removed), 1),
               "pruned range (%)": f"{min(removed):.1f}–{max(removed):.1f}",
               "plans ≥ 1/3 removed": sum(x >= 100 * PAPER_REMOVED for x in removed),
               "≥ 1/3 and within drop (masked)": sum(r["pruned (%)"] >= 100 * PAPER_REMOVED
                                                     and r["acc_masked"] >= baseline_acc - max_drop for r in part),
               "best masked (%)": round(100 * max(r["acc_masked"] for r in part), 2),
               **{f"{m} mean (%)": round(100 * mean(part, f"acc_{m}"), 2) for m in ABLATION_MODES},
               "fallbacks": sum(r["fallbacks"] for r in part)}
        if path != "-":
            ref = {r["plan"]: r for r in by[base]}
            sign = 1 if base == "paper" else -1          # effect = with the path - without it
            row["effect on pruned (pp)"] = round(sign * statistics.fmean(
                r["pruned (%)"] - ref[r["plan"]]["pruned (%)"] for r in part), 1)
            for m in ABLATION_MODES:
                row[f"effect on {m} (pp)"] = round(sign * 100 * statistics.fmean(
                    r[f"acc_{m}"] - ref[r["plan"]][f"acc_{m}"] for r in part), 2)
        out.append(row)
    return out


def ablation_report(study: Study, out=None, progress: bool = True) -> dict:
    """:func:`path_ablation` and its summary, written as tables and a figure when ``out`` is given.
    Needs both protocols in ``controls.protocols`` and a plan in ``controls.ablation_plans``; returns
    {} otherwise."""
    from .plots import path_ablation_plot

    cfg = study.cfg
    specs = ablation_specs(cfg)
    if not {"paper", "authors"} <= set(cfg.controls.protocols) or not specs:
        return {}
    t0 = time.perf_counter()
    rows = path_ablation(study, progress)
    seconds = time.perf_counter() - t0
    max_drop = _max_drop(cfg)
    summary = ablation_summary(rows, study.baseline["test_accuracy"], max_drop)
    if out is not None:
        base = 100 * study.baseline["test_accuracy"]
        out.table(rows, "09_path_ablation_plans", "Path ablation, one row per protocol x plan: the CMI plan's "
                  "test accuracy masked and recalibrated; 'changed': its kept channels differ from the same plan "
                  f"under the base protocol (baseline {base:.2f}%)", floatfmt=".4g")
        names = ", ".join("-".join(x) for x in specs)
        out.table(summary, "09_path_ablation", "Which of the authors' code paths moves their plans "
                  f"({names})? Each path switched on alone in the paper's text (paper+path) and off alone in the authors' code "
                  "(authors-path); effect = with the path - without it, over the same plans (pp); "
                  f"baseline {base:.2f}%, 'within drop' = within {100 * max_drop:g} pp masked", floatfmt=".4g")
        out.figure(path_ablation_plot(summary), "09_path_ablation")
    return {"rows": rows, "summary": summary, "seconds": seconds,
            "evaluations (sum when computed)": sum(r["seconds"] for r in rows)}


def sensitivity_report(study: Study, out=None, progress: bool = True) -> list[dict]:
    """:func:`sensitivity`, written as a table and the per-layer curves when ``out`` is given."""
    from .plots import sensitivity_curves

    sens = sensitivity(study, progress)
    if out is not None:
        out.table(sens, "controls_sensitivity", "Layer sensitivity: each layer pruned alone (test accuracy on "
                  f"{study.cfg.controls.sensitivity_test_images or 'all'} test images)")
        out.figure(sensitivity_curves(sens, study.baseline["test_accuracy"]), "controls_sensitivity")
    return sens


def saturation_report(study: Study, out=None, progress: bool = True) -> list[dict]:
    """:func:`saturation`, written as a table and a figure when ``out`` is given."""
    from .plots import saturation_plot

    cfg = study.cfg
    sat = saturation(study, progress)
    if out is not None:
        out.table(sat, "controls_saturation", "Picks until CMI_t ≈ 0 (≤ "
                  f"{cfg.controls.saturation_tol:g} × I(Y; L)) per layer and kernel-width rule, "
                  f"N = {study.acts.n}, α = {cfg.cmi.alpha}", floatfmt=".4g")
        out.figure(saturation_plot(sat), "controls_saturation")
    return sat


def claim_report(study: Study, equal: dict, sat: list[dict], out=None, ablation: dict | None = None) -> list[dict]:
    """The README's "Does the claim hold?" table (:func:`cmi.verdict.claim_table`) from the reports
    (``ablation``: :func:`ablation_report`'s, when it ran)."""
    from .verdict import claim_table

    cfg = study.cfg
    rows = claim_table(equal["summary"], equal["verdict"], equal["kept"], sat, study.baseline["test_accuracy"],
                       _max_drop(cfg), tuple(cfg.controls.criteria),
                       ablation=(ablation or {}).get("summary"))
    if out is not None:
        out.table(rows, "claim", "Does the claim hold? One row per question; protocols: "
                  + "; ".join(f"{p}: {PROTOCOL_LABELS[p]}" for p in cfg.controls.protocols)
                  + ". Each answer's numbers are in the named file.")
    return rows


def timings_table(this_run: dict[str, float], computed: dict[str, float]) -> list[dict]:
    """Rows {part, seconds this run | seconds when computed} of a controls timing table."""
    return [{"part": k, "seconds this run": v} for k, v in this_run.items()] + [
        {"part": k, "seconds when computed": v} for k, v in computed.items()]


def run_controls(cfg: Config, progress: bool = True, out=None) -> dict:
    """The whole study with its tables and figures (written through ``out``, an
    :class:`cmi.outputs.Outputs`, when given). Returns the tables as lists of rows and the timings."""
    study = prepare_study(cfg, progress)
    timings = {}

    def timed(label, work):
        t0 = time.perf_counter()
        result = work()
        timings[label] = time.perf_counter() - t0
        return result

    sat = timed("saturation (per-layer rankings, every σ rule)", lambda: saturation_report(study, out, progress))
    equal = equal_counts_report(study, out, progress)
    timings.update(equal.pop("timings"))
    sens = timed("sensitivity curves", lambda: sensitivity_report(study, out, progress))
    ablation = timed("path ablation (both protocols' paths, one at a time)",
                     lambda: ablation_report(study, out, progress))
    claim = claim_report(study, equal, sat, out, ablation)
    tables = {**equal, "saturation": sat, "sensitivity": sens, "claim": claim, "ablation": ablation}
    computed = {"controls evaluations (sum when computed)": sum(r["seconds"] for r in equal["raw"]),
                "sensitivity evaluations (sum when computed)": sum(r["seconds"] for r in sens)}
    tables["timings"] = timings_table(timings, computed)
    if out is not None:
        out.table(tables["timings"], "controls_timings", "Wall time of the controls study (seconds)", floatfmt=".1f")
    tables["timings_dict"] = {**timings, **computed}
    return tables


PROTOCOL_LABELS = {"paper": "paper's text, cut chosen on held-out training images",
                   "authors": "authors' code paths, cut chosen on test data"}
MODE_TITLES = {"masked": "masked (the paper's: pruned filters zeroed, BN untouched)",
               "removed": "removed (Torch-Pruning, BN untouched)",
               "recalibrated": "removed + BN statistics re-estimated (no gradient step)",
               "finetuned": "removed + BN recalibration + one epoch of fine-tuning"}
