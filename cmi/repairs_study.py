"""Which repair without a gradient step keeps a pruned network within the drop, and does the CMI order
help once it is repaired? (:mod:`cmi.repair`; docs/controls.md, "Repairs".)

Layouts (per-layer kept counts), each filled by every criterion at equal counts:

- **pruned-A** (Li et al. 2017): conv1_1 and conv4_1-conv5_3 at half their filters, the rest whole:
  1568 of 4224 filters (37.1 %) at full width;
- per protocol, **the best plan removing ≥ 1/3**: of the CMI plans that remove at least a third, the
  one most accurate under its best repair.

Every plan of each protocol is also evaluated with CMI's and L1's channels under every repair: the
accuracy-vs-filters-removed figure. Evaluations use the controls' budget and cache; pruned-A is also
scored on the whole test split (:data:`FULL_TEST_MODES`), where 1 pp is not within the noise.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

from tqdm import tqdm

from .controls import study_plans, summarize
from .criteria import get_criterion, kept_at_counts
from .evaluation import controls_budget, evaluate
from .models import LAYER_NAMES
from .run import Run
from .tables import timings_table
from .verdict import removes_third

#: Li et al. 2017's "pruned-A" for VGG16 on CIFAR-10: these layers at half their filters.
PRUNED_A = ("conv1_1", "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
#: The evaluations of the repair study: the paper's masking, plain removal, and the three repairs.
REPAIR_MODES = ("masked", "removed", "recalibrated", "compensated", "reconstructed", "merged")
#: The modes that read calibration images (BN statistics, or the repair's own fit).
CALIBRATED = ("recalibrated", "compensated", "reconstructed")
#: The modes pruned-A is also scored in on the whole test split: whether a repair keeps it within 1 pp is
#: too close to call on the controls' 1000 test images (standard error about 0.8 pp at 93 %).
FULL_TEST_MODES = ("removed", "recalibrated", "reconstructed")
#: Published numbers on pruned-A, L1 selection, no fine-tuning: VGG16-BN on CIFAR-10 at full width.
ANCHORS = (
    {"source": "onion-rain/MCTS (Li et al. pruned-A, L1)", "mode": "removed", "baseline": 93.84, "accuracy": 53.21},
    {"source": "Neuron Merging (Kim et al. 2020), prune only", "mode": "removed", "baseline": 93.70, "accuracy": 88.70},
    {"source": "Neuron Merging (Kim et al. 2020), merged", "mode": "merged", "baseline": 93.70, "accuracy": 93.16},
)


def pruned_a_counts(widths: list[int]) -> list[int]:
    """Kept filters per layer under pruned-A for these layer widths (half, rounded down, at least 1)."""
    return [max(1, w // 2) if name in PRUNED_A else w for name, w in zip(LAYER_NAMES, widths)]


def _evaluate_layout(run: Run, layout: str, counts: list[int], criteria, plan=None, modes=REPAIR_MODES,
                     budget=None) -> list[dict]:
    c, budget = run.cfg.controls, budget or controls_budget(run.cfg)
    rows = []
    for crit in criteria:
        for seed in range(c.seeds) if get_criterion(crit).seeded else [0]:
            ev = evaluate(run, kept_at_counts(run.context, crit, counts, plan, seed), modes, budget)
            rows.append({"protocol": layout, "plan": layout, "criterion": crit, "seed": seed,
                         "filters_kept": sum(counts), "filters_total": sum(run.acts.widths),
                         **{f"acc_{m}": ev[f"acc_{m}"] for m in modes}, "seconds": ev["seconds"],
                         **{f"seconds_{m}": ev.get(f"seconds_{m}") for m in modes}})
    return rows


def repair_curves(run: Run, plans, progress: bool = True) -> list[dict]:
    """Every plan with CMI's and L1's channels at its counts, under every repair: one row each."""
    rows = []
    for proto, p in tqdm(plans, desc="repairs: plans", disable=not progress):
        rows += [dict(r, protocol=proto, plan=p.name)
                 for r in _evaluate_layout(run, p.name, p.keep_counts(), ("cmi", "l1"), p)]
    return rows


def best_third(curves: list[dict], plans) -> dict[str, tuple[str, object]]:
    """Per protocol, the CMI plan removing ≥ 1/3 that is most accurate under its best repair."""
    best = {}
    by_name = {(proto, p.name): p for proto, p in plans}
    for r in curves:
        if r["criterion"] != "cmi" or not removes_third(r["filters_kept"], r["filters_total"]):
            continue
        score = max(r[f"acc_{m}"] for m in REPAIR_MODES)
        if r["protocol"] not in best or score > best[r["protocol"]][0]:
            best[r["protocol"]] = (score, r["plan"])
    return {proto: (name, by_name[proto, name]) for proto, (_, name) in best.items()}


def repair_table(summary: list[dict], modes=REPAIR_MODES) -> list[dict]:
    """One row per layout x criterion: accuracy (%) under each repair as 'mean ± sd' (sd over seeds)."""
    out = []
    for r in summary:
        row = {"layout": r["plan"], "criterion": r["criterion"], "filters_kept": r["filters_kept"],
               "filters_total": r["filters_total"], "seeds": r["seeds"]}
        for m in modes:
            mean, sd = r[f"{m}_mean"], r[f"{m}_sd"]
            row[m] = f"{100 * mean:.2f}" + (f" ± {100 * sd:.2f}" if r["seeds"] > 1 else "")
        out.append(row)
    return out


def repair_report(run: Run, out=None, progress: bool = True) -> dict:
    """The repair study: the curves over every plan, pruned-A and the best ≥ 1/3 plan of each protocol
    under every criterion, tables and figure through ``out`` when given."""
    cfg, timings = run.cfg, {}
    criteria = [c for c in cfg.controls.criteria if c != "cmi-median"]
    t0 = time.perf_counter()
    plans = study_plans(run, progress)
    curves = repair_curves(run, plans, progress)
    timings["every plan, cmi and l1, every repair"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    layouts = [("pruned-A", pruned_a_counts(run.acts.widths), None)]
    layouts += [(f"best ≥ 1/3 ({proto}): {name}", plan.keep_counts(), plan)
                for proto, (name, plan) in best_third(curves, plans).items()]
    rows = [r for name, counts, plan in layouts for r in _evaluate_layout(run, name, counts, criteria, plan)]
    timings["layouts x criteria"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reused = controls_budget(cfg).test_images is None
    if reused:                                        # the layouts already used every test image
        full = [r for r in rows if r["plan"] == "pruned-A"]
    else:
        whole = dataclasses.replace(controls_budget(cfg), test_images=None)
        full = _evaluate_layout(run, "pruned-A", layouts[0][1], criteria, None, FULL_TEST_MODES, whole)
    timings["pruned-A on the whole test split"] = time.perf_counter() - t0
    summary, full_summary = summarize(rows), summarize(full)
    tables = {"curves": curves, "rows": rows, "summary": summary, "table": repair_table(summary),
              "full_test": repair_table(full_summary, FULL_TEST_MODES), "full_test_summary": full_summary,
              "cost": repair_cost(rows + curves, cfg.controls.recal_images), "timings": timings,
              "computed": {"evaluations: every plan, cmi and l1": sum(r["seconds"] for r in curves),
                           "evaluations: layouts x criteria": sum(r["seconds"] for r in rows),
                           "evaluations: pruned-A on the whole test split":
                               0.0 if reused else sum(r["seconds"] for r in full)}}
    if out is not None:
        _write(run, tables, out)
    return tables


def repair_cost(rows: list[dict], calibration_images: int) -> list[dict]:
    """Per mode of REPAIR_MODES: mean and max seconds of one evaluation over ``rows``, and the mean extra
    over plain removal (the repair itself: its surgery, calibration forward passes and solve). Each mode's
    seconds include one test pass; 'removed' includes the removal surgery."""
    out = []
    for m in REPAIR_MODES:
        secs = [r[f"seconds_{m}"] for r in rows if r.get(f"seconds_{m}") is not None]
        extra = [r[f"seconds_{m}"] - r["seconds_removed"] for r in rows
                 if r.get(f"seconds_{m}") is not None and r.get("seconds_removed") is not None]
        out.append({"mode": m, "calibration images": calibration_images if m in CALIBRATED else 0,
                    "evaluations": len(secs), "mean seconds": statistics.fmean(secs) if secs else None,
                    "max seconds": max(secs, default=None),
                    "mean extra seconds over removed": statistics.fmean(extra) if extra and m != "removed" else None})
    return out


def _write(run: Run, tables: dict, out) -> None:
    from .plots import repair_plot

    cfg = run.cfg
    budget, n_test = controls_budget(cfg), len(run.ds.test_y)
    base = run.baseline.metrics["test_accuracy"]
    seeded = " and ".join(c for c in cfg.controls.criteria if c != "cmi-median" and get_criterion(c).seeded) or "none"
    how = "; ".join(f"{m}: {budget.describe(m, n_test).split(', on ')[0]}" for m in REPAIR_MODES)
    out.table(tables["table"], "10_repairs", f"Test accuracy (%) of each layout filled by each criterion at equal "
              f"counts, under each repair ({seeded}: mean ± sd over {cfg.controls.seeds} seeds), on "
              f"{budget.describe('masked', n_test).split(', on ')[-1]}; baseline {100 * base:.2f} %. {how}")
    out.table(tables["full_test"], "10_pruned_a_full_test", f"Pruned-A on the whole test split ({n_test} images): "
              f"test accuracy (%) per criterion ({seeded}: mean ± sd over {cfg.controls.seeds} seeds); baseline "
              f"{100 * base:.2f} %, {cfg.controls.recal_images} training images calibrate")
    out.table([dict(a, note="VGG16-BN, CIFAR-10, full width: another dataset and width") for a in ANCHORS],
              "10_anchors", "Published pruned-A numbers without fine-tuning (L1 selection)")
    out.table(tables["curves"], "10_repair_curves", "Every plan with CMI's and L1's channels under every repair")
    out.table(timings_table(tables["timings"], tables["computed"]), "10_timings", "Wall time of the repair study "
              "(seconds): this call, and the evaluations as measured when each was computed (plans not included)",
              floatfmt=".1f")
    out.table(tables["cost"], "10_repair_cost", f"Cost of one evaluation per mode (seconds, each including one pass "
              f"over {budget.test_images or n_test} test images; as measured when each evaluation was computed, also if read "
              f"from the cache): calibration images are training images, seeded draw", floatfmt=".3f")
    out.figure(repair_plot(tables["curves"], REPAIR_MODES, base), "10_repairs")
