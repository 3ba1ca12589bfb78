"""A profile's study within a wall-clock budget, reported stage by stage: for a lent GPU's few minutes.

    python -m cmi.fullwidth --profile paper --deadline 420 --out figures/paper-fashion-mnist-gpu \\
        dataset=fashion-mnist train.epochs=30

Stages, in order, each timed:

1. the run-time estimate (:func:`cmi.estimate.estimate_run`);
2. the baseline (trained, or loaded from the cache: seconds per epoch from its history) and the
   activation capture;
3. the channel census (:func:`cmi.census.census_report`);
4. the profile's plans (:func:`cmi.run.make_plans` and :func:`cmi.evaluation.evaluate` with the
   sweep's budget, the same caches) in an order that reaches every formulation early: all
   scree-forward plans first, the permutation-test plans last. A plan is started only before
   ``--plans-deadline`` seconds (default: three fifths of the time the baseline and capture left
   before ``--deadline``);
5. the controls at equal counts on the plans made (:func:`cmi.controls.equal_counts_report`): a
   plan's controls are started only before ``--deadline``;
6. the claim table (:func:`cmi.verdict.claim_report`) from what ran.

``fullwidth.json`` and ``fullwidth.md`` in ``--out`` are rewritten (atomically) after every stage, so
a run killed from outside still leaves what it finished; the census, controls and claim tables are
written there too, with their provenance (``provenance/fullwidth.json``).
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


class _Report:
    """The report being built (``data``) and the wall clock it is measured against."""

    def __init__(self, data: dict, out: Path):
        self.data, self.out, self.t_start = data, out, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def save(self) -> None:
        self.data["elapsed_s"] = self.elapsed()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "fullwidth.json", json.dumps(self.data, indent=1) + "\n")
        atomic_write_text(self.out / "fullwidth.md", format_report(self.data))

    def stage(self, name: str, work):
        """Run ``work()``, record its seconds under ``stages[name]``, save; returns its result."""
        t0 = time.perf_counter()
        result = work()
        self.data["stages"][name] = time.perf_counter() - t0
        self.save()
        return result


def run(cfg: Config, deadline_s: float, out: Path, progress: bool = False, command: str = "",
        plans_deadline_s: float | None = None) -> dict:
    """Run ``cfg``'s stages (module docstring): plans are started until ``plans_deadline_s`` (default:
    three fifths of the way from the end of the capture to ``deadline_s``), their controls until
    ``deadline_s``. Returns the report (also written to ``out`` with the census, controls and claim
    tables)."""
    from .census import census_report
    from .controls import equal_counts_report
    from .device import hardware_name, resolve_device
    from .estimate import estimate_run
    from .outputs import Outputs
    from .run import prepare_run
    from .verdict import claim_report

    device = resolve_device(cfg.device)
    rep = _Report({"command": command, "profile": cfg.profile, "dataset": cfg.data.name, "width": cfg.model.width,
                   "epochs": cfg.train.epochs, "n_samples": cfg.cmi.n_samples, "device": str(device),
                   "hardware": hardware_name(device), "torch": torch.__version__, "deadline_s": deadline_s,
                   "plans_deadline_s": None, "stages": {}, "plans": [], "not_run": [],
                   "controls": [], "finished": False}, out)
    est = rep.stage("estimate", lambda: estimate_run(cfg))
    rep.data["estimate"] = {k: est[k] for k in ("train_images_per_s", "baseline_s", "rankings_s", "finetune_s",
                                                "total_s", "eig_ms", "ranking_sets")}
    r = prepare_run(cfg, progress)                      # the sweep's baseline and capture
    rep.data["stages"].update(r.timings)
    base = r.baseline
    rep.data["baseline"] = {"cached": base.cached, "test_accuracy": base.metrics["test_accuracy"],
                            "hardware": base.metrics.get("hardware"),
                            "epoch_seconds": [h["seconds"] for h in base.history],
                            "test_acc_by_epoch": [h.get("test_acc") for h in base.history]}
    ready = rep.elapsed()
    rep.data["plans_deadline_s"] = (ready + 0.6 * max(0.0, deadline_s - ready) if plans_deadline_s is None
                                    else min(plans_deadline_s, deadline_s))
    outputs = Outputs(cfg, "fullwidth", folder=out)
    rep.data["census"] = rep.stage("census", lambda: census_report(r, outputs)["summary"])
    made = rep.stage("plans", lambda: _plans(r, rep, rep.data["plans_deadline_s"], progress))
    equal = rep.stage("controls", lambda: equal_counts_report(
        r, outputs, progress, plans=[(cfg.prune.protocol, p) for p in made], stop=_in_time(rep, deadline_s)))
    rep.data["controls"] = [p.name for _, p in equal["plans"]]
    rep.data["claim"] = rep.stage("claim", lambda: claim_report(r, equal, [], outputs))
    outputs.finish()
    rep.data["finished"] = True
    rep.save()
    return rep.data


def _in_time(rep: _Report, deadline_s: float):
    """A ``stop()`` for work done in similar steps: True once the step about to start, taking as long
    as the last one did, would end after ``deadline_s``."""
    marks = []

    def stop() -> bool:
        now = rep.elapsed()
        last = now - marks[-1] if marks else 0.0
        marks.append(now)
        return now + last >= deadline_s
    return stop


def _plans(r, rep: _Report, deadline_s: float, progress: bool) -> list:
    """Make the profile's plans in :func:`plan_order` until ``deadline_s``, each scored with the sweep's
    budget; their rows go to ``rep`` as they finish. Returns the plans made."""
    from .evaluation import evaluate, evaluation_path, sweep_budget
    from .run import make_plans

    cfg, plans = r.cfg, []
    budget = sweep_budget(cfg)
    modes = ("masked", "removed") + (("finetuned",) if cfg.prune.finetune_epochs > 0 else ())
    for spec in plan_order(cfg):                        # one at a time, so that the deadline is checked between
        made = make_plans(r, [spec], progress=progress, workers=1, stop=lambda: rep.elapsed() >= deadline_s)
        if not made.plans:
            rep.data["not_run"].append("-".join(spec))
            continue
        p = made.plans[0]
        plans.append(p)
        path = evaluation_path(r, p.kept_channels(), modes, budget)
        # this layout was scored before: evaluate returns that row, with its seconds then
        evaluated = path is not None and path.is_file() and ("finetuned" not in modes or path.with_suffix(".pt").is_file())
        t0 = time.perf_counter()
        ev = evaluate(r, p.kept_channels(), modes, budget, save_finetuned=True)
        t_eval = time.perf_counter() - t0
        t_ft = 0.0 if evaluated else ev.get("finetune_seconds", 0.0)
        rep.data["plans"].append({
            "plan": p.name, "cached": p.name not in made.computed, "filters_kept": p.filters_kept,
            "filters_total": p.filters_total,
            "ranking_s": sum(d.seconds.get("ranking", 0.0) for d in p.decisions),
            "cutoff_s": sum(d.seconds.get("cutoff", 0.0) for d in p.decisions),
            "ranking_s_by_layer": {d.name: d.seconds.get("ranking", 0.0) for d in p.decisions},
            "plan_wall_s": made.wall[p.name], "evaluation_s": t_eval - t_ft, "finetune_s": t_ft,
            "evaluation_cached": evaluated, "acc_masked": ev["acc_masked"],
            "acc_removed": ev["acc_removed"], "acc_finetuned": ev.get("acc_finetuned")})
        rep.save()
    return plans


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f} %"


def format_report(r: dict) -> str:
    """The report as Markdown: what ran, on what, for how long, and what it measured."""
    plans_by = r.get("plans_deadline_s") or r["deadline_s"]
    lines = [f"**A `{r['profile']}` run on {r['hardware']}** ({r['dataset']}, width {r['width']}, "
             f"{r['epochs']} epochs, N = {r['n_samples']}; torch {r['torch']}; plans started only within "
             f"{plans_by:.0f} s" + (f", their controls within {r['deadline_s']:.0f} s" if "controls" in r else "")
             + f"; {r['elapsed_s']:.0f} s in all" + ("" if r["finished"] else ", stopped before it finished") + ")", ""]
    if r.get("command"):
        lines[1:1] = ["", f"`{r['command']}`"]
    lines += _setup_lines(r)
    if r["plans"]:
        lines += ["", "| plan | filters kept | ranking s | cutoff s | plan wall s | evaluation s | fine-tuning s | "
                      "masked | removed | fine-tuned |", "|---|---|---|---|---|---|---|---|---|---|"]
        for p in r["plans"]:
            lines.append(f"| {p['plan']}{' (cached)' if p['cached'] else ''} | {p['filters_kept']}/{p['filters_total']}"
                         f" | {p['ranking_s']:.1f} | {p['cutoff_s']:.1f} | {p['plan_wall_s']:.1f} | "
                         f"{p['evaluation_s']:.1f}{' (cached)' if p.get('evaluation_cached') else ''} | "
                         f"{p['finetune_s']:.1f} | {_pct(p['acc_masked'])} | "
                         f"{_pct(p['acc_removed'])} | {_pct(p['acc_finetuned'])} |")
        lines += ["", "Ranking s is the time of the plan's CMI rankings computed in this run (per-layer rankings are "
                      "shared, so the first per-layer plan pays for them; 0 when cached). An evaluation marked cached "
                      "scored a layout scored before (another plan's, or an earlier run's)."]
    if r["not_run"]:
        lines += ["", f"Not run within the budget ({len(r['not_run'])}): " + ", ".join(r["not_run"]) + "."]
    if "controls" in r["stages"]:
        skipped = [p["plan"] for p in r["plans"] if p["plan"] not in r["controls"]]
        lines += ["", f"Controls at equal counts (`controls_*.md`, {r['stages']['controls']:.1f} s): "
                      f"{len(r['controls'])} of the {len(r['plans'])} plans made"
                  + (f"; not started within the budget: {', '.join(skipped)}" if skipped else "") + "."]
    if r.get("claim"):
        lines += ["", "Claim table (`claim.md`, from what ran here):", ""]
        lines += [f"- {row['question']} **{row['answer']}**" for row in r["claim"]]
    if r["stages"]:
        lines += ["", "Stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items()) + "."]
    return "\n".join(lines) + "\n"


def _setup_lines(r: dict) -> list[str]:
    """The estimate, baseline, capture and census lines of the report."""
    lines = []
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
    if r.get("census"):
        c = r["census"]
        lines.append(f"- Census (`01_census.md`): {c['constant']} of {c['channels']} channels constant on the captured "
                     f"images ({c['dead']} dead, {c['constant_positive']} a constant > 0), {c['small_gamma']} with "
                     f"|γ| < 0.1·max; removing exactly the constant ones: masked {_pct(c['acc_masked'])}, recalibrated "
                     f"{_pct(c['acc_recalibrated'])}.")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cmi.fullwidth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--deadline", type=float, required=True,
                        help="seconds after which no further stage work (a plan's controls) is started")
    parser.add_argument("--plans-deadline", type=float, default=None,
                        help="seconds after which no further plan is started (default: three fifths of the way "
                             "from the end of the baseline and capture to --deadline)")
    parser.add_argument("--out", type=Path, required=True, help="folder for fullwidth.json and fullwidth.md")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if args.deadline <= 0:
        parser.error(f"--deadline must be a positive number of seconds, got {args.deadline}")
    if args.plans_deadline is not None and not 0 < args.plans_deadline <= args.deadline:
        parser.error(f"--plans-deadline must be a positive number of seconds up to --deadline ({args.deadline:g}), "
                     f"got {args.plans_deadline}")
    cfg = load_config(args.profile, args.overrides)
    command = "python -m cmi.fullwidth " + " ".join(sys.argv[1:] if argv is None else argv)
    report = run(cfg, args.deadline, args.out, progress=args.progress, command=command,
                 plans_deadline_s=args.plans_deadline)
    sys.stdout.write(format_report(report))


if __name__ == "__main__":
    main()
