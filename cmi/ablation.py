"""Which of the authors' code paths (docs/method.md §9) moves the plans their code defines?

Each path of :data:`cmi.names.PATHS` is switched on alone in the paper's text (``paper+<path>``) and
off alone in the authors' code (``authors-<path>``); every variant makes the same plans (those of
``controls.ablation_plans``, among the nine of :data:`cmi.names.AUTHORS_PLANS`), and each plan's CMI
choice is evaluated masked and recalibrated within the controls' budget. Plans, rankings, scores and
evaluations are cached by content, so a path that changes nothing in a plan costs nothing there.
"""
from __future__ import annotations

import statistics
import time

from tqdm import tqdm

from .criteria import kept_at_counts
from .evaluation import controls_budget, evaluate
from .names import AUTHORS_PLANS, plan_name, protocol_names
from .plans import Plan
from .run import Run, make_plans, plan_specs
from .tables import ABLATION, ABLATION_PLANS, SWITCHED, titled
from .verdict import removes_third

MODES = ("masked", "recalibrated")


def ablation_specs(cfg) -> list[tuple[str, str, str]]:
    """(formulation, cutoff, direction) of the path ablation's plans: ``controls.ablation_plans`` (None:
    all nine the authors' code defines), among those ``cfg.prune`` includes."""
    names = cfg.controls.ablation_plans
    return [s for s in plan_specs(cfg) if s in AUTHORS_PLANS and (names is None or plan_name(s) in names)]


def path_ablation(run: Run, progress: bool = True) -> list[dict]:
    """One row per protocol of :func:`cmi.names.protocol_names` x plan: filters kept, fallbacks, whether its
    kept channels differ from the same plan under the variant's base protocol (``changed``), and the CMI
    plan's test accuracy masked and removed + BN recalibration."""
    wanted = ablation_specs(run.cfg)
    budget = controls_budget(run.cfg)
    plans: dict[str, dict[str, Plan]] = {}
    for proto in tqdm(protocol_names(), desc="path ablation", disable=not progress):
        plans[proto] = {p.name: p for p in make_plans(run, wanted, protocol=proto, progress=False).plans}
    rows = []
    for proto, made in plans.items():
        base = "paper" if proto.startswith("paper") else "authors"
        for name, p in made.items():
            ev = evaluate(run, kept_at_counts(run.context, "cmi", p.keep_counts(), p), MODES, budget)
            rows.append({"protocol": proto, "base": base, "path": proto[len(base) + 1:] or "-", "plan": name,
                         "filters_kept": p.filters_kept, "filters_total": p.filters_total,
                         "pruned_pct": round(100 * p.efficiency, 1), "fallbacks": sum(d.fallback for d in p.decisions),
                         "changed": p.kept_channels() != plans[base][name].kept_channels(),
                         **{f"acc_{m}": ev[f"acc_{m}"] for m in MODES}, "seconds": ev["seconds"]})
    return rows


def _summary_row(part: list[dict], baseline_acc: float, max_drop: float) -> dict:
    base, path = part[0]["base"], part[0]["path"]
    removed = [r["pruned_pct"] for r in part]
    third = [r for r in part if removes_third(r["filters_kept"], r["filters_total"])]
    return {"protocol": part[0]["protocol"], "path": path,
            "switched": "-" if path == "-" else ("on" if base == "paper" else "off"),
            "plans": len(part), "plans_changed": sum(r["changed"] for r in part),
            "pruned_mean": round(statistics.fmean(removed), 1), "pruned_range": f"{min(removed):.1f}–{max(removed):.1f}",
            "plans_third": len(third), "third_within": sum(r["acc_masked"] >= baseline_acc - max_drop for r in third),
            "best_masked": round(100 * max(r["acc_masked"] for r in part), 2),
            **{f"mean_{m}": round(100 * statistics.fmean(r[f"acc_{m}"] for r in part), 2) for m in MODES},
            "fallbacks": sum(r["fallbacks"] for r in part)}


def ablation_summary(rows: list[dict], baseline_acc: float, max_drop: float = 0.01) -> list[dict]:
    """One row per protocol of :func:`path_ablation`'s rows: filters removed, plans removing >= 1/3,
    those within ``max_drop`` of ``baseline_acc`` masked, mean accuracies (%), and the path's effect
    (``effect_pruned``, ``effect_<mode>``): (with the path) - (without it) on the mean removed and the
    mean accuracy, in pp, i.e. ``paper+<path>`` - ``paper`` and ``authors`` - ``authors-<path>`` over the
    same plans. Titles: :data:`cmi.tables.ABLATION`."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["protocol"], []).append(r)
    out = []
    for part in by.values():
        row = _summary_row(part, baseline_acc, max_drop)
        base, path = part[0]["base"], part[0]["path"]
        if path != "-":
            ref = {r["plan"]: r for r in by[base]}
            sign = 1 if base == "paper" else -1          # effect = with the path - without it
            row["effect_pruned"] = round(sign * statistics.fmean(
                r["pruned_pct"] - ref[r["plan"]]["pruned_pct"] for r in part), 1)
            for m in MODES:
                row[f"effect_{m}"] = round(sign * 100 * statistics.fmean(
                    r[f"acc_{m}"] - ref[r["plan"]][f"acc_{m}"] for r in part), 2)
        out.append(row)
    return out


def ablation_report(run: Run, out=None, progress: bool = True) -> dict:
    """:func:`path_ablation` and its summary, written as tables and a figure when ``out`` is given.
    Needs both protocols in ``controls.protocols`` and a plan in ``controls.ablation_plans``; returns
    {} otherwise."""
    from .plots import path_ablation_plot

    cfg = run.cfg
    specs = ablation_specs(cfg)
    if not {"paper", "authors"} <= set(cfg.controls.protocols) or not specs:
        return {}
    t0 = time.perf_counter()
    rows = path_ablation(run, progress)
    seconds = time.perf_counter() - t0
    summary = ablation_summary(rows, run.baseline.metrics["test_accuracy"], cfg.keep_drop)
    if out is not None:
        base = 100 * run.baseline.metrics["test_accuracy"]
        out.table(titled(rows, ABLATION_PLANS), "09_path_ablation_plans", "Path ablation, one row per protocol x "
                  "plan: the CMI plan's test accuracy masked and recalibrated; 'changed': its kept channels differ "
                  f"from the same plan under the base protocol (baseline {base:.2f}%)", floatfmt=".4g")
        names = ", ".join(plan_name(x) for x in specs)
        out.table(titled(summary, ABLATION, {"switched": SWITCHED}), "09_path_ablation",
                  f"Which of the authors' code paths moves their plans ({names})? Each path switched on alone in the "
                  "paper's text (paper+path) and off alone in the authors' code (authors-path); effect = with the "
                  f"path - without it, over the same plans (pp); baseline {base:.2f}%, 'within drop' = within "
                  f"{100 * cfg.keep_drop:g} pp masked", floatfmt=".4g")
        out.figure(path_ablation_plot(summary), "09_path_ablation")
    return {"rows": rows, "summary": summary, "seconds": seconds,
            "evaluations (sum when computed)": sum(r["seconds"] for r in rows)}
