import json

from cmi.fullwidth import format_report, plan_order, run
from cmi.sweep import plan_names, run_sweep


def test_plan_order_reaches_every_formulation_first_and_the_permutation_test_last(tiny_cfg):
    cfg = tiny_cfg.replace({"prune.formulations": ["per-layer", "compact", "full"],
                            "prune.cutoffs": ["scree", "xmeans", "ptest"],
                            "prune.directions": ["forward", "bidirectional"]})
    order = plan_order(cfg)
    assert sorted(order) == sorted(plan_names(cfg)) and len(set(order)) == 18
    assert order[:3] == [("per-layer", "scree", "forward"), ("compact", "scree", "forward"),
                         ("full", "scree", "forward")]
    assert {c for _, c, _ in order[-6:]} == {"ptest"}


def test_run_reports_what_the_sweep_computes_and_lists_what_the_deadline_skipped(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace({"prune.formulations": ["per-layer", "compact"], "prune.cutoffs": ["scree"],
                            "prune.directions": ["forward"], "prune.finetune_epochs": 0})
    report = run(cfg, deadline_s=1e6, out=tmp_path / "out", command="test")
    assert report["finished"] and not report["not_run"]
    assert json.loads((tmp_path / "out" / "fullwidth.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "out" / "fullwidth.md").read_text() == format_report(report)
    assert len(report["baseline"]["epoch_seconds"]) == 2 and not report["baseline"]["cached"]
    rows = {r["plan"]: r for r in run_sweep(cfg, progress=False).rows}   # the same caches, loaded
    for p in report["plans"]:
        assert (p["filters_kept"], p["acc_masked"], p["acc_removed"]) == \
            (rows[p["plan"]]["filters_kept"], rows[p["plan"]]["acc_masked"], rows[p["plan"]]["acc_removed"])
        assert p["ranking_s"] == sum(p["ranking_s_by_layer"].values())
    assert report["plans"][0]["ranking_s"] > 0

    again = run(cfg, deadline_s=1e-9, out=tmp_path / "again")          # past the deadline before any plan
    assert again["baseline"]["cached"] and not again["plans"]
    assert again["not_run"] == ["per-layer-scree-forward", "compact-scree-forward"]
    assert "Not run within the budget (2)" in format_report(again)
