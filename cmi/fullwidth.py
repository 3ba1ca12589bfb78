"""A profile's run within a wall-clock budget, reported stage by stage: for a lent GPU's few minutes.

    python -m cmi.fullwidth --profile paper --deadline 420 --out figures/paper-fashion-mnist-gpu \\
        dataset=fashion-mnist train.epochs=30

Stages, in order, each timed: the run-time estimate (:func:`cmi.estimate.estimate_run`), the baseline
(trained, or loaded from the cache: seconds per epoch from its history), the activation capture,
then the profile's plans (:func:`cmi.run.make_plans` and :func:`cmi.evaluation.evaluate` with the
sweep's budget, the same caches) in an order that reaches every formulation early: all scree-forward plans first, the
permutation-test plans last. A plan is started only while less than ``--deadline`` seconds have
passed; the others are listed as not run. ``fullwidth.json`` and ``fullwidth.md`` in ``--out`` are
rewritten (atomically) after every stage, so a run killed from outside still leaves what it finished.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .config import Config, load_config
from .store import atomic_write_text


def plan_order(cfg: Config) -> list[tuple[str, str, str]]:
    """The profile's plans, every formulation's first plan early: by cutoff, then direction, then formulation."""
    p = cfg.prune
    specs = [(f, c, d) for f in p.formulations for c in p.cutoffs for d in p.directions]
    return sorted(specs, key=lambda s: (p.cutoffs.index(s[1]), p.directions.index(s[2]), p.formulations.index(s[0])))


def run(cfg: Config, deadline_s: float, out: Path, progress: bool = False, command: str = "") -> dict:
    """Run ``cfg``'s stages until ``deadline_s`` seconds have passed; returns the report (also written to ``out``)."""
    from .estimate import estimate_run
    from .evaluation import evaluate, sweep_budget
    from .run import make_plans, prepare_run
    from .device import hardware_name, resolve_device

    t_start = time.perf_counter()
    elapsed = lambda: time.perf_counter() - t_start  # noqa: E731
    device = resolve_device(cfg.device)
    report: dict = {"command": command, "profile": cfg.profile, "dataset": cfg.data.name, "width": cfg.model.width,
                    "epochs": cfg.train.epochs, "n_samples": cfg.cmi.n_samples, "device": str(device),
                    "hardware": hardware_name(device), "torch": torch.__version__, "deadline_s": deadline_s,
                    "stages": {}, "plans": [], "not_run": [], "finished": False}

    def save() -> None:
        report["elapsed_s"] = elapsed()
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "fullwidth.json", json.dumps(report, indent=1) + "\n")
        atomic_write_text(out / "fullwidth.md", format_report(report))

    t0 = time.perf_counter()
    est = estimate_run(cfg)
    report["estimate"] = {k: est[k] for k in ("train_images_per_s", "baseline_s", "rankings_s", "finetune_s",
                                              "total_s", "eig_ms", "ranking_sets")}
    report["stages"]["estimate"] = time.perf_counter() - t0
    save()

    r = prepare_run(cfg, progress)                      # the sweep's baseline and capture
    report["stages"].update(r.timings)
    base = r.baseline
    report["baseline"] = {"cached": base.cached, "test_accuracy": base.metrics["test_accuracy"],
                          "hardware": base.metrics.get("hardware"),
                          "epoch_seconds": [h["seconds"] for h in base.history],
                          "test_acc_by_epoch": [h.get("test_acc") for h in base.history]}
    save()

    modes = ("masked", "removed") + (("finetuned",) if cfg.prune.finetune_epochs > 0 else ())
    order = plan_order(cfg)
    for spec in order:                                  # one at a time, so that the deadline is checked between
        made = make_plans(r, [spec], progress=progress, workers=1, stop=lambda: elapsed() >= deadline_s)
        if not made.plans:
            report["not_run"].append("-".join(spec))
            continue
        p = made.plans[0]
        t0 = time.perf_counter()
        ev = evaluate(r, p.kept_channels(), modes, sweep_budget(cfg), save_finetuned=True)
        t_eval = time.perf_counter() - t0
        report["plans"].append({
            "plan": p.name, "cached": p.name not in made.computed, "filters_kept": p.filters_kept,
            "filters_total": p.filters_total,
            "ranking_s": sum(d.seconds.get("ranking", 0.0) for d in p.decisions),
            "cutoff_s": sum(d.seconds.get("cutoff", 0.0) for d in p.decisions),
            "ranking_s_by_layer": {d.name: d.seconds.get("ranking", 0.0) for d in p.decisions},
            "plan_wall_s": made.wall[p.name], "evaluation_s": t_eval - ev.get("finetune_seconds", 0.0),
            "finetune_s": ev.get("finetune_seconds", 0.0), "acc_masked": ev["acc_masked"],
            "acc_removed": ev["acc_removed"], "acc_finetuned": ev.get("acc_finetuned")})
        save()
    report["finished"] = True
    save()
    return report


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f} %"


def format_report(r: dict) -> str:
    """The report as Markdown: what ran, on what, for how long, and what it measured."""
    lines = [f"**A `{r['profile']}` run on {r['hardware']}** ({r['dataset']}, width {r['width']}, "
             f"{r['epochs']} epochs, N = {r['n_samples']}; torch {r['torch']}; plans started only within "
             f"{r['deadline_s']:.0f} s; {r['elapsed_s']:.0f} s in all"
             + ("" if r["finished"] else ", stopped before it finished") + ")", ""]
    if r.get("command"):
        lines[1:1] = ["", f"`{r['command']}`"]
    if "estimate" in r:
        e = r["estimate"]
        lines += [f"- Estimate (`python -m cmi estimate`) on this machine: {e['train_images_per_s']:.0f} training "
                  f"images/s, baseline ~{e['baseline_s']:.0f} s, rankings at most {e['rankings_s']:.0f} s "
                  f"({e['ranking_sets']} sets, {e['eig_ms']:.2f} ms per eigendecomposition), fine-tuning "
                  f"~{e['finetune_s']:.0f} s, total ~{e['total_s'] / 60:.0f} min."]
    if "baseline" in r:
        b = r["baseline"]
        secs = b["epoch_seconds"]
        if b["cached"]:
            lines.append(f"- Baseline: loaded from the cache, test accuracy {_pct(b['test_accuracy'])}.")
        elif secs:
            rest = secs[1:] or secs
            lines.append(f"- Baseline: {len(secs)} epochs in {sum(secs):.1f} s (first epoch {secs[0]:.1f} s, "
                         f"then {min(rest):.2f}–{max(rest):.2f} s per epoch, mean {sum(rest) / len(rest):.2f} s, "
                         f"evaluation of held-out and test images included); test accuracy "
                         f"{_pct(b['test_accuracy'])}.")
    if "capture" in r["stages"]:
        lines.append(f"- Activation capture: {r['stages']['capture']:.1f} s.")
    if r["plans"]:
        lines += ["", "| plan | filters kept | ranking s | cutoff s | plan wall s | evaluation s | fine-tuning s | "
                      "masked | removed | fine-tuned |", "|---|---|---|---|---|---|---|---|---|---|"]
        for p in r["plans"]:
            lines.append(f"| {p['plan']}{' (cached)' if p['cached'] else ''} | {p['filters_kept']}/{p['filters_total']}"
                         f" | {p['ranking_s']:.1f} | {p['cutoff_s']:.1f} | {p['plan_wall_s']:.1f} | "
                         f"{p['evaluation_s']:.1f} | {p['finetune_s']:.1f} | {_pct(p['acc_masked'])} | "
                         f"{_pct(p['acc_removed'])} | {_pct(p['acc_finetuned'])} |")
        lines += ["", "Ranking s is the time of the plan's CMI rankings computed in this run (per-layer rankings are "
                      "shared, so the first per-layer plan pays for them; 0 when cached)."]
    if r["not_run"]:
        lines += ["", f"Not run within the budget ({len(r['not_run'])}): " + ", ".join(r["not_run"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cmi.fullwidth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--deadline", type=float, required=True,
                        help="seconds after which no further plan is started")
    parser.add_argument("--out", type=Path, required=True, help="folder for fullwidth.json and fullwidth.md")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if args.deadline <= 0:
        parser.error(f"--deadline must be a positive number of seconds, got {args.deadline}")
    cfg = load_config(args.profile, args.overrides)
    command = "python -m cmi.fullwidth " + " ".join(sys.argv[1:] if argv is None else argv)
    report = run(cfg, args.deadline, args.out, progress=args.progress, command=command)
    sys.stdout.write(format_report(report))


if __name__ == "__main__":
    main()
