import json

from cmi.fullwidth import format_report, plan_order, run
from cmi.names import plan_name
from cmi.run import plan_specs


def test_plan_order_reaches_every_formulation_first_and_the_permutation_test_last(tiny_cfg):
    cfg = tiny_cfg.replace({"prune.formulations": ["per-layer", "compact", "full"],
                            "prune.cutoffs": ["scree", "xmeans", "ptest"],
                            "prune.directions": ["forward", "bidirectional"]})
    order = plan_order(cfg)
    assert sorted(order) == sorted(plan_specs(cfg)) and len(set(order)) == 18
    assert order[:3] == [("per-layer", "scree", "forward"), ("compact", "scree", "forward"),
                         ("full", "scree", "forward")]
    assert {c for _, c, _ in order[-6:]} == {"ptest"}


def test_run_reports_the_plans_it_made_and_lists_what_the_deadline_skipped(tiny_cfg, tmp_path):
    """The report's numbers against an independent computation: each plan (loaded from the run's
    cache) applied to the baseline loaded fresh from disk, masked and removed, scored on the test split."""
    from cmi.planner import plan
    from cmi.run import prepare_run
    from cmi.surgery import mask_model, remove_channels
    from cmi.train import evaluate, train_baseline

    cfg = tiny_cfg.replace({"prune.formulations": ["per-layer", "compact"], "prune.cutoffs": ["scree"],
                            "prune.directions": ["forward"], "prune.finetune_epochs": 0})
    report = run(cfg, deadline_s=1e6, out=tmp_path / "out", command="test")
    assert report["finished"] and not report["not_run"]
    assert json.loads((tmp_path / "out" / "fullwidth.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "out" / "fullwidth.md").read_text() == format_report(report)
    assert len(report["baseline"]["epoch_seconds"]) == 2 and not report["baseline"]["cached"]
    assert [p["plan"] for p in report["plans"]] == ["per-layer-scree-forward", "compact-scree-forward"]

    base = train_baseline(cfg, progress=False)                 # loaded fresh from the baseline cache
    assert base.cached
    model, ds = base.model, prepare_run(cfg, progress=False).ds
    assert report["baseline"]["test_accuracy"] == evaluate(model, ds.test_x, ds.test_y, ds)["accuracy"]
    specs = {plan_name(s): s for s in plan_order(cfg)}
    for p in report["plans"]:
        made, loaded = plan(prepare_run(cfg, progress=False), specs[p["plan"]], progress=False)
        assert loaded and made.complete and not p["cached"]
        kept = made.kept_channels()
        removed = remove_channels(model, kept)
        assert p["filters_kept"] == sum(made.keep_counts()) == sum(c.out_channels for c in removed.convs())
        assert p["filters_total"] == sum(c.out_channels for c in model.convs()) > p["filters_kept"]
        assert p["acc_masked"] == evaluate(mask_model(model, kept), ds.test_x, ds.test_y, ds)["accuracy"]
        assert p["acc_removed"] == evaluate(removed, ds.test_x, ds.test_y, ds)["accuracy"]
        assert p["acc_finetuned"] is None and p["finetune_s"] == 0                 # finetune_epochs 0
        assert p["ranking_s"] == sum(p["ranking_s_by_layer"].values())
        assert p["ranking_s"] == sum(d.seconds["ranking"] for d in made.decisions)
    assert report["plans"][0]["ranking_s"] > 0

    again = run(cfg, deadline_s=1e-9, out=tmp_path / "again")          # past the deadline before any plan
    assert again["baseline"]["cached"] and not again["plans"]
    assert again["not_run"] == ["per-layer-scree-forward", "compact-scree-forward"]
    assert "Not run within the budget (2)" in format_report(again)
