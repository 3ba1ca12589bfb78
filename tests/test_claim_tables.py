"""The claim table rebuilt from the tables a study wrote equals the one answered from its rows."""
import pytest

from cmi.claim_tables import inputs_from_tables, mean_sd, untitled
from cmi.controls import summarize, verdict_table
from cmi.errors import CmiError
from cmi.repairs_study import repair_table
from cmi.tables import ABLATION, KEPT, SATURATION, SWITCHED, titled, verdict_titles
from cmi.verdict import Inputs, claim_table

from test_verdict import CRITERIA, _curve, _layout_rows, raw_rows

CENSUS = {"baseline": 0.93, "channels": 100, "small_gamma": 15, "dead": 5, "constant_positive": 7, "constant": 12,
          "constant_pct": 12.0, "layers_with_constant": 3, "acc_masked": 0.5, "acc_removed": 0.5,
          "acc_recalibrated": 0.929}


def _inputs(constant_removed):
    """Every kind of row the claim reads: two plans, saturation, the census, the path ablation, repairs."""
    summary = summarize(raw_rows())
    kept = [{"protocol": "paper", "plan": "a", "conv1_1": 3, "filters_kept": 60, "pruned_pct": 40.0,
             "chosen_on": "held-out", "fallbacks": 2},
            {"protocol": "paper", "plan": "b", "conv1_1": 8, "filters_kept": 90, "pruned_pct": 10.0,
             "chosen_on": "-", "fallbacks": 0}]
    sat = [{"sigma_rule": rule, "layer": f"conv1_{i}", "channels": 16, "sigma_median": 4.9, "mi_all": mi, "cmi_1": 0.1,
            "picks": picks, "seconds": 1.5}
           for rule, mi, pickses in (("paper", 0.39, (2, None)), ("median", 1.4, (12, 5))) for i, picks in enumerate(pickses)]
    ablation = [{"protocol": "paper", "path": "-", "switched": "-", "plans": 2, "plans_changed": 0, "pruned_mean": 25.0,
                 "pruned_range": "10.0–40.0", "third_within": 1, "best_masked": 92.5, "effect_pruned": None,
                 "effect_recalibrated": None},
                {"protocol": "paper+x", "path": "x", "switched": "on", "plans": 2, "plans_changed": 1,
                 "pruned_mean": 30.0, "pruned_range": "20.0–40.0", "third_within": 0, "best_masked": 50.0,
                 "effect_pruned": 5.0, "effect_recalibrated": -3.5}]
    repairs = {"curves": [_curve("a", "cmi", 60, 100, reconstructed=0.925), _curve("a", "l1", 60, 100)],
               "summary": summarize([dict(r, acc_masked=0.1, acc_removed=0.2) for r in _layout_rows(0.925)]),
               "full_test_summary": summarize([dict(r, acc_removed=0.2) for r in _layout_rows(0.935)])}
    return Inputs(summary, verdict_table(summary, CRITERIA), kept, sat, CENSUS["baseline"], 0.01, CRITERIA, ablation,
                  None, CENSUS, constant_removed, repairs)


def _write(x: Inputs, folder, with_overlap: bool):
    """The tables as the study's writers write them (cmi.controls, cmi.layerwise, cmi.ablation,
    cmi.census, cmi.repairs_study, cmi.verdict), through cmi.outputs.Outputs."""
    from cmi.config import load_config
    from cmi.outputs import Outputs

    out = Outputs(load_config("smoke"), "controls", folder)
    out.table(x.summary, "controls", "summary")
    out.table(titled(x.verdict, verdict_titles(CRITERIA)), "controls_verdict", "verdict")
    out.table(titled(x.kept, KEPT), "controls_kept_counts", "kept")
    out.table(titled(x.saturation, SATURATION), "controls_saturation", "saturation")
    out.table([x.census], "01_census_summary", "census")
    out.table(titled(x.ablation, ABLATION, {"switched": SWITCHED}), "09_path_ablation", "ablation")
    out.table(x.repairs["curves"], "10_repair_curves", "curves")
    out.table(repair_table(x.repairs["summary"]), "10_repairs", "repairs")
    modes = ("removed", "recalibrated", "reconstructed")
    out.table(repair_table(x.repairs["full_test_summary"], modes), "10_pruned_a_full_test", "pruned-A")
    if with_overlap:
        out.table([{"protocol": p, "plan": n, "filters removed": r, "constant removed": c}
                   for (p, n), (r, c) in x.constant_removed.items()], "controls_constant_removed", "overlap")


def test_the_claim_read_back_from_the_tables_is_the_claim_from_the_rows(tmp_path):
    x = _inputs({("paper", "a"): (40, 10), ("paper", "b"): (10, 10)})
    _write(x, tmp_path, with_overlap=True)
    back = inputs_from_tables(tmp_path, 0.01)
    assert back.criteria == CRITERIA and back.baseline_acc == 0.93 and back.constant_removed == x.constant_removed
    rows = claim_table(x)
    # every question has numbers, the ablation and repairs included, but gamma / constant-first (not criteria here)
    assert len(rows) == 15
    assert claim_table(back) == rows


def test_without_the_overlap_a_plan_removes_more_than_the_constant_channels_when_it_removes_more_filters(tmp_path):
    """12 channels are constant; plan a removes 40 filters (more than 12 whatever the overlap), plan b
    removes 10 (perhaps all constant): read without controls_constant_removed, a counts and b does not."""
    _write(_inputs({("paper", "a"): (40, 10), ("paper", "b"): (10, 10)}), tmp_path, with_overlap=False)
    back = inputs_from_tables(tmp_path, 0.01)
    assert back.constant_removed == {("paper", "a"): (40, None), ("paper", "b"): (10, None)}
    row = next(r for r in claim_table(back) if r["question"].startswith("Do the CMI plans remove more"))
    assert row["paper"] == ("yes: plans remove 10–40 filters, their overlap with the 12 constant ones not recorded; "
                            "1 of 2 remove more than there are constant channels, 1 of them within the drop (masked)")


def test_titles_and_cells_undo_as_written():
    assert mean_sd("91.77 ± 1.07") == pytest.approx((0.9177, 0.0107)) and mean_sd(93.3) == pytest.approx((0.933, 0.0))
    rows = [{"switched": "on", "plans_changed": 1, "other": "x"}]
    assert untitled(titled(rows, ABLATION, {"switched": SWITCHED}), ABLATION, {"switched": SWITCHED}) == rows


def test_missing_tables_are_named(tmp_path):
    (tmp_path / "controls.csv").write_text("protocol\n")
    with pytest.raises(CmiError, match="missing controls_verdict.csv, controls_kept_counts.csv, "
                                       "controls_saturation.csv, 01_census_summary.csv"):
        inputs_from_tables(tmp_path, 0.01)


def test_the_command_names_the_missing_tables(tmp_path, capsys):
    from cmi.__main__ import main
    assert main(["claim", "--profile", "smoke", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot rebuild the claim table from {tmp_path}: missing controls.csv") and not (
        tmp_path / "claim.md").exists()


def test_side_by_side_matches_questions_by_file_and_place(tmp_path):
    """Two studies: the second words its verdict rows differently and runs no repairs; rows match by
    (file, place among that file's rows), protocols that disagree are named, a question not asked is –."""
    import csv

    from cmi.claim_tables import side_by_side

    def write(folder, rows):
        folder.mkdir()
        with open(folder / "claim.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["question", "answer", "paper", "authors", "file"])
            w.writeheader()
            w.writerows(rows)

    write(tmp_path / "a", [
        {"question": "v masked (a's words)", "paper": "no: 1/9", "authors": "no: 0/9", "file": "controls_verdict.md"},
        {"question": "v recal (a's words)", "paper": "yes: 8/9", "authors": "no: 2/9", "file": "controls_verdict.md"},
        {"question": "repairs?", "paper": "no: x", "authors": "no: y", "file": "10_repairs.md"}])
    write(tmp_path / "b", [
        {"question": "v masked (b's words)", "paper": "yes: 7/9", "authors": "", "file": "controls_verdict.md"},
        {"question": "v recal (b's words)", "paper": "no: 3/9", "authors": "", "file": "controls_verdict.md"}])
    assert side_by_side({"A": tmp_path / "a", "B": tmp_path / "b"}) == [
        {"question": "v masked (a's words)", "A": "no", "B": "yes"},
        {"question": "v recal (a's words)", "A": "paper yes, authors no", "B": "no"},
        {"question": "repairs?", "A": "no", "B": "–"}]
