import dataclasses
import math

import pytest
import torch

from cmi.data import load_dataset
from cmi.errors import TrainingDiverged
from cmi.models import build_model
from cmi.store import load_torch
from cmi.train import evaluate, fit, load_model, lr_lambda, make_optimizer, small_gamma_fractions, train_baseline


def test_lr_schedule_warmup_then_cosine():
    total, warm = 100, 10
    m = [lr_lambda(s, total, warm) for s in range(total)]
    assert m[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])
    assert m[warm] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(m[warm:], m[warm + 1:]))
    assert m[-1] < 0.01 and lr_lambda(warm + (total - warm) // 2, total, warm) == pytest.approx(0.5)


def _one_cycle(step: int, total: int, peak: float, lo: float, hi: float) -> tuple[float, float]:
    """The 1cycle policy in closed form (Smith & Topin; torch's defaults: 30 % up from peak/25, cosine
    annealing, down to peak/25/1e4, momentum cycled hi -> lo -> hi): (lr, momentum) at ``step``."""
    up = 0.3 * total - 1
    def cos(start, end, pct):
        return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)
    if step <= up:
        return cos(peak / 25, peak, step / up), cos(hi, lo, step / up)
    pct = (step - up) / (total - 1 - up)
    return cos(peak, peak / 25 / 1e4, pct), cos(lo, hi, pct)


def test_onecycle_schedule_follows_the_closed_form(tiny_cfg):
    tcfg = tiny_cfg.replace({"schedule": "onecycle", "lr": 0.01, "epochs": 5}).train
    opt, sched = make_optimizer(torch.nn.Linear(3, 2), tcfg, steps_per_epoch=20)
    seen = []
    for _ in range(100):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        opt.step()
        sched.step()
    want = [_one_cycle(s, 100, 0.01, 0.85, 0.95) for s in range(100)]
    assert [lr for lr, _ in seen] == pytest.approx([lr for lr, _ in want], rel=1e-9)
    assert [m for _, m in seen] == pytest.approx([m for _, m in want], rel=1e-9)
    assert max(lr for lr, _ in seen) == pytest.approx(0.01) and seen[-1][0] == pytest.approx(4e-8)


@pytest.mark.parametrize("decay_norm", [False, True])
def test_decay_norm_decays_exactly_the_bn_and_bias_parameters(tiny_cfg, decay_norm):
    """With zero gradients an SGD step moves a parameter only through its weight decay."""
    tcfg = tiny_cfg.replace({"decay_norm": decay_norm, "weight_decay": 0.1, "momentum": 0.0}).train
    torch.manual_seed(0)
    model = build_model(num_classes=3, width=0.0625, head="linear")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.uniform_(0.5, 1.0)          # nonzero, so decay would show
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, _ = make_optimizer(model, tcfg, steps_per_epoch=1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    norm_and_bias = {n for n, p in model.named_parameters() if p.ndim == 1}
    weights = {n for n, p in model.named_parameters() if p.ndim > 1}
    assert any(".bias" in n for n in norm_and_bias) and any(n.startswith("features.1.") for n in norm_and_bias)
    assert moved == (weights | norm_and_bias if decay_norm else weights)
    for n in moved:   # exactly p <- p (1 - lr wd)
        torch.testing.assert_close(dict(model.named_parameters())[n], before[n] * (1 - tcfg.lr * 0.1))


def test_small_gamma_fractions_count_channels_below_a_tenth_of_the_layer_max():
    model = build_model(num_classes=3, width=0.125, head="linear")
    bns = [m for m in model.features if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        bns[0].weight.copy_(torch.tensor([1.0, -0.05, 0.2, 0.099, -2.0, 0.3, 0.5, 0.7]))  # max |g| 2: < 0.2
        bns[1].weight.fill_(0.0)
        bns[1].weight[0] = 1.0
    fr = small_gamma_fractions(model)
    assert len(fr) == 13 and fr[0] == 2 / 8 and fr[1] == 7 / 8 and fr[2:] == [0.0] * 11


def test_fit_records_the_small_gamma_fractions_every_epoch(tiny_cfg):
    cfg = tiny_cfg.replace({"epochs": 2, "train_subset": 128})
    ds = load_dataset(cfg)
    model = _fresh(cfg, ds)
    hist = fit(model, ds, cfg.train, seed=cfg.seed, progress=False, eval_each_epoch=False)
    assert [len(r["small_gamma"]) for r in hist.epochs] == [13, 13]
    assert hist.epochs[-1]["small_gamma"] == small_gamma_fractions(model)


def _fresh(cfg, ds):
    torch.manual_seed(cfg.seed)
    return build_model(num_classes=ds.num_classes, width=cfg.model.width, head=cfg.model.head)


def test_training_learns_the_synthetic_classes(tiny_cfg):
    cfg = tiny_cfg.replace({"epochs": 4, "train_subset": 512})
    ds = load_dataset(cfg)
    model = _fresh(cfg, ds)
    before = evaluate(model, ds.test_x, ds.test_y, ds)["accuracy"]
    hist = fit(model, ds, cfg.train, seed=cfg.seed, progress=False)
    after = evaluate(model, ds.test_x, ds.test_y, ds)
    assert len(hist.epochs) == 4 and {"train_loss", "val_acc", "test_acc", "lr"} <= set(hist.epochs[0])
    assert after["accuracy"] > max(0.6, before + 0.3), (before, after)
    assert math.isfinite(after["loss"])


@pytest.mark.parametrize("recipe", [{}, {"train.schedule": "onecycle", "train.lr": 0.01, "train.weight_decay": 0.01,
                                    "train.decay_norm": True}],
                         ids=["default", "authors"])
def test_interrupted_run_resumes_to_identical_weights(tiny_cfg, tmp_path, recipe):
    """Both schedules: the one-cycle scheduler (stepped per batch) resumes where it stopped, so the
    resumed run's learning rates and weights are those of the run never interrupted."""
    cfg = tiny_cfg.replace({"epochs": 3, **recipe})
    ds = load_dataset(cfg)
    straight = _fresh(cfg, ds)
    straight_hist = fit(straight, ds, cfg.train, seed=cfg.seed, run_dir=tmp_path / "a", progress=False)

    def interrupt(epoch, step, model):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    resumed = _fresh(cfg, ds)
    with pytest.raises(KeyboardInterrupt):
        fit(resumed, ds, cfg.train, seed=cfg.seed, run_dir=tmp_path / "b", progress=False, on_step=interrupt)
    assert load_torch(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    resumed = _fresh(cfg.replace({"seed": 99}), ds)  # a new process would start from other weights
    hist = fit(resumed, ds, cfg.train, seed=cfg.seed, run_dir=tmp_path / "b", progress=False)
    assert [r["epoch"] for r in hist.epochs] == [1, 2, 3]
    assert [r["lr"] for r in hist.epochs] == [r["lr"] for r in straight_hist.epochs]
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_nan_loss_is_a_clear_error_and_keeps_the_last_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace({"epochs": 3})
    ds = load_dataset(cfg)

    def poison(epoch, step, model):
        if epoch == 1 and step == 0:
            with torch.no_grad():
                model.classifier[0].weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss became nan in epoch 2.*last good checkpoint \(epoch 1\)"):
        fit(_fresh(cfg, ds), ds, cfg.train, seed=cfg.seed, run_dir=tmp_path, progress=False, on_step=poison)
    ckpt = load_torch(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not list(tmp_path.glob(".*.tmp"))


def test_baseline_is_cached_by_config(tiny_cfg):
    first = train_baseline(tiny_cfg, progress=False)
    assert not first.cached and (first.run_dir / "config.yaml").is_file()
    assert not (first.run_dir / "checkpoint.pt").exists()
    again = train_baseline(tiny_cfg, progress=False)
    assert again.cached and again.run_dir == first.run_dir
    assert again.metrics["test_accuracy"] == first.metrics["test_accuracy"]
    sa, sb = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    other = train_baseline(tiny_cfg.replace({"lr": 0.05}), progress=False)
    assert not other.cached and other.run_dir != first.run_dir
    assert "train" in (first.run_dir / "config.yaml").read_text()


def test_missing_or_corrupt_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file .*nothing.pt' does not exist"):
        load_model(tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"model file .*bad.pt' is corrupt \(not a file written by torch.save: 16 "
                                           r"bytes, no zip archive\); delete it to recompute"):
        load_model(bad)
    import zipfile
    with zipfile.ZipFile(bad, "w") as z:                  # a zip archive, but not torch.save's
        z.writestr("hello.txt", "hi")
    with pytest.raises(RuntimeError, match="unreadable or corrupt.*delete it"):
        load_model(bad)


@pytest.mark.parametrize("budget", [1 << 30, 1])
def test_masked_scorer_matches_masking_then_evaluating_bit_for_bit(trained, budget):
    import random

    from cmi.bench import plan_like_masks
    from cmi.surgery import mask_model
    from cmi.evaluation import MaskedScorer

    model, _, ds = trained
    x, y = ds.val_x[:96], ds.val_y[:96]
    scorer = MaskedScorer(model, x, y, ds, batch_size=40, budget_bytes=budget)
    batches = [ds.normalize(x[i:i + 40]).contiguous(memory_format=torch.channels_last) for i in range(0, 96, 40)]
    accs = set()
    rng = random.Random(0)
    widths = [c.out_channels for c in model.convs()]
    masks = plan_like_masks(widths, 4, rng)
    for kept in masks + [{l: sorted(rng.sample(range(w), w // 2)) for l, w in enumerate(widths)}, masks[5], masks[40]]:
        masked = mask_model(model, kept)
        with torch.no_grad():
            naive = torch.cat([masked(b) for b in batches])
        assert torch.equal(scorer.logits(kept), naive), kept
        acc = scorer(kept)
        assert acc == evaluate(masked, x, y, ds, batch_size=40)["accuracy"]
        accs.add(acc)
        held = sum(t.nbytes for bs in scorer.prefixes.values() for t in bs)
        assert held <= budget or len(scorer.prefixes) == 1
    assert len(accs) > 3                      # the masks do change the answer
    if budget > 1:                            # a layer's candidates share the prefix before it
        assert any(pos == scorer.positions[12] and len(prior) == 8 for pos, prior in scorer.prefixes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a lent GPU)")
def test_evaluate_and_masked_scorer_run_a_cpu_model_on_cuda(trained):
    """A plan hands its scorer the baseline as loaded (on the CPU); on CUDA both must move it there and
    give the CPU's accuracy up to bf16 autocast."""
    import copy

    from cmi.surgery import mask_model
    from cmi.evaluation import MaskedScorer

    model, _, ds = trained
    model = copy.deepcopy(model).cpu()
    x, y = ds.val_x[:96], ds.val_y[:96]
    kept = {l: list(range(c.out_channels // 2)) for l, c in enumerate(model.convs()) if l % 3 == 1}
    on_cpu = evaluate(mask_model(model, kept), x, y, ds)["accuracy"]
    on_cuda = evaluate(mask_model(model.cpu(), kept), x, y, ds, device="cuda")["accuracy"]
    scored = MaskedScorer(model.cpu(), x, y, ds, device="cuda")(kept)
    assert abs(on_cuda - on_cpu) <= 0.05 and abs(scored - on_cpu) <= 0.05, (on_cpu, on_cuda, scored)


def test_evaluate_refuses_fewer_labels_than_images(trained):
    model, _, ds = trained
    with pytest.raises(ValueError, match="images but .* labels"):
        evaluate(model, ds.test_x[:10], ds.test_y[:9], ds)


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_cfg, tmp_path):
    from cmi.errors import CacheCorrupt
    cfg = tiny_cfg.replace({"epochs": 2})
    ds = load_dataset(cfg)

    def interrupt(epoch, step, model):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_fresh(cfg, ds), ds, cfg.train, seed=cfg.seed, run_dir=tmp_path, progress=False, on_step=interrupt)
    other = cfg.replace({"lr": cfg.train.lr / 2})       # the checkpoint (lr as cfg) placed in another config's folder
    with pytest.raises(CacheCorrupt, match=r"checkpoint\.pt was written with other training settings \(lr "):
        fit(_fresh(other, ds), ds, other.train, seed=other.seed, run_dir=tmp_path, progress=False)


def test_a_cached_model_of_another_config_is_refused(tiny_cfg):
    import shutil
    from cmi.errors import CacheCorrupt
    from cmi.train import baseline_dir
    cfg = tiny_cfg.replace({"epochs": 1})
    other = cfg.replace({"lr": cfg.train.lr / 2})
    train_baseline(cfg, progress=False)
    src, dst = baseline_dir(cfg), baseline_dir(other)
    shutil.copytree(src, dst)                                    # cfg's model.pt and config.yaml in other's slot
    with pytest.raises(CacheCorrupt, match=f"model.pt was trained for baseline {src.name}, not {dst.name}"):
        train_baseline(other, progress=False)
    blob = torch.load(dst / "model.pt", weights_only=True)
    del blob["baseline"]                                         # a model file from before it named its baseline
    torch.save(blob, dst / "model.pt")
    with pytest.raises(CacheCorrupt, match="config.yaml describes another baseline than the folder it is in"):
        train_baseline(other, progress=False)
    assert train_baseline(cfg, progress=False).cached            # its own folder still loads


def test_seeds_table_trains_each_seed_once_and_reports_mean_and_sd(tiny_cfg):
    import statistics
    from cmi.errors import ConfigError
    from cmi.train import seeds_table
    cfg = tiny_cfg.replace({"epochs": 1})
    rows, summary = seeds_table(cfg, 3, progress=False)
    accs = [100 * train_baseline(cfg.replace({"seed": s}), progress=False).metrics["test_accuracy"] for s in range(3)]
    assert [r["seed"] for r in rows] == [0, 1, 2] and [r["test_accuracy"] for r in rows] == accs
    assert len(set(accs)) > 1                                   # the seed does change the network
    assert f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} %" in summary
    again, _ = seeds_table(cfg, 3, progress=False)
    assert all(r["cached"] for r in again)
    with pytest.raises(ConfigError, match="at least 2"):
        seeds_table(cfg, 1)


def test_a_run_resumed_on_another_machine_says_which_trained_which_epochs():
    from cmi.train import trained_on
    eps = [{"epoch": 1, "hardware": "A"}, {"epoch": 2, "hardware": "A"}, {"epoch": 3, "hardware": "B"}]
    assert trained_on(eps, "B") == "A (epochs 1-2); B (epoch 3)"
    assert trained_on(eps[:2], "B") == "A"
    assert trained_on([{"epoch": 1}, {"epoch": 2, "hardware": "B"}], "B") == "machine not recorded (epoch 1); B (epoch 2)"
    assert trained_on([{"epoch": 1}, {"epoch": 2}], "B") == "B"           # none recorded: where it ended
    assert trained_on([], "C") == "C"


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_learning_curves_name_the_loss_that_was_optimised(smoothing):
    """The loss axis says "label smoothing" only for a run trained with it (the authors' recipe has none)."""
    import matplotlib.pyplot as plt

    from cmi.plots import learning_curves

    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "test_acc": 0.5} for e in (1, 2)]
    fig = learning_curves(history, smoothing)
    label = fig.axes[0].get_ylabel()
    plt.close(fig)
    assert ("label smoothing 0.1" in label) == (smoothing == 0.1)


def test_label_smoothing_is_the_loss_that_training_reports(tiny_cfg):
    """With ε label smoothing the cross-entropy is (1 - ε)·CE + ε·mean_k(-log p_k), linear in ε. At a
    vanishing learning rate the weights, batches and augmentations of three seeded runs are the same,
    so the reported training loss must be linear in ε, with a slope that is not 0."""
    cfg = tiny_cfg.replace({"epochs": 1, "train_subset": 128, "lr": 1e-12, "weight_decay": 0.0})
    ds = load_dataset(cfg)
    loss = {}
    for eps in (0.0, 0.3, 0.6):
        tcfg = dataclasses.replace(cfg.train, label_smoothing=eps)
        loss[eps] = fit(_fresh(cfg, ds), ds, tcfg, seed=cfg.seed, progress=False,
                        eval_each_epoch=False).epochs[0]["train_loss"]
    assert loss[0.3] - loss[0.0] == pytest.approx((loss[0.6] - loss[0.0]) / 2, rel=1e-3)   # float32 sums
    assert abs(loss[0.6] - loss[0.0]) > 1e-3
