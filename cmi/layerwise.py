"""Layer by layer: how sensitive each layer is to pruning, and where the CMI estimator saturates.

- :func:`sensitivity`: each layer pruned alone to a range of kept fractions by each criterion
  (Li et al. 2017, Fig. 2), masked and removed + BN recalibration
  (:func:`cmi.evaluation.sensitivity_budget`).
- :func:`saturation`: per layer and kernel-width rule, the greedy pick after which CMI_t is zero
  (relative to I(Y; L)), i.e. where further picks are decided by round-off (docs/method.md §10).
"""
from __future__ import annotations

import statistics

from tqdm import tqdm

from .criteria import get_criterion
from .evaluation import evaluate, sensitivity_budget
from .models import LAYER_NAMES
from .ranking import cached_ranking
from .run import Run
from .tables import SATURATION, titled


def sensitivity(run: Run, progress: bool = True) -> list[dict]:
    """Each layer pruned alone to each kept fraction by each criterion: test accuracy masked and
    removed + BN recalibration (on a seeded draw of ``controls.sensitivity_test_images`` test images)."""
    c = run.cfg.controls
    budget = sensitivity_budget(run.cfg)
    jobs = [(l, f, crit, seed) for l in range(len(run.acts.widths)) for f in c.sensitivity_keep
            for crit in c.criteria for seed in (range(c.sensitivity_seeds) if get_criterion(crit).seeded else [0])]
    rows = []
    for layer, frac, crit, seed in tqdm(jobs, desc="sensitivity", disable=not progress):
        width = run.acts.widths[layer]
        keep = max(1, round(frac * width))
        kept = {layer: get_criterion(crit).select(run.context, layer, keep, None, seed)}
        ev = evaluate(run, kept, ("masked", "recalibrated"), budget)
        rows.append({"layer": layer, "name": LAYER_NAMES[layer], "keep_fraction": frac, "kept": keep,
                     "channels": width, "criterion": crit, "seed": seed, "acc_masked": ev["acc_masked"],
                     "acc_recalibrated": ev["acc_recalibrated"], "seconds": ev["seconds"]})
    return rows


def saturation(run: Run, progress: bool = True) -> list[dict]:
    """Per layer and kernel-width rule: I(Y; L) (``mi_all``), CMI_1, and the pick at which CMI_t
    reaches ~0 (``picks``, None: never). Titles: :data:`cmi.tables.SATURATION`."""
    c, cfg = run.cfg.controls, run.cfg
    rows = []
    for rule in c.sigma_rules:
        for layer, name in enumerate(LAYER_NAMES):
            r, _ = cached_ranking(run.acts, layer, [], alpha=cfg.cmi.alpha, sigma=rule, seed=cfg.seed,
                                  saturation_tol=c.saturation_tol, cache_dir=run.folder, device=run.device,
                                  progress=progress, desc=f"{name} σ={rule}")
            sig = r.sigma["features"]
            rows.append({"sigma_rule": rule, "layer": name, "channels": r.n_channels,
                         "sigma_median": statistics.median(sig) if isinstance(sig, list) else sig,
                         "mi_all": r.info["mi_labels_all"], "cmi_1": r.cmi[0] if r.cmi else None,
                         "picks": r.saturated_at, "seconds": r.seconds})
    return rows


def sensitivity_report(run: Run, out=None, progress: bool = True) -> list[dict]:
    """:func:`sensitivity`, written as a table and the per-layer curves when ``out`` is given."""
    from .plots import sensitivity_curves

    sens = sensitivity(run, progress)
    if out is not None:
        out.table(sens, "controls_sensitivity", "Layer sensitivity: each layer pruned alone (test accuracy on "
                  f"{run.cfg.controls.sensitivity_test_images or 'all'} test images)")
        out.figure(sensitivity_curves(sens, run.baseline.metrics["test_accuracy"]), "controls_sensitivity")
    return sens


def saturation_report(run: Run, out=None, progress: bool = True) -> list[dict]:
    """:func:`saturation`, written as a table and a figure when ``out`` is given."""
    from .plots import saturation_plot

    cfg = run.cfg
    sat = saturation(run, progress)
    if out is not None:
        out.table(titled(sat, SATURATION), "controls_saturation", "Picks until CMI_t ≈ 0 (≤ "
                  f"{cfg.controls.saturation_tol:g} × I(Y; L)) per layer and kernel-width rule, "
                  f"N = {run.acts.n}, α = {cfg.cmi.alpha}", floatfmt=".4g")
        out.figure(saturation_plot(sat), "controls_saturation")
    return sat
