"""Command line: ``python -m cmi <command> [--profile P] [key=value ...]``.

Commands:
  config   print the resolved config
  data     print a summary of the dataset
  train    train the baseline (or load it from the cache) and print its test accuracy
  sweep    run every pruning plan of the profile and print the results table
  controls the controls study: other criteria at each plan's counts, layer sensitivity, saturation
  claim    rebuild the claim table from the tables of a controls study (no cache needed)
  census   the channel census of the baseline: |γ| and constant channels per layer (notebook 01's tables)
  repairs  the repair study alone: pruned-A and the best >= 1/3 plans under every repair (notebook 10's)
  estimate say how long `make reproduce` would take with the profile on this machine
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from .errors import CmiError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["config", "data", "train", "sweep", "controls", "claim", "census", "repairs", "estimate"])
    parser.add_argument("--profile", default="smoke", help="a name in configs/ or a YAML path (default: smoke)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--check-data", action="store_true", help="estimate: also load the dataset (fail early)")
    parser.add_argument("--seeds", type=int, default=0, metavar="K",
                        help="train: the baseline with seeds 0..K-1 (each cached), and their mean ± sd as a table")
    parser.add_argument("--out", metavar="FOLDER", default=None,
                        help="train --seeds, controls, claim, census, repairs: write (claim: read and write) the "
                             "tables here instead of figures/<profile>-<dataset>[-<hash of the overrides>]/")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. dataset=fashion-mnist train.epochs=3 width=0.5")
    args = parser.parse_intermixed_args(argv)
    if args.out is not None and not (args.command in ("controls", "claim", "census", "repairs") or args.command == "train" and args.seeds):
        parser.error(f"--out is for train --seeds, controls, claim, census and repairs, not {args.command}")
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"   # one line, no source
    try:
        return _run(args)
    except CmiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:   # Ctrl-C: every finished stage (epoch, ranking, plan, evaluation) is cached
        where = str(e) or "stopped; finished epochs, rankings, plans and evaluations are cached; "
        print(f"\ninterrupted: {where}the same command resumes", file=sys.stderr)
        return 130


def _run(args) -> int:
    from .config import load_config
    cfg = load_config(args.profile, args.overrides)
    if args.command == "config":
        print(cfg.to_yaml(), end="")
    elif args.command == "data":
        from .data import load_dataset
        print(json.dumps(load_dataset(cfg).summary(), indent=2))
    elif args.command == "train" and args.seeds:
        from .train import seeds_table
        out = _outputs(cfg, args, "01_baseline_seeds")
        rows, summary = seeds_table(cfg, args.seeds, progress=not args.no_progress, out=out)
        out.finish()
        for r in rows:
            print(r)
        print(summary)
    elif args.command == "train":
        from .train import train_baseline
        base = train_baseline(cfg, progress=not args.no_progress)
        m = base.metrics
        print(f"{'loaded cached' if base.cached else 'trained'} baseline {base.run_dir}")
        print(f"test accuracy {100 * m['test_accuracy']:.2f}%  train time {m['train_seconds']:.0f} s  "
              f"({m['hardware']})")
    elif args.command == "estimate":
        from .estimate import estimate_run, format_estimate
        print(format_estimate(cfg, estimate_run(cfg)))
        if args.check_data:                # make reproduce: a missing dataset stops it here, not in notebook 00
            from .data import load_dataset
            load_dataset(cfg)
    elif args.command == "controls":
        from .study import run_controls
        out = _outputs(cfg, args, "controls")
        tables = run_controls(cfg, progress=not args.no_progress, out=out)
        out.finish()
        for row in tables["verdict"]:
            print(row)
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in tables["timings_dict"].items()))
        print(f"tables and figure: {out.folder}/controls_*")
    elif args.command == "claim":
        _claim(cfg, args)
    elif args.command == "census":
        _census(cfg, args)
    elif args.command == "repairs":
        from .repairs_study import repair_report
        from .run import prepare_run
        out = _outputs(cfg, args, "10_repairs")
        tables = repair_report(prepare_run(cfg, progress=not args.no_progress), out, progress=not args.no_progress)
        out.finish()
        for row in tables["table"]:
            print(row)
        print("pruned-A on the whole test split:")
        for row in tables["full_test"]:
            print(row)
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in tables["timings"].items()))
        print(f"tables and figure: {out.folder}/10_repair*")
    elif args.command == "sweep":
        from .sweep import run_sweep
        res = run_sweep(cfg, progress=not args.no_progress)
        cols = ["plan", "filters_kept", "filters_total", "params", "macs", "acc_masked", "acc_removed", "acc_finetuned"]
        print(" ".join(f"{c:>14s}" if i else f"{c:36s}" for i, c in enumerate(cols)))
        for row in res.rows:
            cells = [f"{row.get(c):.4f}" if isinstance(row.get(c), float) else str(row.get(c)) for c in cols]
            print(" ".join(f"{v:>14s}" if i else f"{v:36s}" for i, v in enumerate(cells)))
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res.timings.items()))
        print(f"tables: {res.run.tables / 'results.csv'}, {res.run.tables / 'layers.csv'}")
    return 0


def _claim(cfg, args) -> None:
    """The claim table rebuilt from the tables in the output folder (cmi.claim_tables)."""
    from .claim_tables import claim_from_tables
    out = _outputs(cfg, args, "claim")
    rows = claim_from_tables(cfg, out.folder, out)
    out.finish()
    for r in rows:
        print(f"{r['answer']:>3}  {r['question']}")
    print(f"rebuilt from the tables in {out.folder}: {out.folder}/claim.md")


def _census(cfg, args) -> None:
    """The channel census of the cached baseline (notebook 01's tables)."""
    from .census import census_report
    from .plots import census_plot
    from .run import prepare_run
    out = _outputs(cfg, args, "01_census")
    run = prepare_run(cfg, progress=not args.no_progress)
    s = census_report(run, out)["summary"]
    out.figure(census_plot(run.model, run.baseline.history, title=f"Channel census of the {cfg.profile} baseline"),
               "01_census")
    out.finish()
    print(f"{s['constant']} of {s['channels']} channels constant ({s['dead']} dead, {s['constant_positive']} "
          f"constant > 0); {s['small_gamma']} with |γ| < 0.1·max; removing exactly them: "
          + ", ".join(f"{k[4:]} {100 * v:.2f} %" for k, v in s.items() if k.startswith("acc_"))
          + f" (baseline {100 * s['baseline']:.2f} %)")
    print(f"tables and figure: {out.folder}/01_census*")


def _outputs(cfg, args, notebook: str):
    """Where a command writes its tables: ``--out``, else the run's folder (a hash of the overrides
    in its name, so runs with other settings never overwrite each other)."""
    from pathlib import Path

    from .config import parse_overrides
    from .outputs import Outputs, run_folder
    return Outputs(cfg, notebook, Path(args.out) if args.out else run_folder(cfg, parse_overrides(args.overrides)))


if __name__ == "__main__":
    sys.exit(main())
