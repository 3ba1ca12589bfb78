"""Does the CMI ranking choose better filters than a trivial rule? The controls at equal counts
(docs/method.md §7-§10); :func:`cmi.study.run_controls` runs them with the rest of the controls study.

For every plan of each protocol, each criterion (:mod:`cmi.criteria`) keeps exactly the plan's
per-layer kept counts and picks which channels; random over several seeds. Each pruned network is
evaluated by :func:`cmi.evaluation.evaluate` within the controls' budget
(:func:`cmi.evaluation.controls_budget`). Everything is cached by content in the run's folder, so an
interrupted study resumes and a rerun only reads files. The layer sensitivity and saturation tables
are in :mod:`cmi.layerwise`, the path ablation in :mod:`cmi.ablation`, the claim table in
:mod:`cmi.verdict`.
"""
from __future__ import annotations

import statistics
import time

from tqdm import tqdm

from .criteria import get_criterion, kept_at_counts
from .evaluation import controls_budget, evaluate
from .models import LAYER_NAMES
from .names import ALL_MODES, MODES
from .plans import Plan
from .run import Run, make_plans, plan_specs
from .tables import KEPT, PROTOCOL_LABELS, timings_table, titled, verdict_titles


def study_plans(run: Run, progress: bool = True) -> list[tuple[str, Plan]]:
    """(protocol, plan) for every plan of every protocol in ``controls.protocols``."""
    return [(proto, p) for proto in run.cfg.controls.protocols
            for p in make_plans(run, plan_specs(run.cfg, proto), protocol=proto, progress=progress).plans]


def plan_controls(run: Run, plans: list[tuple[str, Plan]], progress: bool = True, stop=None) -> list[dict]:
    """One row per protocol x plan x criterion x seed: filters kept and accuracy in every mode.
    ``stop()``, when given, is asked before each plan's controls; True leaves the remaining plans out
    (a wall-clock budget), so every plan in the rows has all its criteria and seeds."""
    c = run.cfg.controls
    budget = controls_budget(run.cfg)
    columns = [*MODES, *(m for m in c.modes if m not in MODES)]
    jobs = [(proto, p, crit, seed) for proto, p in plans for crit in c.criteria
            for seed in (range(c.seeds) if get_criterion(crit).seeded else [0])]
    rows, started = [], set()
    for proto, p, crit, seed in tqdm(jobs, desc="controls", disable=not progress):
        if (proto, p.name) not in started:
            if stop is not None and stop():
                break
            started.add((proto, p.name))
        counts = p.keep_counts()
        ev = evaluate(run, kept_at_counts(run.context, crit, counts, p, seed), c.modes, budget)
        if ev["filters_kept"] != sum(counts):
            raise RuntimeError(f"{crit} kept {ev['filters_kept']} filters at the counts of {p.name} ({sum(counts)})")
        rows.append({"protocol": proto, "plan": p.name, "formulation": p.formulation, "cutoff": p.cutoff,
                     "direction": p.direction, "criterion": crit, "seed": seed, "filters_kept": sum(counts),
                     "filters_total": p.filters_total, **{f"acc_{m}": ev.get(f"acc_{m}") for m in columns},
                     "seconds": ev["seconds"]})
    return rows


def modes_of(rows: list[dict]) -> list[str]:
    """The evaluation modes with a column in ``rows`` (``acc_<mode>`` or ``<mode>_mean``), in canonical order."""
    return [m for m in ALL_MODES if any(f"acc_{m}" in r or f"{m}_mean" in r for r in rows)]


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sd over seeds per protocol x plan x criterion, and CMI's rank (1 = most accurate)
    among the criteria in each mode; ties share the better rank."""
    groups: dict[tuple, list[dict]] = {}
    modes = modes_of(rows)
    for r in rows:
        groups.setdefault((r["protocol"], r["plan"], r["criterion"]), []).append(r)
    out = []
    for (proto, name, crit), rs in groups.items():
        row = {"protocol": proto, "plan": name, "criterion": crit, "seeds": len(rs),
               "filters_kept": rs[0]["filters_kept"], "filters_total": rs[0]["filters_total"]}
        for m in modes:
            vals = [r[f"acc_{m}"] for r in rs if r.get(f"acc_{m}") is not None]
            row[f"{m}_mean"] = statistics.fmean(vals) if vals else None
            row[f"{m}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None
        out.append(row)
    for r in out:
        for m in modes:
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
    """Per protocol x mode, over all plans: each criterion's mean accuracy (%) (``mean_<criterion>``),
    CMI's mean rank (``cmi_rank``), and on how many plans CMI is more accurate than each other criterion
    (``wins_<criterion>``; random: than its seed mean plus one sd, so a win is beyond the seeds' spread).
    Titles: :func:`cmi.tables.verdict_titles`."""
    rows = []
    for proto in dict.fromkeys(r["protocol"] for r in summary):
        part = [r for r in summary if r["protocol"] == proto]
        plans = list(dict.fromkeys(r["plan"] for r in part))
        by = {(r["plan"], r["criterion"]): r for r in part}
        for m in modes_of(part):
            if all(r[f"{m}_mean"] is None for r in part):
                continue
            row = {"protocol": proto, "mode": m, "plans": len(plans)}
            for crit in criteria:
                vals = [by[p, crit][f"{m}_mean"] for p in plans if (p, crit) in by]
                row[f"mean_{crit}"] = round(100 * statistics.fmean(vals), 2) if vals else None
            ranks = [by[p, "cmi"][f"{m}_rank"] for p in plans if (p, "cmi") in by]
            row["cmi_rank"] = round(statistics.fmean(ranks), 2) if ranks else None
            for crit in criteria:
                if crit != "cmi":
                    row[f"wins_{crit}"] = sum(
                        by[p, "cmi"][f"{m}_mean"] > by[p, crit][f"{m}_mean"] + (by[p, crit][f"{m}_sd"] or 0.0)
                        for p in plans if (p, "cmi") in by and (p, crit) in by and by[p, "cmi"][f"{m}_mean"] is not None)
            rows.append(row)
    return rows


def kept_counts_table(plans: list[tuple[str, Plan]]) -> list[dict]:
    """Per protocol x plan (:func:`study_plans`): kept filters per layer, the share pruned (%), how the
    cuts were chosen, and the fallbacks taken. Titles: :data:`cmi.tables.KEPT`."""
    return [{"protocol": proto, "plan": p.name, **dict(zip(LAYER_NAMES, p.keep_counts())),
             "filters_kept": p.filters_kept, "pruned_pct": round(100 * p.efficiency, 1),
             "chosen_on": ", ".join(sorted({d.chosen_on for d in p.decisions if d.chosen_on})) or "-",
             "fallbacks": sum(d.fallback for d in p.decisions)} for proto, p in plans]


def equal_counts_report(run: Run, out=None, progress: bool = True, plans: list[tuple[str, Plan]] | None = None,
                        stop=None) -> dict:
    """The controls at equal per-layer counts: plans, one row per pruned network, the summary over seeds,
    the wide per-mode tables, the verdict and the kept counts. ``plans``: (protocol, plan) pairs, default
    every plan of both protocols (:func:`study_plans`); ``stop``: as in :func:`plan_controls` (the tables
    then hold the plans whose controls ran). Written through ``out`` (an :class:`cmi.outputs.Outputs`)
    when given. Returns the tables and their timings."""
    cfg, timings = run.cfg, {}
    if plans is None:
        t0 = time.perf_counter()
        plans = study_plans(run, progress)
        timings["plans (both protocols; cached rankings shared)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = plan_controls(run, plans, progress, stop)
    timings["controls at equal counts (every mode)"] = time.perf_counter() - t0
    done = {(r["protocol"], r["plan"]) for r in raw}
    plans = [(proto, p) for proto, p in plans if (proto, p.name) in done]
    crits = tuple(cfg.controls.criteria)
    summary = summarize(raw)
    tables = {"plans": plans, "kept": kept_counts_table(plans), "raw": raw, "summary": summary,
              "verdict": verdict_table(summary, crits),
              **{f"wide_{m}": wide_table(summary, m, crits) for m in cfg.controls.modes}, "timings": timings}
    if out is not None:
        _write_equal_counts(run, tables, out)
    return tables


def _write_equal_counts(run: Run, tables: dict, out) -> None:
    cfg = run.cfg
    budget, n_test = controls_budget(cfg), len(run.ds.test_y)
    out.table(timings_table(tables["timings"], {"controls evaluations (sum when computed)":
                                                sum(r["seconds"] for r in tables["raw"])}),
              "controls_timings", "Wall time of the controls at equal counts (seconds; `make controls` adds "
              "the sensitivity curves and the saturation table)", floatfmt=".1f")
    base = run.baseline.metrics["test_accuracy"]
    label = {p: PROTOCOL_LABELS[p] for p in cfg.controls.protocols}
    out.table(titled(tables["kept"], KEPT), "controls_kept_counts", "Filters kept per layer by every plan of each "
              f"protocol ({'; '.join(f'{k}: {v}' for k, v in label.items())})", floatfmt=".4g")
    out.table(tables["raw"], "controls_raw", "Every pruned network of the controls: test accuracy per mode, per "
              f"seed, on {budget.describe('masked', n_test).split(', on ')[-1]}")
    out.table(tables["summary"], "controls", "Controls at equal per-layer counts: test accuracy per mode (mean, sd "
              "over seeds) and each criterion's rank (1 = most accurate) among the criteria", floatfmt=".4g")
    for m in cfg.controls.modes:
        out.table(tables[f"wide_{m}"], f"controls_{m}",
                  f"Test accuracy (%) {budget.describe(m, n_test)}, each criterion at the plan's per-layer counts "
                  f"(random: mean ± sd over {cfg.controls.seeds} seeds); baseline {100 * base:.2f}% on all "
                  f"{n_test} test images. Rows of the authors protocol were chosen on test data.")
    out.table(titled(tables["verdict"], verdict_titles(cfg.controls.criteria)), "controls_verdict",
              "Controls over all plans: mean test accuracy (%) per criterion at the plans' counts, CMI's mean rank "
              "among the criteria (1 = best), and the number of plans on which CMI beats each other criterion "
              "(random: its mean + 1 sd over seeds)", floatfmt=".2f")
