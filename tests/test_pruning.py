import json

import numpy as np
import pytest
import torch
import torch_pruning as tp

from cmi import ranking as ranking_mod
from cmi.cutoffs import check_keep, choose, scree_candidates, scree_ratios, xmeans_candidates
from cmi.models import LAYER_NAMES, VGG16, build_model, count_params, layer_widths
from cmi.planner import plan as _plan
from cmi.plans import Plan
from cmi.surgery import check_plan_for_model, load_pruned, mask_model, remove_channels, save_pruned
from cmi.report import conv_linear_macs

from conftest import make_run
from test_models import reference_params


# ----------------------------------------------------------------------------- cutoffs
def test_scree_ratios_by_hand():
    cmi = [4.0, 2.0, 1.5, 1.4, 1.4, 0.4]
    assert scree_ratios(cmi) == pytest.approx([-1, 2.0 / 0.5, 0.5 / 0.1, 0.0, 0.0, -1])
    assert scree_candidates(cmi, 3) == [3, 2, 4]       # keep counts: ratio at CMI_3 is largest
    assert scree_candidates([1.0], 3) == [1]


def test_xmeans_finds_the_segments():
    """X-Means clusters the points (t-1, CMI_t); a cut is keep = the number of points before a later
    cluster. Three flat stretches at indices 0-9, 10-19, 20-29 are three clusters when their steps
    dwarf the index range (else the clusters are intervals of the index whatever the curve, see
    cmi.authors.xmeans_on_index_axis): the cuts are keep 10 (first stretch) and keep 20 (first two)."""
    def stretches(ends, n=30):
        bounds = [0, *ends, n]
        levels = [100.0 * (len(bounds) - 2 - k) for k in range(len(bounds) - 1)]    # ..., 200, 100, 0
        flat = np.concatenate([np.full(b - a, lvl) for a, b, lvl in zip(bounds, bounds[1:], levels)])
        return list(flat - np.linspace(0, 0.01, n))        # non-increasing, no two points equal

    cmi = stretches((10, 20))
    assert xmeans_candidates(cmi) == [10, 20]
    assert xmeans_candidates(cmi) == [10, 20]              # seeded: the same again
    assert xmeans_candidates(stretches((7, 22))) == [7, 22]  # the cuts move with the stretches
    assert xmeans_candidates([1.0, 0.5]) == []


def test_choose_and_check_keep():
    assert choose([5, 9, 2], [0.90, 0.91, 0.80]) == 9
    assert choose([5, 9, 2], [0.90, 0.91, 0.80], tolerance=0.02) == 5
    assert choose([5, 3], [0.9, 0.9]) == 3
    with pytest.raises(ValueError, match="cannot keep 0 of 8"):
        check_keep(0, 8, "conv1_1")
    with pytest.raises(ValueError, match="cannot keep 9 of 8"):
        check_keep(9, 8, "conv1_1")


# ----------------------------------------------------------------------------- surgery
def _random_kept(widths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {l: sorted(torch.randperm(c, generator=g)[: max(1, c // 2)].tolist()) for l, c in enumerate(widths)}


def test_mask_zeroes_exactly_the_pruned_filters():
    model = VGG16(width=0.125, head="linear")
    kept = _random_kept(layer_widths(0.125))
    masked = mask_model(model, kept)
    for l, (a, b) in enumerate(zip(model.convs(), masked.convs())):
        pruned = sorted(set(range(a.out_channels)) - set(kept[l]))
        assert (b.weight[pruned] == 0).all() and (b.bias[pruned] == 0).all()
        assert torch.equal(b.weight[kept[l]], a.weight[kept[l]])
    assert not (model.convs()[0].weight == 0).any()          # the original is untouched


def test_removed_model_equals_masked_when_pruned_channels_output_zero(tmp_path):
    """Where a pruned channel's BN output is 0 (β = 0, running mean 0) the masked network feeds
    zeros forward, so the physically smaller network must compute exactly the same function."""
    torch.manual_seed(0)
    model = VGG16(width=0.125, head="mlp").eval()
    widths = layer_widths(0.125)
    kept = _random_kept(widths, seed=1)
    bns = [m for m in model.features if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for l, bn in enumerate(bns):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 2)
            pruned = sorted(set(range(widths[l])) - set(kept[l]))
            bn.bias[pruned] = 0
            bn.running_mean[pruned] = 0
    removed = remove_channels(model, kept)
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(removed(x), mask_model(model, kept)(x), atol=1e-5)
    assert [c.out_channels for c in removed.convs()] == [len(kept[l]) for l in range(13)]
    kept_widths = [len(kept[l]) for l in range(13)]
    assert count_params(removed) == reference_params(kept_widths, "mlp", hidden=512)
    assert tp.utils.count_ops_and_params(removed, torch.zeros(1, 3, 32, 32))[1] == count_params(removed)
    save_pruned(removed, kept, tmp_path / "p.pt")
    again = load_pruned(tmp_path / "p.pt")
    assert torch.equal(again.model(x), removed(x)) and again.kept == kept
    assert not hasattr(removed, "kept")                   # nothing attached to the module


def hooked_macs(model, input_shape=(1, 3, 32, 32)) -> int:
    """The count by hand that FlopCounterMode replaced: forward hooks on every Conv2d and Linear."""
    total = 0

    def conv(m, inp, out):
        nonlocal total
        total += out[0].numel() * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)

    def linear(m, inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.zeros(input_shape))
    for h in hooks:
        h.remove()
    return total


def test_macs_closed_form():
    model = VGG16(width=1.0, head="linear")
    sizes, cin, macs = [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2], 3, 0
    for c, s in zip(layer_widths(1.0), sizes):
        macs += 9 * cin * c * s * s
        cin = c
    assert conv_linear_macs(model) == macs + 512 * 10 == 313_201_664
    pruned = remove_channels(model, {0: list(range(32))})      # half of conv1_1: its own and conv1_2's input
    assert conv_linear_macs(pruned) == 313_201_664 - 9 * 3 * 32 * 1024 - 9 * 32 * 64 * 1024
    # the old count by hand agrees on the baseline, an mlp head and a randomly pruned network
    for m in (model, pruned, VGG16(width=0.25, head="mlp"), remove_channels(VGG16(width=0.25), _random_kept(
            layer_widths(0.25), seed=3))):
        assert conv_linear_macs(m) == hooked_macs(m)


# ----------------------------------------------------------------------------- plans
def plan(run, spec, **k) -> Plan:
    """The plan alone (``cmi.planner.plan`` returns ``(plan, loaded)``)."""
    return _plan(run, spec, progress=False, **k)[0]


@pytest.mark.parametrize("formulation", ["per-layer", "compact", "full"])
def test_forward_plans_condition_as_specified(trained, plan_cfg, formulation):
    model, acts, ds = trained
    p = plan(make_run(plan_cfg, model, ds, acts), (formulation, "scree", "forward"))
    assert [d.layer for d in p.decisions] == list(range(13)) and p.complete
    for d in p.decisions:
        expected = {"per-layer": [], "compact": list(LAYER_NAMES[max(0, d.layer - 1):d.layer]),
                    "full": list(LAYER_NAMES[:d.layer])}[formulation]
        assert d.condition == expected
        assert d.keep in d.candidates and len(d.scores) == len(d.candidates) <= 3
        assert d.kept == (d.ranking["order"] + [j for j in range(d.channels) if j not in d.ranking["order"]])[:d.keep]
    assert p.filters_kept == sum(d.keep for d in p.decisions) and p.filters_total == sum(d.channels for d in p.decisions)
    assert p.efficiency == pytest.approx(1 - p.filters_kept / p.filters_total) and 0 < p.efficiency < 1
    assert Plan.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_plans_pass_the_saturation_stop_and_the_authors_protocol_ranks_exactly(trained, plan_cfg):
    model, acts, ds = trained
    stop = plan_cfg.replace({"cmi.saturation_tol": 0.5})      # stops after the first pick or two
    paper = plan(make_run(stop, model, ds, acts), ("compact", "scree", "forward"))
    rankings = [d.ranking for d in paper.decisions]
    assert all(r["info"]["saturation_tol"] == 0.5 for r in rankings)
    assert any(r["saturated_at"] is not None for r in rankings)
    assert paper.settings["saturation_tol"] == 0.5
    authors = plan(make_run(stop.replace({"prune.protocol": "authors"}), model, ds, acts),
                   ("compact", "scree", "forward"))
    assert all(d.ranking["saturated_at"] is None and d.ranking["info"]["saturation_tol"] == 0
               for d in authors.decisions)
    assert authors.settings["saturation_tol"] == 0 and authors.settings["protocol"] == "authors"   # exact
    ptest = plan(make_run(stop, model, ds, acts), ("per-layer", "ptest", "forward"))
    assert all(d.ranking["info"]["saturation_tol"] == 0 for d in ptest.decisions)


def test_plan_settings_are_the_config_fields_a_plan_depends_on(plan_cfg):
    from cmi.plans import plan_settings

    s = plan_settings(plan_cfg, "l1")
    assert s == {"seed": 0, "protocol": "paper", "criterion": "l1", "alpha": plan_cfg.cmi.alpha,
                 "sigma": plan_cfg.cmi.sigma, "permutations": 10, "eta": plan_cfg.cmi.eta,
                 "scree_candidates": plan_cfg.prune.scree_candidates, "select_images": None,
                 "tolerance": plan_cfg.prune.tolerance, "max_drop": None, "reference": plan_cfg.prune.reference,
                 "fallback": plan_cfg.prune.fallback, "saturation_tol": 0.0}
    assert plan_settings(plan_cfg.replace({"cmi.saturation_tol": 0.5}))["saturation_tol"] == 0.5
    assert plan_settings(plan_cfg.replace({"cmi.saturation_tol": 0.5, "prune.protocol": "authors"}))[
        "saturation_tol"] == 0.0
    # what a plan does not depend on leaves its settings (and so its cache key) alone
    assert plan_settings(plan_cfg.replace({"prune.parallel": False, "prune.finetune_epochs": 3})) == \
        plan_settings(plan_cfg)


def test_bidirectional_halves_in_parallel_equal_sequential(trained, plan_cfg):
    model, acts, ds = trained
    spec = ("compact", "ptest", "bidirectional")
    seq = plan(make_run(plan_cfg.replace({"prune.parallel": False}), model, ds, acts), spec)
    par = plan(make_run(plan_cfg.replace({"prune.parallel": True}), model, ds, acts), spec)
    strip = lambda p: [{k: v for k, v in vars(d).items() if k != "seconds"} | {"ranking": {  # noqa: E731
        k: v for k, v in d.ranking.items() if k != "seconds"}} for d in p.decisions]
    assert strip(seq) == strip(par) and seq.start == par.start
    widths = acts.widths
    pct = {l: 1 - k / widths[l] for l, k in seq.first_pass.items()}
    assert seq.start == max(pct, key=lambda l: (pct[l], -l))
    by = seq.by_layer()
    assert by[seq.start].phase == "start" and by[seq.start].condition == []
    for l, d in by.items():
        if l > seq.start:
            assert d.phase == "forward-half" and d.condition == [LAYER_NAMES[l - 1]]
        elif l < seq.start:
            assert d.phase == "backward-half" and d.condition == [LAYER_NAMES[l + 1]]
    assert sorted(by) == list(range(13))


def test_interrupted_plan_resumes_from_the_last_finished_layer(trained, plan_cfg, tmp_path, monkeypatch):
    model, acts, ds = trained
    spec = ("full", "xmeans", "forward")
    straight = plan(make_run(plan_cfg, model, ds, acts), spec)
    cached = make_run(plan_cfg, model, ds, acts, folder=tmp_path)
    calls, interrupted = [], []
    real = ranking_mod.rank_channels

    def flaky(*a, **k):
        calls.append(k.get("desc"))
        if len(calls) == 6 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ranking_mod, "rank_channels", flaky)
    with pytest.raises(KeyboardInterrupt):
        plan(cached, spec)
    saved = list((tmp_path / "plans").rglob("*.json"))
    assert len(saved) == 1 and len(Plan.load(saved[0]).decisions) == 5 and not Plan.load(saved[0]).complete
    calls.clear()
    resumed = plan(cached, spec)
    assert len(calls) == 8                                 # only layers 6..13 are ranked again
    assert [d.kept for d in resumed.decisions] == [d.kept for d in straight.decisions]
    calls.clear()
    again, loaded = _plan(cached, spec, progress=False)
    assert again.complete and loaded and calls == []   # finished: loaded


def test_bad_plan_inputs(trained, plan_cfg):
    model, acts, ds = trained
    run = make_run(plan_cfg, model, ds, acts)
    with pytest.raises(ValueError, match="formulation must be one of"):
        plan(run, ("partial", "scree", "forward"))
    with pytest.raises(ValueError, match="cutoff must be one of"):
        plan(run, ("per-layer", "elbow", "forward"))
    with pytest.raises(ValueError, match="direction must be one of"):
        plan(run, ("per-layer", "scree", "backward"))
    with pytest.raises(ValueError, match=r"a plan is \(formulation, cutoff, direction\)"):
        plan(run, ("per-layer", "scree"))
    with pytest.raises(ValueError, match="expected a cmi.models.VGG16 with 13 conv layers, got Sequential"):
        plan(make_run(plan_cfg, torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), ds, acts), ("per-layer", "scree",
                                                                                             "forward"))
    other = build_model(num_classes=10, width=0.0625, head="linear")
    with pytest.raises(ValueError, match="activations were captured from model"):
        plan(make_run(plan_cfg, other, ds, acts), ("per-layer", "scree", "forward"))
    wider = build_model(num_classes=10, width=0.125, head="linear")
    with pytest.raises(ValueError, match="layer widths"):
        plan(make_run(plan_cfg, wider, ds, acts), ("per-layer", "scree", "forward"))
    p = plan(run, ("per-layer", "ptest", "forward"))
    with pytest.raises(ValueError, match="plan .* is for layer widths"):
        check_plan_for_model(p, wider)
    for apply in (mask_model, remove_channels):
        with pytest.raises(ValueError, match="plan .* is for layer widths"):
            apply(wider, p)
    with pytest.raises(ValueError, match="cannot keep 0 of"):
        mask_model(model, {0: []})
    with pytest.raises(ValueError, match="must be distinct indices"):
        remove_channels(model, {0: [0, 0]})


def test_plans_by_another_criterion_cut_its_order(trained, plan_cfg):
    """criterion="l1": every layer keeps exactly the top-k of the L1 order (the filters with the largest
    weight norms, computed here by hand) for the k it chose among its scree candidates; the
    permutation test cuts CMI rankings only."""
    from cmi.criteria import get_criterion

    model, acts, ds = trained
    run = make_run(plan_cfg, model, ds, acts)
    p = plan(run, ("per-layer", "scree", "forward"), criterion="l1")
    assert p.complete and p.settings["criterion"] == "l1" and [d.layer for d in p.decisions] == list(range(13))
    l1 = get_criterion("l1")
    for d, conv in zip(p.decisions, model.convs()):
        order = l1.order(run.context, d.layer)
        norms = conv.weight.detach().abs().sum((1, 2, 3))
        assert sorted(order) == list(range(d.channels))
        assert all(norms[a] >= norms[b] for a, b in zip(order, order[1:]))          # largest norm first
        assert d.keep in d.candidates and len(d.kept) == d.keep
        assert sorted(d.kept) == sorted(order[:d.keep]), d.name
        assert d.condition == []                                                    # never conditioned
    assert p.filters_kept < p.filters_total                                         # something was cut
    with pytest.raises(ValueError, match="permutation-test cutoff cuts CMI rankings only, not 'random'"):
        plan(run, ("per-layer", "ptest", "forward"), criterion="random")
    with pytest.raises(ValueError, match="criterion must be one of"):
        plan(run, ("per-layer", "scree", "forward"), criterion="nope")


def test_cost_report_leaves_the_model_trainable():
    from cmi.report import model_cost
    model = VGG16(width=0.0625, head="linear")
    cost = model_cost(model, min_run_time=0.05)
    assert cost["params"] == count_params(model) and cost["macs"] == hooked_macs(model)
    assert cost["latency_threads"] == torch.get_num_threads()
    assert 0 <= cost["latency_b1_iqr_ms"] < 10 * cost["latency_b1_ms"]      # a spread, in the same unit
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()   # no inference tensors left behind


def test_scree_ignores_round_off_in_flat_stretches():
    cmi = [0.4, 0.1, 0.05, 1e-17, -2e-17, 3e-18, 0.0, 1e-17]
    r = scree_ratios(cmi)
    assert max(r[3:]) == 0.0            # noise over noise is no elbow
    assert scree_candidates(cmi, 2) == [2, 3]


def test_sweep_tables_and_a_cached_rerun(tiny_cfg):
    """One plan end to end: the tables hold what the plan and evaluation produced, and a rerun that
    only loads cached results leaves the recorded costs (timings.json) untouched."""
    from dataclasses import replace

    from cmi.sweep import RESULT_COLUMNS, run_sweep

    cfg = replace(tiny_cfg, cmi=replace(tiny_cfg.cmi, n_samples=32, permutations=10),
                  prune=replace(tiny_cfg.prune, formulations=("compact",), cutoffs=("scree",),
                                directions=("forward",), finetune_epochs=1))
    first = run_sweep(cfg, progress=False)
    assert [r["plan"] for r in first.rows] == ["baseline", "compact-scree-forward"]
    row = first.rows[1]
    p = first.plans["compact-scree-forward"]
    assert row["filters_kept"] == p.filters_kept == sum(l["kept"] for l in first.layers)
    assert row["params"] < first.rows[0]["params"] and row["macs"] < first.rows[0]["macs"]
    assert all(0 <= row[k] <= 1 for k in ("acc_masked", "acc_removed", "acc_finetuned"))
    # the accuracies against an independent computation: the plan applied to the baseline loaded afresh
    from cmi.evaluation import evaluation_path, sweep_budget
    from cmi.train import evaluate, train_baseline

    base = train_baseline(cfg, progress=False)
    model, ds, kept = base.model, first.run.ds, p.kept_channels()
    assert base.cached and first.rows[0]["acc_masked"] == first.rows[0]["acc_removed"] == \
        evaluate(model, ds.test_x, ds.test_y, ds)["accuracy"]
    assert row["acc_masked"] == evaluate(mask_model(model, kept), ds.test_x, ds.test_y, ds)["accuracy"]
    removed = remove_channels(model, kept)
    assert row["acc_removed"] == evaluate(removed, ds.test_x, ds.test_y, ds)["accuracy"]
    assert row["params"] == count_params(removed) and row["macs"] == conv_linear_macs(removed)
    # the fine-tuned network is kept beside its cached evaluation, and scores what the row says
    ft_path = evaluation_path(first.run, kept, ("masked", "removed", "finetuned"), sweep_budget(cfg)).with_suffix(".pt")
    tuned = load_pruned(ft_path)
    assert tuned.kept == kept and [c.out_channels for c in tuned.model.convs()] == p.keep_counts()
    assert row["acc_finetuned"] == evaluate(tuned.model, ds.test_x, ds.test_y, ds)["accuracy"]
    assert not all(torch.equal(a, b) for a, b in zip(tuned.model.state_dict().values(),
                                                      removed.state_dict().values()))    # it was trained
    assert all(v >= 0 for v in first.timings.values()) and first.timings["finetune"] > 0
    header = (first.run.tables / "results.csv").read_text().splitlines()[0]
    assert header == ",".join(RESULT_COLUMNS)
    recorded = (first.run.tables / "timings.json").read_text()

    second = run_sweep(cfg, progress=False)
    assert second.rows == first.rows
    assert second.timings["finetune"] == 0 and second.timings["evaluation"] == 0
    assert (first.run.tables / "timings.json").read_text() == recorded
    parts = {r["part"]: r for r in second.timing_rows()}
    assert parts["fine-tuning"]["seconds when computed"] == first.timings["finetune"] > 0
    assert parts["fine-tuning"]["seconds this run"] == 0
    assert parts["activation capture"]["seconds when computed"] > 0


def test_kept_accepts_the_obvious_forms_and_rejects_the_rest(tmp_path):
    model = VGG16(width=0.125, head="linear")
    ref = mask_model(model, {0: [0, 1], 1: [2, 3], 2: [0]})
    same = mask_model(model, {0: torch.tensor([0, 1]), "conv1_2": np.array([2, 3]), "2": (0,)})
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), same.state_dict().values()))
    for kept, needle in (({0: torch.tensor([0.5])}, "conv1_1: kept channels must be a 1-D integer tensor"),
                         ({0: np.zeros((2, 2), dtype=int)}, "1-D integer tensor or array, got shape"),
                         ({0: "01"}, "conv1_1: kept channels must be a list of int indices, got str"),
                         ({0: [0.0]}, "must be a list of int indices"),
                         ({"conv9_9": [0]}, "unknown layer 'conv9_9'"),
                         ({1.0: [0]}, "a layer must be an int index or a name"),
                         ({0: [0], "conv1_1": [1]}, "layer 'conv1_1' is given twice"),
                         ([0, 1], "kept must be a Plan or a dict")):
        with pytest.raises(ValueError, match=needle):
            mask_model(model, kept)
    torch.save({"spec": {"num_classes": 10, "width": 0.125, "head": "linear"}, "state_dict": model.state_dict()},
               tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt' is not a pruned model file .*cmi\.train\.load_model"):
        load_pruned(tmp_path / "model.pt")


def test_a_plan_applied_to_another_network_of_the_same_widths_warns(trained, plan_cfg):
    import warnings

    model, acts, ds = trained
    p = plan(make_run(plan_cfg, model, ds, acts), ("per-layer", "ptest", "forward"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask_model(model, p)                                   # its own network: silent
    torch.manual_seed(5)
    other = build_model(num_classes=10, width=0.0625, head="linear")
    with pytest.warns(UserWarning, match=f"plan {p.name} was made for network {p.model}, not this one"):
        mask_model(other, p)


def test_sweeps_with_other_prune_settings_keep_their_own_tables(tiny_cfg):
    """Two prune settings share the cache folder (activations, rankings) but never each other's
    results.csv / layers.csv / timings.json / config.yaml."""
    from dataclasses import replace

    from cmi.sweep import run_sweep

    a = replace(tiny_cfg, cmi=replace(tiny_cfg.cmi, n_samples=32),
                prune=replace(tiny_cfg.prune, formulations=("per-layer",), cutoffs=("scree",), directions=("forward",)))
    b = a.replace({"prune.cutoffs": ["xmeans"]})
    ra = run_sweep(a, progress=False)
    before = {f: (ra.run.tables / f).read_text() for f in ("results.csv", "layers.csv", "timings.json", "config.yaml")}
    rb = run_sweep(b, progress=False)
    assert rb.run.folder == ra.run.folder and rb.run.tables != ra.run.tables
    assert {f: (ra.run.tables / f).read_text() for f in before} == before
    assert "per-layer-xmeans-forward" in (rb.run.tables / "results.csv").read_text()
    assert "xmeans" not in before["results.csv"] and "- xmeans" in (rb.run.tables / "config.yaml").read_text()

