"""The channel census and the criteria built on it, on networks with known dead and constant channels."""
import torch

from cmi.activations import capture
from cmi.census import census, census_report, census_summary, constant_channels, constant_kept
from cmi.criteria import Context, get_criterion
from cmi.models import VGG16
from cmi.surgery import mask_model, remove_channels
from cmi.train import evaluate

from conftest import make_run


def _silence(model: VGG16, layer: int, channel: int, beta: float) -> None:
    """gamma = 0: BN emits beta whatever the conv computes, so the channel outputs ReLU(beta)."""
    bn = model.norms()[layer]
    with torch.no_grad():
        bn.weight[channel] = 0.0
        bn.bias[channel] = beta


def _constructed(trained):
    model, _, ds = trained
    net = VGG16(num_classes=10, width=0.0625, head="linear")
    net.load_state_dict(model.state_dict())
    _silence(net, 0, 1, 0.5)        # constant 0.5
    _silence(net, 0, 2, -1.0)       # dead
    _silence(net, 3, 0, -0.2)       # dead
    _silence(net, 3, 5, 2.0)        # constant 2
    return net.eval(), capture(net, ds, n=32, seed=0), ds


def test_constant_channels_on_constructed_maps():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 5, 4, 4, generator=g)
    maps[:, 1] = 0.0
    maps[:, 3] = 0.7
    maps[:, 4] = 0.7 + 1e-6 * torch.rand(6, 4, 4, generator=g)   # sd far below 1e-3 x the largest
    assert constant_channels(maps) == ([1], [3, 4])
    assert constant_channels(maps, tol=0.0) == ([1], [3])


def test_census_finds_the_dead_and_constant_channels_of_a_constructed_network(trained):
    net, acts, _ = _constructed(trained)
    rows = census(net, acts)
    assert [(r["dead"], r["constant_positive"]) for r in rows[:4]] == [(1, 1), (0, 0), (0, 0), (1, 1)]
    assert sum(r["constant"] for r in rows) == 4 and rows[0]["gamma_min"] == 0.0
    assert rows[0]["small_gamma"] == 2 and rows[3]["small_gamma"] >= 2
    kept = constant_kept(acts)
    assert kept[0] == [0, 3] and kept[3] == [j for j in range(8) if j not in (0, 5)] and set(kept) == {0, 3}
    s = census_summary(rows, {"acc_masked": 0.5})
    assert (s["constant"], s["dead"], s["layers_with_constant"], s["acc_masked"]) == (4, 2, 2, 0.5)


def test_removing_the_dead_channels_changes_no_logit_on_the_captured_images(trained):
    net, acts, _ = _constructed(trained)
    dead = {l: constant_channels(maps)[0] for l, maps in enumerate(acts.features)}
    kept = {l: [j for j in range(acts.widths[l]) if j not in d] for l, d in dead.items() if d}
    assert kept and {0, 3} <= set(kept)
    small = remove_channels(net, kept).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(acts.inputs), net(acts.inputs), rtol=1e-5, atol=1e-5)


def test_census_report_scores_exactly_the_constant_channels_removed(trained, tiny_cfg):
    net, acts, ds = _constructed(trained)
    run = make_run(tiny_cfg, net, ds, acts, test_accuracy=evaluate(net, ds.test_x, ds.test_y, ds)["accuracy"])
    s = census_report(run)["summary"]
    assert s["constant"] == sum(r["constant"] for r in census(net, acts)) >= 4
    masked = evaluate(mask_model(net, constant_kept(acts)), ds.test_x, ds.test_y, ds)["accuracy"]
    removed = evaluate(remove_channels(net, constant_kept(acts)), ds.test_x, ds.test_y, ds)["accuracy"]
    assert (s["acc_masked"], s["acc_removed"]) == (masked, removed)


def test_gamma_orders_channels_by_the_size_of_their_bn_scale():
    model = VGG16(width=0.0625, head="linear")
    with torch.no_grad():
        model.norms()[2].weight.copy_(torch.tensor([0.3, -2.0, 0.0, 1.0, 2.0, -0.1, 0.5, 0.05]))
    widths = [c.out_channels for c in model.convs()]
    acts = type("A", (), {"widths": widths, "features": [torch.zeros(2, w, 2, 2) for w in widths]})()
    ctx = Context(model=model, acts=acts)
    assert get_criterion("gamma").order(ctx, 2) == [1, 4, 3, 6, 0, 5, 7, 2]   # |γ|, ties: lower index first
    assert get_criterion("gamma").select(ctx, 2, 3) == [1, 3, 4]


def test_constant_first_removes_the_constant_channels_first_then_random(trained):
    net, acts, _ = _constructed(trained)
    ctx = Context(model=net, acts=acts)
    cf, rnd = get_criterion("constant-first"), get_criterion("random")
    for seed in (0, 1):
        order = cf.order(ctx, 3, seed)
        shuffled = rnd.order(ctx, 3, seed)
        assert set(order[-2:]) == {0, 5} and order[:-2] == [j for j in shuffled if j not in (0, 5)]
        assert cf.select(ctx, 3, 6, seed=seed) == sorted(j for j in range(8) if j not in (0, 5))
    assert cf.order(ctx, 3, 0) != cf.order(ctx, 3, 1) and cf.seeded
    assert cf.order(ctx, 1, 0) == rnd.order(ctx, 1, 0)          # no constant channel: random


def test_census_command_writes_the_census_of_the_cached_baseline_where_told(tmp_path, capsys):
    """`python -m cmi census --out F`: the tables land in F (not figures/), for the baseline the
    `train` command cached, and the printed totals are those of the table."""
    import csv

    from cmi.__main__ import main
    from cmi.config import load_config
    from cmi.train import train_baseline

    words = ["dataset=synthetic", "train_subset=256", "test_subset=128", "val_size=64", "width=0.0625",
             "epochs=1", "batch_size=64", "sensitivity_test_images=128"]
    base = train_baseline(load_config("smoke", words), progress=False)
    out = tmp_path / "census"
    assert main(["census", "--profile", "smoke", "--out", str(out), "--no-progress", *words]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "01_census.csv")))
    total = list(csv.DictReader(open(out / "01_census_summary.csv")))[0]
    assert sum(int(r["channels"]) for r in rows) == sum(c.out_channels for c in base.model.convs()) == int(total["channels"])
    assert float(total["baseline"]) == base.metrics["test_accuracy"]
    assert printed.startswith(f"{total['constant']} of {total['channels']} channels constant")
    assert (out / "01_census.png").is_file() and (out / "provenance" / "01_census.json").is_file()
