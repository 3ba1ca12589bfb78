"""The claim table rebuilt from the tables a study wrote (``python -m cmi claim``), without its cache.

:func:`cmi.verdict.claim_report` answers from the study's rows in memory. Every number it reads is
also written to a table (CSV) in the study's folder, under the display titles of :mod:`cmi.tables`.
:func:`inputs_from_tables` reads them back, undoing the titles, so that the claim table can be
rebuilt when the cache that produced them is gone, or when only the wording of a row changed. A
table that is absent leaves its rows out (the path ablation, the repairs), as in the study itself.
"""
from __future__ import annotations

import csv
from pathlib import Path

from .errors import CmiError
from .tables import ABLATION, KEPT, SATURATION, SWITCHED, verdict_titles
from .verdict import Inputs


def _value(cell: str):
    """A CSV cell as the row held it: '' -> None, then int, then float, else the string."""
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def read_rows(path: Path) -> list[dict]:
    """The rows of a table written by :meth:`cmi.outputs.Outputs.table` (its CSV), values typed."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def untitled(rows: list[dict], titles: dict[str, str], values: dict[str, dict] | None = None) -> list[dict]:
    """The inverse of :func:`cmi.tables.titled`: display titles (and mapped values) back to the keys."""
    keys = {v: k for k, v in titles.items()}
    back = {k: {shown: v for v, shown in m.items()} for k, m in (values or {}).items()}
    out = []
    for r in rows:
        row = {keys.get(k, k): v for k, v in r.items()}
        out.append({k: back[k].get(v, v) if k in back else v for k, v in row.items()})
    return out


def mean_sd(cell) -> tuple[float, float]:
    """'91.77 ± 1.07' (percent, as :func:`cmi.repairs_study.repair_table` writes it) -> (0.9177, 0.0107);
    a bare number has sd 0."""
    mean, _, sd = str(cell).partition("±")
    return float(mean) / 100, (float(sd) / 100 if sd.strip() else 0.0)


def long_repairs(rows: list[dict]) -> list[dict]:
    """The wide repair table (10_repairs, 10_pruned_a_full_test) back to summary rows
    {plan, criterion, filters_kept, filters_total, seeds, <mode>_mean, <mode>_sd} (fractions)."""
    fixed = ("layout", "criterion", "filters_kept", "filters_total", "seeds")
    out = []
    for r in rows:
        row = {"plan": r["layout"], **{k: r[k] for k in fixed[1:]}}
        for mode in (k for k in r if k not in fixed):
            row[f"{mode}_mean"], row[f"{mode}_sd"] = mean_sd(r[mode]) if r[mode] is not None else (None, None)
        out.append(row)
    return out


def inputs_from_tables(folder: Path, max_drop: float, modes: dict[str, str] | None = None) -> Inputs:
    """:class:`cmi.verdict.Inputs` read from ``folder``'s tables: controls (summary), controls_verdict,
    controls_kept_counts, controls_saturation and 01_census_summary are required; 09_path_ablation,
    controls_constant_removed and the repair tables (10_repair_curves, 10_repairs, 10_pruned_a_full_test)
    are read when present. Without controls_constant_removed (written since the claim table names it),
    a plan's overlap with the constant channels is unknown (None) and the claim bounds it instead.
    The criteria are the verdict table's, in its order."""
    folder = Path(folder)
    need = ["controls", "controls_verdict", "controls_kept_counts", "controls_saturation", "01_census_summary"]
    missing = [n for n in need if not (folder / f"{n}.csv").is_file()]
    if missing:
        raise CmiError(f"cannot rebuild the claim table from {folder}: missing "
                       + ", ".join(f"{n}.csv" for n in missing) + " (run `python -m cmi controls` and `census` first)")
    table = {n: read_rows(folder / f"{n}.csv") for n in need}
    columns = list(table["controls_verdict"][0]) if table["controls_verdict"] else []
    criteria = tuple(c[:-len(" mean (%)")] for c in columns if c.endswith(" mean (%)"))
    census = table["01_census_summary"][0]
    summary = table["controls"]
    if (folder / "controls_constant_removed.csv").is_file():
        constant_removed = {(r["protocol"], r["plan"]): (r["filters removed"], r["constant removed"])
                            for r in read_rows(folder / "controls_constant_removed.csv")}
    else:
        constant_removed = {(r["protocol"], r["plan"]): (r["filters_total"] - r["filters_kept"], None)
                            for r in summary if r["criterion"] == "cmi"}
    ablation = None
    if (folder / "09_path_ablation.csv").is_file():
        ablation = untitled(read_rows(folder / "09_path_ablation.csv"), ABLATION, {"switched": SWITCHED})
    repairs = None
    if all((folder / f"{n}.csv").is_file() for n in ("10_repair_curves", "10_repairs", "10_pruned_a_full_test")):
        repairs = {"curves": read_rows(folder / "10_repair_curves.csv"),
                   "summary": long_repairs(read_rows(folder / "10_repairs.csv")),
                   "full_test_summary": long_repairs(read_rows(folder / "10_pruned_a_full_test.csv"))}
    return Inputs(summary, untitled(table["controls_verdict"], verdict_titles(criteria)),
                  untitled(table["controls_kept_counts"], KEPT), untitled(table["controls_saturation"], SATURATION),
                  census["baseline"], max_drop, criteria, ablation, modes, census, constant_removed, repairs)


def claim_from_tables(cfg, folder: Path, out=None) -> list[dict]:
    """The claim table of ``cfg``'s study rebuilt from the tables in ``folder`` (written through ``out``,
    an :class:`cmi.outputs.Outputs`, when given). The dataset is loaded for its test size only."""
    from .data import load_dataset
    from .evaluation import controls_budget
    from .verdict import claim_table, write_claim

    x = inputs_from_tables(folder, cfg.keep_drop)            # first: a folder without the tables fails at once
    n_test, budget = len(load_dataset(cfg).test_y), controls_budget(cfg)
    x.modes = {m: budget.describe(m, n_test) for m in cfg.controls.modes}
    rows = claim_table(x)
    if out is not None:
        write_claim(rows, cfg, n_test, out, x.protocols, rebuilt=True)
    return rows


def _short(cell: str) -> str:
    """'no: 0 of 18 plans; ...' -> 'no'; '' (a protocol the study did not run) -> ''."""
    return (cell or "").split(":", 1)[0]


def side_by_side(folders: dict[str, Path]) -> list[dict]:
    """The claim tables of several studies ({column: folder with claim.csv}) as one table: a row per
    question, matched by the file that answers it and its place among that file's questions (their
    wording differs with the criteria a study ran), each cell that study's answer per protocol."""
    rows: dict[tuple[str, int], dict] = {}
    for column, folder in folders.items():
        seen: dict[str, int] = {}
        for r in read_rows(Path(folder) / "claim.csv"):
            key = (r["file"], seen.setdefault(r["file"], 0))
            seen[r["file"]] += 1
            answers = {p: _short(r.get(p)) for p in ("paper", "authors") if _short(r.get(p))}
            row = rows.setdefault(key, {"question": r["question"]})
            row[column] = (next(iter(answers.values())) if len(set(answers.values())) == 1
                           else ", ".join(f"{p} {a}" for p, a in answers.items()))
    return [{**{"question": r["question"]}, **{c: r.get(c, "–") for c in folders}} for r in rows.values()]


def write_side_by_side(folders: dict[str, Path], path: Path) -> None:
    """:func:`side_by_side` as Markdown at ``path``, its title naming each column's profile, dataset
    and hardware (from the caption of that folder's claim.md)."""
    import re

    import pandas as pd

    from .outputs import _markdown
    from .store import atomic_write_text

    captions = []
    for column, folder in folders.items():
        first = (Path(folder) / "claim.md").read_text().splitlines()[0]
        caption = re.search(r"\(profile (.*)\)\s*$", first)
        captions.append(f"{column}: {caption[1] if caption else 'no caption'}")
    title = ("**The claim tables side by side: each study's answer (per protocol where they differ); "
             "– where the study did not ask. The question's wording is the first study's; each answer's "
             "numbers are in that study's claim.md.** (" + "; ".join(captions) + ")")
    table = _markdown(pd.DataFrame(side_by_side(folders)), ".4g")
    atomic_write_text(Path(path), f"{title}\n\n{table}\n")


if __name__ == "__main__":      # python -m cmi.claim_tables OUT.md COLUMN=FOLDER ...  (make readme)
    import sys

    write_side_by_side(dict(a.split("=", 1) for a in sys.argv[2:]), Path(sys.argv[1]))
