"""The closed-form repairs against cases where they must be exact, and where their images come from."""
import pytest
import torch

from cmi.evaluation import Budget, evaluate
from cmi.models import VGG16
from cmi import repair
from cmi.repair import _layer_inputs, compensate, merge, reconstruct
from cmi.surgery import remove_channels

from conftest import make_run


def _copy(model):
    net = VGG16(num_classes=10, width=0.0625, head="linear")
    net.load_state_dict(model.state_dict())
    return net.eval()


def _constant(net, layer, channel, beta):
    bn = net.norms()[layer]
    with torch.no_grad():
        bn.weight[channel], bn.bias[channel] = 0.0, beta


def _images(ds, n=64):
    return ds.normalize(ds.train_x[:n]).float()


def test_compensated_gives_the_unpruned_logits_when_the_removed_channels_are_constant(trained):
    model, _, ds = trained
    net = _copy(model)
    _constant(net, 12, 3, 0.7)                 # read by the head: the fold is exact everywhere
    _constant(net, 12, 9, 1.3)
    _constant(net, 3, 5, 2.0)                  # read by conv3_1 through its centre tap only: exact at the border too
    with torch.no_grad():
        w = net.convs()[4].weight
        centre = w[:, 5, 1, 1].clone()
        w[:, 5] = 0.0
        w[:, 5, 1, 1] = centre
    kept = {12: [j for j in range(32) if j not in (3, 9)], 3: [j for j in range(8) if j != 5]}
    x = ds.normalize(ds.test_x[:100]).float()
    with torch.no_grad():
        want = net(x)
        fixed = compensate(net, kept, _images(ds))(x)
        plain = remove_channels(net, kept).eval()(x)
    torch.testing.assert_close(fixed, want, rtol=1e-4, atol=1e-4)
    assert (plain - want).abs().max() > 1e-2                       # removal alone is not exact


def test_reconstructed_recovers_the_next_layer_when_removed_channels_copy_kept_ones(trained):
    model, _, ds = trained
    net = _copy(model)
    with torch.no_grad():                      # channel 6 of conv2_1 computes exactly what channel 2 does
        conv, bn = net.convs()[2], net.norms()[2]
        conv.weight[6], conv.bias[6] = conv.weight[2], conv.bias[2]
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t[6] = t[2]
    kept = {2: [j for j in range(8) if j != 6]}
    images = _images(ds)
    fixed = reconstruct(net, kept, images)
    with torch.no_grad():
        want = torch.nn.functional.conv2d(_layer_inputs(net, images)[2], net.convs()[3].weight, net.convs()[3].bias,
                                          padding=1)
        got = torch.nn.functional.conv2d(_layer_inputs(fixed, images)[2], fixed.convs()[3].weight,
                                         fixed.convs()[3].bias, padding=1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        x = ds.normalize(ds.test_x[:100]).float()
        torch.testing.assert_close(fixed(x), net(x), rtol=1e-3, atol=1e-3)
        naive = remove_channels(net, kept).eval()
        assert (naive(x) - net(x)).abs().max() > 1e-2


def test_no_repair_reads_test_data(trained, tiny_cfg, monkeypatch):
    model, acts, ds = trained
    run = make_run(tiny_cfg, model, ds, acts)
    seen = []
    for name in ("compensate", "reconstruct"):
        real = getattr(repair, name)
        monkeypatch.setattr(repair, name, lambda m, k, images, *a, _real=real, **kw: seen.append(images)
                            or _real(m, k, images, *a, **kw))
    kept = {4: list(range(10)), 9: list(range(0, 32, 2))}
    row = evaluate(run, kept, ("compensated", "reconstructed", "merged"), Budget(recal_images=48))
    assert 0 <= row["acc_compensated"] <= 1 and 0 <= row["acc_reconstructed"] <= 1
    train = {tuple(v.flatten().tolist()) for v in ds.normalize(ds.train_x).float()}
    test = {tuple(v.flatten().tolist()) for v in ds.normalize(ds.test_x).float()}
    assert len(seen) == 2 and all(len(images) == 48 for images in seen)
    rows = [tuple(v.flatten().tolist()) for images in seen for v in images]
    assert all(r in train for r in rows) and not any(r in test for r in rows)


def test_merged_gives_the_unpruned_logits_when_a_removed_filter_is_a_positive_multiple_of_a_kept_one(trained):
    model, _, ds = trained
    net = _copy(model)
    with torch.no_grad():                      # channel 6 of conv3_1 outputs exactly 2x channel 1 after BN + ReLU
        conv, bn = net.convs()[4], net.norms()[4]
        conv.weight[6], conv.bias[6] = 2 * conv.weight[1], 2 * conv.bias[1]
        bn.running_mean[6], bn.running_var[6] = 2 * bn.running_mean[1], 4 * bn.running_var[1] + 3 * bn.eps
        bn.weight[6], bn.bias[6] = 2 * bn.weight[1], 2 * bn.bias[1]
    kept = {4: [j for j in range(16) if j != 6]}
    x = ds.normalize(ds.test_x[:100]).float()
    with torch.no_grad():
        want = net(x)
        assert (remove_channels(net, kept).eval()(x) - want).abs().max() > 1e-2
        torch.testing.assert_close(merge(net, kept)(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_merged_drops_a_removed_filter_with_no_kept_filter_of_positive_scale(trained, sign):
    """conv3_1 keeps only filter 1; every other filter is sign x filter 1 (same BN scale). With sign -1
    no kept filter has a positive scale s, so merging drops them all, as plain removal does; with
    sign +1 each is merged into filter 1 (s = 1) and the result differs from plain removal."""
    model, _, ds = trained
    net = _copy(model)
    with torch.no_grad():
        conv, bn = net.convs()[4], net.norms()[4]
        for j in range(16):
            if j != 1:
                conv.weight[j] = sign * conv.weight[1]
                bn.weight[j], bn.running_var[j] = bn.weight[1], bn.running_var[1]
    kept = {4: [1]}
    x = ds.normalize(ds.test_x[:50]).float()
    with torch.no_grad():
        merged, removed = merge(net, kept)(x), remove_channels(net, kept).eval()(x)
    if sign < 0:
        assert torch.equal(merged, removed)
    else:
        assert (merged - removed).abs().max() > 1e-3


def test_the_reader_inputs_are_what_each_reader_receives_in_the_forward_pass(trained):
    """Hooks on the next conv layers and on the head's linear layer see exactly the maps the repairs fit
    on (the head's input is max-pooled by the last pool before the global average)."""
    model, _, ds = trained
    net, x, seen = _copy(model), _images(ds, 16), []
    hooks = [r.register_forward_hook(lambda m, i, o: seen.append(i[0].clone())) for r in repair._readers(net)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    got = _layer_inputs(net, x)
    assert len(got) == len(seen) == 13 and all(torch.equal(a, b) for a, b in zip(got, seen))


def test_reconstruct_in_one_pass_equals_recomputing_the_inputs_after_every_refit(trained):
    import copy
    model, _, ds = trained
    net, x = _copy(model), _images(ds)
    kept = {0: [0, 1], 4: [1, 3, 5, 6, 7], 7: list(range(0, 32, 2)), 12: [0, 2, 5]}
    naive = copy.deepcopy(net)
    targets = _layer_inputs(net, x)
    for l in sorted(kept):
        have = _layer_inputs(naive, x)[l][:, kept[l]]
        with torch.no_grad():
            repair._refit(repair._readers(naive)[l], repair._readers(net)[l], have, targets[l], kept[l], 1000 * l)
    want = remove_channels(naive, kept).state_dict()
    got = reconstruct(net, kept, x).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_no_repair_changes_the_callers_model(trained):
    """Every repair works on a copy: the caller's model keeps its training mode, weights and BN statistics,
    and a model in training mode is repaired exactly as the same model in eval mode."""
    model, _, ds = trained
    kept, x = {2: [0, 1, 3, 4, 5, 7], 12: list(range(0, 32, 2))}, _images(ds)
    for fix in (lambda m: compensate(m, kept, x), lambda m: reconstruct(m, kept, x), lambda m: merge(m, kept)):
        net = _copy(model).train()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        got = fix(net).state_dict()
        assert net.training and all(m.training for m in net.modules())
        after = net.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before)
        want = fix(_copy(model)).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_the_refit_rows_are_the_im2col_columns_at_the_drawn_positions():
    """The patches gathered at the drawn positions equal torch's unfold (im2col) at those positions."""
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    seen = torch.randn(5, 3, 16, 16, generator=g)
    reader = torch.nn.Conv2d(3, 4, 3, padding=1)
    got = repair._columns(seen, reader, torch.Generator().manual_seed(7))
    cols = F.unfold(seen.double(), 3, padding=1)                                  # (n, 27, 256)
    draw = torch.Generator().manual_seed(7)
    pick = torch.stack([torch.randperm(256, generator=draw)[:repair.POSITIONS] for _ in range(5)])
    want = cols.gather(2, pick[:, None, :].expand(-1, 27, -1)).transpose(1, 2).reshape(-1, 27)
    assert got.shape == (5 * repair.POSITIONS, 27) and torch.equal(got, want)


def test_pruned_a_halves_conv1_1_and_conv4_1_to_conv5_3():
    from cmi.models import LAYER_NAMES
    from cmi.repairs_study import pruned_a_counts
    full = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    counts = pruned_a_counts(full)
    assert sum(full) - sum(counts) == 1568 and round(100 * 1568 / 4224, 1) == 37.1    # Li et al.'s pruned-A
    assert [n for n, a, b in zip(LAYER_NAMES, full, counts) if a != b] == ["conv1_1", "conv4_1", "conv4_2", "conv4_3",
                                                                          "conv5_1", "conv5_2", "conv5_3"]


def test_the_whole_test_split_scores_pruned_a_as_removing_the_channels_by_hand_does(trained):
    """The full-test rows of the repair study, with controls scored on 40 of the 128 test images:
    'removed' equals Torch-Pruning's removal evaluated on every test image, computed here without
    the evaluation registry, and not what the 40-image draw gives."""
    import dataclasses

    from cmi.config import load_config
    from cmi.criteria import kept_at_counts
    from cmi.evaluation import controls_budget
    from cmi.repairs_study import FULL_TEST_MODES, _evaluate_layout, pruned_a_counts
    from cmi.train import evaluate as test_accuracy

    model, acts, ds = trained
    cfg = load_config("smoke", {"dataset": "synthetic", "train_subset": 512, "test_subset": 128, "val_size": 128,
                                "width": 0.0625, "sensitivity_test_images": 128, "controls.test_images": 40})
    run = make_run(cfg, model, ds, acts)
    counts = pruned_a_counts(acts.widths)
    whole = dataclasses.replace(controls_budget(cfg), test_images=None, recal_images=48)
    rows = _evaluate_layout(run, "pruned-A", counts, ["l1"], None, FULL_TEST_MODES, whole)
    drawn = _evaluate_layout(run, "pruned-A", counts, ["l1"], None, FULL_TEST_MODES)
    kept = kept_at_counts(run.context, "l1", counts, None, 0)
    by_hand = test_accuracy(remove_channels(model, kept), ds.test_x, ds.test_y, ds)["accuracy"]
    assert len(ds.test_y) == 128 and controls_budget(cfg).test_images == 40
    assert len(rows) == 1 and rows[0]["acc_removed"] == by_hand
    assert round(by_hand * 128) == by_hand * 128 and round(drawn[0]["acc_removed"] * 40, 6) % 1 == 0
    assert set(k for k in rows[0] if k.startswith("acc_")) == {f"acc_{m}" for m in FULL_TEST_MODES}
