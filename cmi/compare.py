"""Do two figures folders hold the same numbers? ``python -m cmi.compare A B``.

Compares every CSV table present in either folder or its subfolders (``figures/``, or one run's
``figures/<profile>-<dataset>/``) cell by cell, outside what a rerun may change without changing a result: the timing tables (a name ending in
``timings``) and timing or machine columns (:data:`VOLATILE`: seconds, minutes, wall time, latency,
hardware). Used to check that a redesign changed no number: regenerate a profile's tables from a
clean cache on the machine type that made the committed ones, then compare the two folders
(``make verify`` does all three in a fresh clone). Markdown files are not compared: those with
a CSV twin carry its cells plus a caption naming the hardware; the few without one (``07_headline``,
the GPU run's and the benchmarks' reports) are not checked.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

#: Columns a rerun may change without changing a result (case-insensitive search in the header).
VOLATILE = re.compile(r"second|minute|wall|hardware|timing|latency", re.IGNORECASE)


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return (rows[0], rows[1:]) if rows else ([], [])


def compare_tables(a: Path, b: Path) -> dict:
    """One table in two versions: equal or not outside volatile columns, how many cells differ, the
    first difference ("row i, column: a != b") and the largest absolute numeric difference."""
    head_a, rows_a = _read(a)
    head_b, rows_b = _read(b)
    out = {"table": a.name, "status": "equal", "cells differing": 0, "first difference": "", "max abs diff": None}
    keep_a = [i for i, h in enumerate(head_a) if not VOLATILE.search(h)]
    keep_b = [i for i, h in enumerate(head_b) if not VOLATILE.search(h)]
    names = [head_a[i] for i in keep_a]
    if names != [head_b[i] for i in keep_b] or len(rows_a) != len(rows_b):
        out.update(status="differs", **{"first difference": f"shape: {len(rows_a)} rows {head_a} vs "
                                                              f"{len(rows_b)} rows {head_b}"})
        return out
    for r, (ra, rb) in enumerate(zip(rows_a, rows_b)):
        for name, i, j in zip(names, keep_a, keep_b):
            x, y = ra[i] if i < len(ra) else "", rb[j] if j < len(rb) else ""
            if x == y:
                continue
            out["status"] = "differs"
            out["cells differing"] += 1
            if not out["first difference"]:
                out["first difference"] = f"row {r + 1}, {name}: {x} != {y}"
            try:
                d = abs(float(x) - float(y))
                out["max abs diff"] = d if out["max abs diff"] is None else max(out["max abs diff"], d)
            except ValueError:
                pass
    return out


def compare_folders(a: Path, b: Path) -> list[dict]:
    """Every CSV table of either folder and its subfolders (timing tables aside), by relative path."""
    a, b = Path(a), Path(b)
    for folder in (a, b):
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
    names = sorted({str(p.relative_to(root)) for root in (a, b) for p in root.rglob("*.csv")
                    if not p.stem.endswith("timings")})
    rows = []
    for name in names:
        if not (a / name).is_file() or not (b / name).is_file():
            rows.append({"table": name, "status": f"only in {a if (a / name).is_file() else b}",
                         "cells differing": None, "first difference": "", "max abs diff": None})
        else:
            rows.append(dict(compare_tables(a / name, b / name), table=name))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-folder"]:      # make verify: the folder a run of PROFILE [key=value ...] writes
        from .config import load_config, parse_overrides
        from .outputs import run_folder
        if len(argv) < 2:
            print("error: --run-folder needs a profile", file=sys.stderr)
            return 2
        overrides = parse_overrides(argv[2:])
        print(run_folder(load_config(argv[1], overrides), overrides))
        return 0
    p = argparse.ArgumentParser(prog="python -m cmi.compare", description=__doc__.split("\n")[0],
                                epilog="python -m cmi.compare --run-folder PROFILE [key=value ...] prints the folder a "
                                       "run of the profile writes its tables to")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args(argv)
    try:
        rows = compare_folders(args.a, args.b)
    except NotADirectoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        extra = (f"  {r['cells differing']} cells; {r['first difference']}"
                 + (f"; largest numeric difference {r['max abs diff']:.4g}" if r["max abs diff"] is not None else "")
                 if r["status"] == "differs" else "")
        print(f"{r['status']:>8s}  {r['table']}{extra}")
    same = sum(r["status"] == "equal" for r in rows)
    if not rows:
        print(f"error: no CSV table in {args.a} or {args.b}", file=sys.stderr)
        return 1
    print(f"{same} of {len(rows)} tables equal outside timing, latency and hardware columns")
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
