import csv
import json

import torch

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
    from cmi.data import seeded_indices
    from cmi.surgery import mask_model, remove_channels
    from cmi.train import evaluate, train_baseline

    cfg = tiny_cfg.replace({"prune.formulations": ["per-layer", "compact"], "prune.cutoffs": ["scree"],
                            "prune.directions": ["forward"], "prune.finetune_epochs": 0,
                            "controls.criteria": ["cmi", "l1", "random"], "controls.seeds": 2,
                            "controls.modes": ["masked"], "controls.test_images": 64})
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

    # the census: constant channels counted here from the captured maps (sd over images and positions)
    acts = prepare_run(cfg, progress=False).acts
    sds = [m.double().transpose(0, 1).flatten(1).std(1, correction=0) for m in acts.features]
    assert report["census"]["constant"] == sum(int((sd <= 1e-3 * sd.max()).sum()) for sd in sds)
    assert report["census"]["channels"] == sum(acts.widths)
    # the controls: every plan made, each criterion at its counts; l1 recomputed from the conv weights
    # on the controls' seeded test draw
    assert report["controls"] == ["per-layer-scree-forward", "compact-scree-forward"]
    raw = list(csv.DictReader(open(tmp_path / "out" / "controls_raw.csv")))
    assert len(raw) == 2 * (2 + 2) and {r["plan"] for r in raw} == set(report["controls"])
    idx = seeded_indices(len(ds.test_y), 64, cfg.seed)
    for p in report["plans"]:
        made, _ = plan(prepare_run(cfg, progress=False), specs[p["plan"]], progress=False)
        kept = {l: sorted(torch.sort(-conv.weight.detach().abs().sum((1, 2, 3)).double(), stable=True).indices[:k].tolist())
                for l, (conv, k) in enumerate(zip(model.convs(), made.keep_counts())) if k < conv.out_channels}
        row = next(r for r in raw if r["plan"] == p["plan"] and r["criterion"] == "l1")
        assert float(row["acc_masked"]) == evaluate(mask_model(model, kept), ds.test_x[idx], ds.test_y[idx],
                                                    ds)["accuracy"]
        assert int(row["filters_kept"]) == p["filters_kept"]
    claim = (tmp_path / "out" / "claim.md").read_text()
    assert report["claim"] and all(row["question"] in claim for row in report["claim"])
    assert "constant channels" in claim and (tmp_path / "out" / "provenance" / "fullwidth.json").is_file()
    assert "Controls at equal counts" in format_report(report)

    again = run(cfg, deadline_s=1e-9, out=tmp_path / "again")          # past the deadline before any plan
    assert again["baseline"]["cached"] and not again["plans"] and not again["controls"]
    assert again["not_run"] == ["per-layer-scree-forward", "compact-scree-forward"]
    assert "Not run within the budget (2)" in format_report(again)
    assert again["census"] == report["census"]


def test_controls_stop_between_plans_so_each_plan_has_every_criterion(tiny_cfg):
    from cmi.controls import equal_counts_report
    from cmi.run import make_plans, prepare_run

    cfg = tiny_cfg.replace({"prune.formulations": ["per-layer", "compact"], "prune.cutoffs": ["scree"],
                            "prune.directions": ["forward"], "controls.criteria": ["cmi", "l1", "random"],
                            "controls.seeds": 3, "controls.modes": ["masked"], "controls.test_images": 64})
    r = prepare_run(cfg, progress=False)
    plans = [("paper", p) for p in make_plans(r, plan_order(cfg), progress=False).plans]
    asked = []
    tables = equal_counts_report(r, None, progress=False, plans=plans, stop=lambda: asked.append(1) or len(asked) > 1)
    assert len(asked) == 2                                   # before each plan's controls, then stopped
    assert [p.name for _, p in tables["plans"]] == [plans[0][1].name]
    assert [(x["criterion"], x["seed"]) for x in tables["raw"]] == [("cmi", 0), ("l1", 0), ("random", 0),
                                                                    ("random", 1), ("random", 2)]
    assert [k["plan"] for k in tables["kept"]] == [plans[0][1].name]
