"""The authors' code paths, the choice rule, the criteria, BN recalibration and the controls study."""
import dataclasses

import numpy as np
import pytest
import torch

from cmi import authors
from cmi.activations import Activations
from cmi.criteria import CRITERIA, Context, get_criterion
from cmi.cutoffs import choose_within_drop
from cmi.models import LAYER_NAMES, VGG16, layer_widths
from cmi.planner import plan
from cmi.surgery import mask_model, recalibrate_bn, remove_channels
from cmi.train import evaluate


# ----------------------------------------------------------------------------- the authors' paths
def test_scree_on_indices_reproduces_their_readme_sample():
    """README of cmiprune: conv4_3's ranking starts [349, 246, 45] and its scree ratio is 0.5124378."""
    order = [349, 246, 45, 300, 10]
    # by hand: r1 = 103/201, r2 = 201/-255, r3 = -255/290, ends -1
    assert (349 - 246) / (246 - 45) == pytest.approx(0.5124378, abs=1e-7)
    assert authors.scree_on_indices(order, 3) == [1, 2, 3]        # keep counts = positions, not i + 1
    assert authors.scree_on_indices(order, 1) == [1]
    # ties keep the lower position first (Python's stable sort), as theirs
    assert authors.scree_on_indices([4, 3, 2, 1, 0], 2) == [1, 2]


def test_the_minus_one_shift_on_a_five_channel_layer():
    # keep [0, 3, 4]: 0 -> -1 is dropped, 3 -> 2, 4 -> 3
    assert authors.shift_kept([0, 3, 4], 5) == [2, 3]
    # whatever is selected, channel C-1 is never kept, and at most one channel is lost
    for sel in ([4, 3, 2, 1, 0], [4], [1, 4, 2]):
        out = authors.shift_kept(sel, 5)
        assert 4 not in out and len(out) >= len(sel) - 1
    assert authors.shift_kept([4, 3, 2, 1, 0], 5) == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="outside 0..4"):
        authors.shift_kept([5], 5)


def test_xmeans_cuts_ignore_the_shape_of_the_curve():
    """docs/method.md §9: with CMI far below the index range, X-Means on (i, CMI_i) cuts at regular
    positions, within one index of each other for a flat curve and a decaying one."""
    i = np.arange(127)
    flat = authors.xmeans_on_index_axis(list(np.full(127, 0.01)))
    decaying = authors.xmeans_on_index_axis(list(0.3 * np.exp(-i / 10)))
    assert len(flat) == len(decaying) >= 3
    assert all(abs(a - b) <= 1 for a, b in zip(flat, decaying))
    gaps = np.diff([0] + flat)
    assert gaps.max() - gaps.min() <= 2          # evenly spaced along the index axis


# ----------------------------------------------------------------------------- choosing a cut
def test_choose_within_drop():
    cands, scores = [2, 5, 9], [0.10, 0.80, 0.89]
    assert choose_within_drop(cands, scores, 0.90, None) == (9, False)            # None: the most accurate
    assert choose_within_drop(cands, scores, 0.90, 0.02) == (9, False)
    assert choose_within_drop(cands, scores, 0.90, 0.15) == (9, False)
    assert choose_within_drop(cands, scores, 0.90, 0.15, tolerance=0.1) == (5, False)   # fewest within 0.1
    # every candidate at chance: the old rule takes the fewest channels; the fallbacks do not
    chance = [0.1, 0.1, 0.1]
    assert choose_within_drop(cands, chance, 0.90, None)[0] == 2
    assert choose_within_drop(cands, chance, 0.90, 0.01) == (9, True)
    assert choose_within_drop(cands, chance, 0.90, 0.01, fallback="unpruned", channels=16) == (16, True)
    with pytest.raises(ValueError, match="fallback must be one of"):
        choose_within_drop(cands, chance, 0.90, 0.01, fallback="smallest")


# ----------------------------------------------------------------------------- criteria
def _ctx(model, feats_by_layer=None, widths=None):
    widths = widths or [c.out_channels for c in model.convs()]
    feats = feats_by_layer or [torch.zeros(2, w, 2, 2) for w in widths]
    acts = Activations(features=feats, labels=torch.zeros(2, dtype=torch.long), inputs=torch.zeros(2, 3, 32, 32),
                       indices=torch.arange(2), widths=widths, model="x")
    return Context(model, acts)


def test_l1_orders_filters_by_their_norm():
    model = VGG16(width=0.0625, head="linear")
    conv = model.convs()[2]
    with torch.no_grad():
        conv.weight.zero_()
        norms = torch.tensor([3.0, 0.5, 7.0, 1.0, 7.0, 2.0, 0.0, 4.0])
        conv.weight[:, 0, 0, 0] = -norms          # sign must not matter
    ctx = _ctx(model)
    assert get_criterion("l1").order(ctx, 2) == [2, 4, 7, 0, 5, 3, 1, 6]    # ties: lower index first
    assert get_criterion("l1").select(ctx, 2, 3) == [2, 4, 7]


def test_hrank_orders_channels_by_the_average_rank_of_their_maps():
    g = torch.Generator().manual_seed(0)
    n, c, h = 6, 5, 4
    ranks = [2, 4, 1, 3, 0]                        # channel j's maps have rank ranks[j]
    maps = torch.zeros(n, c, h, h)
    for j, r in enumerate(ranks):
        for i in range(n):
            if r:
                maps[i, j] = torch.rand(h, r, generator=g) @ torch.rand(r, h, generator=g)
    model = VGG16(width=0.0625, head="linear")
    widths = [cv.out_channels for cv in model.convs()]
    feats = [torch.zeros(n, w, 2, 2) for w in widths]
    feats[0] = maps
    ctx = _ctx(model, feats, [5] + widths[1:])
    assert get_criterion("hrank").order(ctx, 0) == [1, 3, 0, 2, 4]


def test_random_is_a_seeded_permutation_and_cmi_keeps_a_plans_choice():
    model = VGG16(width=0.0625, head="linear")
    ctx = _ctx(model)
    r = get_criterion("random")
    a, b, other = r.order(ctx, 4, seed=1), r.order(ctx, 4, seed=1), r.order(ctx, 4, seed=2)
    assert a == b and sorted(a) == list(range(ctx.acts.widths[4])) and a != other
    decision = type("D", (), {"kept": [5, 1, 3]})()
    assert get_criterion("cmi").select(ctx, 4, 3, decision) == [1, 3, 5]
    assert set(CRITERIA) >= {"cmi", "cmi-median", "l1", "hrank", "random"}
    with pytest.raises(ValueError, match="criterion must be one of"):
        get_criterion("taylor")


# ----------------------------------------------------------------------------- BN recalibration
def test_recalibration_sets_bn_statistics_to_the_data_average():
    torch.manual_seed(0)
    model = VGG16(width=0.0625, head="linear").eval()
    bn = model.features[1]
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    norm = lambda x: x.float() / 255 - 0.5  # noqa: E731
    with torch.no_grad():
        conv_out = model.convs()[0](norm(images))
    recalibrate_bn(model, images, norm, batch_size=16)
    # momentum None: the cumulative average over batches of the per-batch means (16, 16, 8 images)
    batch_means = [conv_out[i:i + 16].mean((0, 2, 3)) for i in (0, 16, 32)]
    assert torch.allclose(bn.running_mean, sum(batch_means) / 3, atol=1e-5)
    assert not model.training and bn.momentum == 0.1        # eval mode, momentum restored


# ----------------------------------------------------------------------------- plans and controls
@pytest.fixture
def authors_cfg(plan_cfg):
    """The planner's config under the authors' protocol with their 1 pp choice rule."""
    return plan_cfg.replace({"prune.protocol": "authors", "prune.max_drop": 0.01})


def test_authors_protocol_applies_every_path(trained, authors_cfg, monkeypatch):
    from conftest import make_run

    from cmi import planner

    model, acts, ds = trained
    run = make_run(authors_cfg, model, ds, acts)
    p, _ = plan(run, ("full", "scree", "bidirectional"), progress=False)
    assert p.protocol == "authors" and p.complete and sorted(d.layer for d in p.decisions) == list(range(13))
    for d in p.decisions:
        full = d.ranking["order"] + [j for j in range(d.channels) if j not in d.ranking["order"]]
        assert d.conditioning == full[:d.keep]                      # Z: the unshifted selection
        assert d.kept == authors.shift_kept(full[:d.keep], d.channels)
        assert d.channels - 1 not in d.kept
        if d.scores:
            assert d.chosen_on == "test"
            assert set(d.candidates) <= set(authors.scree_on_indices(d.ranking["order"], 3))
    # full CMI bi-directional is one chain: the backward half is conditioned on the forward half too
    fwd = [LAYER_NAMES[l] for l in range(p.start + 1, 13)]
    for d in p.decisions:
        if d.phase == "backward-half":
            assert set(fwd) <= set(d.condition)

    # compact candidates are scored with only the previous layer pruned
    scored = []
    real = planner._Planner.score

    def spy(self, applied):
        scored.append(sorted(applied))
        return real(self, applied)

    monkeypatch.setattr(planner._Planner, "score", spy)
    plan(run, ("compact", "scree", "forward"), progress=False)
    assert scored and max(len(s) for s in scored) <= 2
    scored.clear()
    q, _ = plan(run.with_protocol("paper"), ("compact", "scree", "forward"), progress=False)
    assert q.protocol == "paper"
    assert max(len(s) for s in scored) > 2                          # the paper's protocol: the whole chain


def test_paper_protocol_falls_back_instead_of_chasing_chance(trained, plan_cfg):
    from conftest import make_run

    model, acts, ds = trained
    strict = plan_cfg.replace({"prune.max_drop": 0.0, "prune.fallback": "unpruned"})
    p, _ = plan(make_run(strict, model, ds, acts), ("per-layer", "scree", "forward"), progress=False)
    full_acc = evaluate(model, ds.val_x, ds.val_y, ds)["accuracy"]
    for d in p.decisions:
        if d.scores:
            assert d.reference == full_acc          # reference "network": the unpruned network, every layer
            ok = [k for k, s in zip(d.candidates, d.scores) if s >= d.reference]
            assert d.fallback == (not ok)
            assert d.keep == (d.channels if not ok else d.keep) and (not ok or d.keep in ok)
    chain = strict.replace({"prune.reference": "chain", "prune.fallback": "largest", "prune.max_drop": 0.01})
    q, _ = plan(make_run(chain, model, ds, acts), ("per-layer", "scree", "forward"), progress=False)
    refs = [d.reference for d in q.decisions if d.scores]
    assert refs[0] == full_acc and len(set(refs)) > 1     # "chain": each layer's own reference
    for d in q.decisions:
        if d.fallback:
            assert d.keep == max(d.candidates)


def test_controls_keep_the_plans_counts_and_cmi_is_the_plan(tiny_cfg):
    from cmi.controls import plan_controls, study_plans, summarize
    from cmi.criteria import kept_at_counts
    from cmi.data import seeded_indices
    from cmi.evaluation import controls_budget
    from cmi.evaluation import evaluate as evaluate_kept
    from cmi.layerwise import sensitivity
    from cmi.names import AUTHORS_PLANS
    from cmi.run import make_plans, plan_specs, prepare_run
    from cmi.train import fit

    cfg = tiny_cfg.replace({"cmi.n_samples": 32, "cmi.permutations": 10, "prune.formulations": ["compact"],
                            "prune.cutoffs": ["scree"], "prune.directions": ["forward"], "controls.seeds": 2,
                            "controls.test_images": 96, "controls.recal_images": 64,
                            "controls.finetune_images": 128,
                            "controls.sensitivity_keep": [0.5], "controls.sensitivity_seeds": 2,
                            "controls.sensitivity_test_images": 64,
                            "controls.criteria": ["cmi", "cmi-median", "l1", "hrank", "random"],
                            "controls.modes": ["masked", "recalibrated", "finetuned"]})
    run = prepare_run(cfg, progress=False)
    plans = study_plans(run, progress=False)
    rows = plan_controls(run, plans, progress=False)
    assert {r["protocol"] for r in rows} == {"paper", "authors"}
    assert len(rows) == 2 * (4 + 2)                 # 2 protocols x (cmi, cmi-median, l1, hrank + 2 random seeds)
    for r in rows:
        assert all(0 <= r[f"acc_{m}"] <= 1 for m in ("masked", "recalibrated", "finetuned"))
        assert r["acc_removed"] is None                 # not among the controls.modes asked for
    p = make_plans(run, plan_specs(cfg, "paper"), protocol="paper", progress=False).plans[0]
    assert [(proto, q.name) for proto, q in plans] == [("paper", p.name), ("authors", p.name)]
    # the authors' code defines nine plans (one script each); compact-scree-forward is one of them
    assert [(q.formulation, q.cutoff, q.direction)
            for q in make_plans(run, plan_specs(cfg, "authors"), protocol="authors", progress=False).plans] == [
        ("compact", "scree", "forward")] and ("compact", "scree", "forward") in AUTHORS_PLANS
    assert authors.PLANS == AUTHORS_PLANS and len(AUTHORS_PLANS) == 9
    none = prepare_run(cfg.replace({"prune.formulations": ["full"], "prune.cutoffs": ["ptest"]}), progress=False)
    assert plan_specs(none.cfg, "authors") == []                 # full-ptest-forward: no script of theirs
    assert make_plans(none, plan_specs(none.cfg, "authors"), protocol="authors", progress=False).plans == []
    for crit in ("cmi", "l1", "hrank", "random", "cmi-median"):
        kept = kept_at_counts(run.context, crit, p.keep_counts(), p)
        assert [len(kept.get(l, range(w))) for l, w in enumerate(p.widths)] == p.keep_counts()
    assert kept_at_counts(run.context, "cmi", p.keep_counts(), p) == p.kept_channels()

    # every row's accuracies, computed here from the surgery primitives on the same seeded draws:
    # test images (seed), recalibration images (seed + 1), fine-tuning images (seed + 2)
    ds, model = run.ds, run.model
    idx = seeded_indices(len(ds.test_y), cfg.controls.test_images, cfg.seed)
    assert len(idx) == 96
    tx, ty = ds.test_x[idx], ds.test_y[idx]
    recal_x = ds.train_x[seeded_indices(len(ds.train_y), cfg.controls.recal_images, cfg.seed + 1)]

    def test_acc(net):
        return evaluate(net, tx, ty, ds)["accuracy"]

    by_proto = dict(plans)
    for r in rows:
        q = by_proto[r["protocol"]]
        kept = kept_at_counts(run.context, r["criterion"], q.keep_counts(), q, r["seed"])
        assert r["acc_masked"] == test_acc(mask_model(model, kept)), r
        assert r["acc_recalibrated"] == test_acc(recalibrate_bn(remove_channels(model, kept), recal_x,
                                                                ds.normalize)), r
    masked = test_acc(mask_model(model, p))
    cmi_row = next(r for r in rows if r["protocol"] == "paper" and r["criterion"] == "cmi")
    assert cmi_row["acc_masked"] == masked
    # fine-tuned: one epoch at prune.finetune_lr, no warm-up, on the seeded draw, from the recalibrated network
    net = recalibrate_bn(remove_channels(model, p.kept_channels()), recal_x, ds.normalize)
    fidx = seeded_indices(len(ds.train_y), cfg.controls.finetune_images, cfg.seed + 2)
    sub = dataclasses.replace(ds, train_x=ds.train_x[fidx], train_y=ds.train_y[fidx])
    fit(net, sub, dataclasses.replace(cfg.train, epochs=1, lr=cfg.prune.finetune_lr, warmup_epochs=0.0),
        seed=cfg.seed, augment_images=cfg.data.augment, progress=False, eval_each_epoch=False)
    assert cmi_row["acc_finetuned"] == test_acc(net)

    again = plan_controls(run, study_plans(run, progress=False), progress=False)
    assert again == rows                            # cached: identical
    summary = summarize(rows)
    rnd = next(s for s in summary if s["criterion"] == "random" and s["protocol"] == "paper")
    vals = [r["acc_masked"] for r in rows if r["criterion"] == "random" and r["protocol"] == "paper"]
    assert rnd["seeds"] == 2 and rnd["masked_mean"] == pytest.approx(np.mean(vals))
    assert rnd["masked_sd"] == pytest.approx(np.std(vals, ddof=1))
    ranks = [s["masked_rank"] for s in summary if s["protocol"] == "paper"]
    assert min(ranks) == 1 and max(ranks) <= 5
    sens = sensitivity(run, progress=False)
    assert len(sens) == 13 * (4 + 2)
    # each l1 row, from the weights: the layer alone keeps its round(0.5 C) filters of largest L1 norm,
    # scored on the seeded sensitivity draw (masked) and recalibrated on sensitivity_recal_images (seed + 1)
    idx_s = seeded_indices(len(ds.test_y), cfg.controls.sensitivity_test_images, cfg.seed)
    recal_s = ds.train_x[seeded_indices(len(ds.train_y), cfg.controls.sensitivity_recal_images, cfg.seed + 1)]
    l1_rows = [r for r in sens if r["criterion"] == "l1"]
    assert [r["layer"] for r in l1_rows] == list(range(13))
    for r in l1_rows:
        w = model.convs()[r["layer"]].weight.detach()
        keep = round(0.5 * w.shape[0])
        kept = {r["layer"]: sorted(torch.argsort(w.abs().sum((1, 2, 3)), descending=True)[:keep].tolist())}
        assert (r["kept"], r["channels"], r["keep_fraction"]) == (keep, w.shape[0], 0.5)
        assert r["acc_masked"] == evaluate(mask_model(model, kept), ds.test_x[idx_s], ds.test_y[idx_s],
                                           ds)["accuracy"], r
        assert r["acc_recalibrated"] == evaluate(recalibrate_bn(remove_channels(model, kept), recal_s, ds.normalize),
                                                 ds.test_x[idx_s], ds.test_y[idx_s], ds)["accuracy"], r
    assert sorted(r["seed"] for r in sens if r["criterion"] == "random" and r["layer"] == 0) == [0, 1]
    one = evaluate_kept(run, {0: [0]}, ("masked",), dataclasses.replace(controls_budget(cfg), test_images=64))
    assert set(one) == {"acc_masked", "filters_kept", "seconds", "seconds_masked"} and one["filters_kept"] == sum(p.widths) - 3
    idx64 = seeded_indices(len(ds.test_y), 64, cfg.seed)
    assert one["acc_masked"] == evaluate(mask_model(model, {0: [0]}), ds.test_x[idx64], ds.test_y[idx64],
                                         ds)["accuracy"]


def test_saturation_rows_are_each_rules_exact_ranking_read_at_the_tolerance(trained, tiny_cfg):
    """layerwise.saturation, row by row, against an exact ranking (every greedy pick) of the same
    activations with the same rule: I(Y; L), CMI_1, the median σ, and the first pick t with
    CMI_t <= tol x I(Y; L) (None when no pick before the last two reaches it)."""
    from conftest import make_run

    from cmi.layerwise import saturation
    from cmi.ranking import rank_channels

    model, acts, ds = trained
    cfg = tiny_cfg.replace({"controls.saturation_tol": 0.05})      # loose enough that some layers saturate
    rows = saturation(make_run(cfg, model, ds, acts), progress=False)
    assert [(r["sigma_rule"], r["layer"]) for r in rows] == [(rule, n) for rule in ("paper", "median")
                                                             for n in LAYER_NAMES]
    picks = []
    for r in rows:
        layer = LAYER_NAMES.index(r["layer"])
        exact = rank_channels(acts.features[layer], acts.labels, alpha=cfg.cmi.alpha, sigma=r["sigma_rule"],
                              saturation_tol=0)
        mi_all, c = exact.info["mi_labels_all"], exact.n_channels
        assert r["channels"] == c and r["mi_all"] == pytest.approx(mi_all, rel=1e-9)
        assert r["cmi_1"] == pytest.approx(exact.cmi[0], rel=1e-9, abs=1e-12)
        sig = exact.sigma["features"]
        assert r["sigma_median"] == pytest.approx(float(np.median(sig)) if isinstance(sig, list) else sig)
        first = next((t for t, v in enumerate(exact.cmi, 1) if v <= 0.05 * abs(mi_all) and t < c - 1), None)
        assert r["picks"] == first, r
        picks.append(first)
    assert None in picks and len(set(picks) - {None}) > 3       # the data exercise both outcomes


def test_removed_and_recalibrated_equals_masked_with_silent_bn_and_recalibrated():
    """Removing a channel is masking it with its BN output forced to 0: after recalibration both
    networks compute the same function (an independent check of the removed + recal mode)."""
    torch.manual_seed(0)
    model = VGG16(width=0.0625, head="linear").eval()
    widths = layer_widths(0.0625)
    kept = {3: [0, 2, 5], 7: list(range(0, widths[7], 2))}
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    norm = lambda x: x.float() / 255 - 0.5  # noqa: E731
    removed = recalibrate_bn(remove_channels(model, kept), images, norm)
    silent = mask_model(model, kept)
    bns = [m for m in silent.features if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for l, k in kept.items():
            pruned = sorted(set(range(widths[l])) - set(k))
            bns[l].weight[pruned] = 0
            bns[l].bias[pruned] = 0
    recalibrate_bn(silent, images, norm)
    x = norm(images[:8])
    assert torch.allclose(removed(x), silent(x), atol=1e-4)


# ----------------------------------------------------------------------------- the path ablation
def test_one_path_protocols_differ_from_their_base_in_that_path_alone():
    from cmi.names import AUTHORS_PLANS, protocol_names
    from cmi.protocols import BASES, PATHS, Protocol, get_protocol

    fields = [f.name for f in dataclasses.fields(Protocol) if f.name not in ("name", "label", "plans")]
    paper, theirs = BASES["paper"], BASES["authors"]
    # every field in which the two protocols differ belongs to exactly one path
    assert sorted(f for fs in PATHS.values() for f in fs) == sorted(
        f for f in fields if getattr(paper, f) != getattr(theirs, f))
    for path, changed in PATHS.items():
        on, off = get_protocol(f"paper+{path}"), get_protocol(f"authors-{path}")
        assert on.plans == off.plans == authors.PLANS == AUTHORS_PLANS
        assert (on.name, off.name) == (f"paper+{path}", f"authors-{path}")
        for f in fields:
            assert getattr(on, f) == getattr(theirs if f in changed else paper, f), (path, f)
            assert getattr(off, f) == getattr(paper if f in changed else theirs, f), (path, f)
        assert ("test data" in on.label) == (path == "chosen-on-test")
        assert ("test data" in off.label) == (path != "chosen-on-test")
    # every name protocol_names() lists is a protocol, each once, the two bases first
    names = protocol_names()
    assert names[:2] == ["paper", "authors"] and len(set(names)) == len(names) == 2 + 2 * len(PATHS)
    assert [get_protocol(n).name for n in names] == names
    with pytest.raises(ValueError, match="one-path variant"):
        get_protocol("paper+no-such-path")
    with pytest.raises(ValueError, match="one-path variant"):
        get_protocol("authors+shifted-kept")


def test_path_ablation_isolates_each_path(tiny_cfg):
    from cmi.ablation import ablation_specs, ablation_summary, path_ablation
    from cmi.names import protocol_names
    from cmi.run import prepare_run

    cfg = tiny_cfg.replace({"cmi.n_samples": 32, "cmi.permutations": 10, "prune.formulations": ["compact"],
                            "prune.cutoffs": ["scree"], "prune.directions": ["forward"], "controls.recal_images": 64})
    assert ablation_specs(cfg) == [("compact", "scree", "forward")]
    run = prepare_run(cfg, progress=False)
    rows = path_ablation(run, progress=False)
    assert [r["protocol"] for r in rows] == protocol_names()        # one plan: compact-scree-forward
    by = {r["protocol"]: r for r in rows}
    # paths that cannot touch a compact scree plan leave it as its base protocol made it
    for path in ("unconditioned-shuffles", "full-one-chain"):
        for proto, base in ((f"paper+{path}", "paper"), (f"authors-{path}", "authors")):
            assert not by[proto]["changed"]
            assert {k: by[proto][k] for k in ("filters_kept", "acc_masked", "acc_recalibrated")} == {
                k: by[base][k] for k in ("filters_kept", "acc_masked", "acc_recalibrated")}
    assert by["paper+shifted-kept"]["changed"] and by["authors-shifted-kept"]["changed"]
    summary = {s["protocol"]: s for s in ablation_summary(rows, baseline_acc=0.5)}
    for path in ("shifted-kept", "scree-on-indices"):
        assert summary[f"paper+{path}"]["effect_pruned"] == pytest.approx(
            by[f"paper+{path}"]["pruned_pct"] - by["paper"]["pruned_pct"], abs=0.051)
        assert summary[f"authors-{path}"]["effect_masked"] == pytest.approx(
            100 * (by["authors"]["acc_masked"] - by[f"authors-{path}"]["acc_masked"]), abs=0.0051)
        assert (summary[f"paper+{path}"]["switched"], summary[f"authors-{path}"]["switched"]) == ("on", "off")
    assert "effect_pruned" not in summary["paper"] and summary["authors"]["plans"] == 1
    assert summary["paper"]["switched"] == summary["authors"]["switched"] == "-"


def test_plans_computed_two_at_a_time_in_processes_equal_the_sequential_ones(tiny_cfg, monkeypatch):
    """The nine plans of the authors' protocol (exact rankings, every cutoff and formulation), computed
    in this process one after another, then again from empty plan, ranking and score caches by
    :func:`cmi.run.make_plans` in two worker processes: the same decisions, rankings and scores."""

    import cmi.run as run_module
    from cmi.run import make_plans, plan_specs, prepare_run

    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k != "seconds"}
        return [strip(v) for v in d] if isinstance(d, list) else d

    cfg = tiny_cfg.replace({"cmi.n_samples": 32, "cmi.permutations": 10,
                            "prune.formulations": ["per-layer", "compact", "full"],
                            "prune.cutoffs": ["scree", "xmeans", "ptest"],
                            "prune.directions": ["forward", "bidirectional"]})
    run = prepare_run(cfg, progress=False)
    specs = plan_specs(cfg, "authors")
    assert len(specs) == 9
    calls = []
    real = run_module._in_workers
    monkeypatch.setattr(run_module, "_in_workers", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    first = make_plans(run, specs, protocol="authors", progress=False, workers=1)
    assert calls == [] and len(first.computed) == 9
    sequential = [strip(p.to_dict()) for p in first.plans]
    assert len(sequential) == 9
    for sub in ("plans", "rankings", "scores"):
        (run.folder / sub).rename(run.folder / f"{sub}-sequential")
    second = make_plans(run, specs, protocol="authors", progress=False, workers=2)
    assert calls == [8]                               # the first alone, the other eight in the workers
    assert len(second.computed) == 9
    parallel = [strip(p.to_dict()) for p in second.plans]
    assert parallel == sequential
