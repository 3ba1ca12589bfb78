"""Bad input and faults, tried as a new user would: prints one Markdown row per probe with the first
line of what the user sees (stderr for the command line, the exception or warning for the API) and
the exit code. The assertions live in the tests (test_config, test_data, test_store, test_ranking,
test_pruning); this script shows the messages side by side.

    .venv/bin/python tests/probe_errors.py

Everything runs in a temporary CMI_ARTIFACTS folder on synthetic data (seconds, no training beyond a
one-epoch toy network).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.mkdtemp(prefix="cmi-probes-"))
ENV = {**os.environ, "CMI_ARTIFACTS": str(TMP / "artifacts"), "TQDM_DISABLE": "1"}
os.environ.update({"CMI_ARTIFACTS": ENV["CMI_ARTIFACTS"], "TQDM_DISABLE": "1"})
SYN = ["dataset=synthetic", "train_subset=256", "test_subset=128", "sensitivity_test_images=128", "val_size=64",
       "width=0.0625", "epochs=1"]
rows: list[tuple[str, str, str]] = []


def first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[0] if lines else "(nothing)").replace("|", "\\|")[:230]


def cli(probe: str, *args: str, env: dict | None = None) -> None:
    r = subprocess.run([sys.executable, "-m", "cmi", *args], env={**ENV, **(env or {})}, capture_output=True,
                       text=True, cwd=ROOT)
    shown = r.stderr if r.returncode else (r.stderr or " ".join(r.stdout.split()))
    rows.append((probe, first_line(shown), str(r.returncode)))


def api(probe: str, call) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
            text = "; ".join(f"warning: {w.message}" for w in caught) or f"accepted: {result}"
        except Exception as e:  # noqa: BLE001 - the probe reports whatever the user would see
            text = f"{type(e).__name__}: {e}"
    rows.append((probe, first_line(text), "(API)"))


def issue27(cfg, run) -> None:
    """The probes of issue #27: silently wrong before, now an error or a warning that names the cause."""
    import errno
    import shutil
    import signal
    import time
    from unittest import mock

    from cmi.config import load_config
    from cmi.store import save_json

    shutil.rmtree(run)
    other = load_config("smoke", SYN[:-1] + ["epochs=3", "lr=0.1"])
    mine_cfg = load_config("smoke", SYN[:-1] + ["epochs=3", "lr=0.05"])
    from cmi.train import baseline_dir, fit, train_baseline

    def checkpoint_of_other_settings():
        from cmi.models import build_model
        def stop(epoch, step, model):
            if epoch == 1:
                raise KeyboardInterrupt
        try:           # an lr 0.1 run interrupted after one epoch, its checkpoint in the lr 0.05 folder
            fit(build_model(10, 0.0625, "linear"), load_dataset_syn(), other.train, seed=0,
                run_dir=baseline_dir(mine_cfg), progress=False, on_step=stop)
        except KeyboardInterrupt:
            pass
        return train_baseline(mine_cfg, progress=False).metrics["test_accuracy"]
    api("27.1 an lr 0.1 checkpoint in the lr 0.05 baseline folder", checkpoint_of_other_settings)
    shutil.rmtree(baseline_dir(mine_cfg))
    train_baseline(other, progress=False)
    shutil.copytree(baseline_dir(other), baseline_dir(mine_cfg))
    cli("27.2 another config's model.pt in the slot", "train", *SYN[:-1], "epochs=3", "lr=0.05")
    empty = TMP / "empty.yaml"
    empty.write_text("")
    cli("27.8 an empty profile file", "config", "--profile", str(empty))
    cli("27.6 controls.test_images=20000 (the test split has 10000)", "config", "--profile", "quick",
        "controls.test_images=20000")
    for probe in ("val_size=0", "weight_decay=.inf", "lr=.inf", "width=0.01", "device=cuda:x"):
        cli(f"27 {probe}", "config", "--profile", "smoke", probe)
    loop = TMP / "loop"
    loop.symlink_to(TMP / "loop2")
    (TMP / "loop2").symlink_to(loop)
    cli("27 CMI_DATA a symlink loop", "data", "--profile", "smoke", env={"CMI_DATA": str(loop)})
    (TMP / "nodata").mkdir()
    cli("27 CMI_DATA holds no Fashion-MNIST", "data", "--profile", "smoke", env={"CMI_DATA": str(TMP / "nodata")})

    def with_access(mode_ok):
        with mock.patch("os.access", lambda p, m: mode_ok(m)):
            return load_config("smoke")
    api("27 a read-only CMI_ARTIFACTS (os.access says so)", lambda: with_access(lambda m: not m & os.W_OK))
    with mock.patch.dict(os.environ, {"CMI_DATA": str(TMP)}):
        api("27 an unreadable CMI_DATA (os.access says so)", lambda: with_access(lambda m: False))

    def disk_full():
        with mock.patch("os.fsync", side_effect=OSError(errno.ENOSPC, "No space left on device")):
            save_json({"a": 1}, TMP / "full" / "x.json")
    api("27 a full disk while writing a cache file", disk_full)

    def read_only():
        with mock.patch("tempfile.mkstemp", side_effect=OSError(errno.EROFS, "Read-only file system")):
            save_json({"a": 1}, TMP / "ro" / "x.json")
    api("27 a read-only cache folder", read_only)

    trained = baseline_dir(other)
    blob = torch.load(trained / "model.pt", weights_only=True)
    blob["spec"]["width"] = 0.125
    torch.save(blob, trained / "model.pt")
    cli("27 a model file whose recorded width disagrees with its weights", "train", *SYN[:-1], "epochs=3", "lr=0.1")

    def ranking_out_of_range():
        from cmi.ranking import Ranking
        return Ranking.from_dict({"order": [0, 7], "cmi": [1.0, 0.5], "objective": [], "mi_labels": [],
                                  "mi_input": None, "p_values": None, "n_channels": 4, "alpha": 1.01, "sigma": {},
                                  "seconds": 0.0, "entropies": 0, "device": "cpu"}, 4)
    api("27 a cached ranking with a channel index out of range", ranking_out_of_range)

    def evaluation_types():
        from cmi.evaluation import _check_row
        return _check_row({"acc_masked": "high", "filters_kept": 3, "seconds": 1.0}, ["masked"])
    api("27.7 a cached evaluation with acc_masked 'high'", evaluation_types)

    def labels_3_7():
        from cmi.ranking import rank_channels
        g = torch.Generator().manual_seed(0)
        return rank_channels(torch.rand(16, 3, 2, 2, generator=g), torch.tensor([3, 7] * 8)).order
    api("27.9 rank_channels with labels {3, 7}", labels_3_7)

    def evaluate_short():
        from cmi.models import build_model
        from cmi.train import evaluate
        ds = load_dataset_syn()
        return evaluate(build_model(10, 0.0625, "linear"), ds.test_x[:10], ds.test_y[:5], ds)
    api("27.10 evaluate with fewer labels than images", evaluate_short)

    args = [sys.executable, "-m", "cmi", "train", "--no-progress", *SYN[:-1], "epochs=400"]
    p = subprocess.Popen(args, env=ENV, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = baseline_dir(load_config("smoke", SYN[:-1] + ["epochs=400"])) / "checkpoint.pt"
    while not ckpt.is_file() and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    err = p.communicate()[1]
    rows.append(("27 Ctrl-C during training (last line)", first_line(err.strip().splitlines()[-1]), str(p.returncode)))
    r = subprocess.run([sys.executable, "-m", "cmi.notebook", "notebooks/01_train_baseline.ipynb",
                        str(TMP / "01.ipynb"), "--profile", "smoke", "--set", "epochs=0"], env=ENV, cwd=ROOT,
                       capture_output=True, text=True)
    rows.append(("27 a notebook that fails (last line)", first_line(r.stderr.strip().splitlines()[-1]),
                 str(r.returncode)))


def load_dataset_syn():
    from cmi.config import load_config
    from cmi.data import load_dataset
    return load_dataset(load_config("smoke", SYN))


def main() -> None:
    from cmi.config import load_config
    from cmi.models import build_model
    from cmi.ranking import rank_channels
    from cmi.surgery import load_pruned, mask_model
    from cmi.train import baseline_dir

    # 1. corrupt cached files
    cfg = load_config("smoke", SYN)
    run = baseline_dir(cfg)
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"not a model")
    (run / "metrics.json").write_text("{")
    cli("1 corrupt metrics.json (cmi train)", "train", *SYN)
    (run / "metrics.json").write_text('{"metrics": {"test_accuracy": 0.5}, "history": []}')
    cli("2 corrupt model.pt (cmi train)", "train", *SYN)

    def corrupt_ranking():
        from cmi.store import read_cache, save_json
        path = TMP / "rankings" / "r.json"
        save_json({"order": [1]}, path)
        path.write_text('{"order": [1')
        return read_cache(path, what="cached ranking")
    api("1 corrupt cached ranking / plan / evaluation JSON", corrupt_ranking)

    # 2. checks when the config is resolved
    cli("2 cmi.n_samples above the training split", "estimate", "--profile", "quick", "cmi.n_samples=60000")
    cli("2 alpha=inf", "estimate", "--profile", "quick", "alpha=.inf")
    if not torch.cuda.is_available():
        cli("2 device=cuda without CUDA", "estimate", "--profile", "quick", "device=cuda")
    afile = TMP / "a-file"
    afile.write_text("")
    cli("2 CMI_ARTIFACTS is a file", "config", "--profile", "quick", env={"CMI_ARTIFACTS": str(afile)})
    cli("2 CMI_DATA is a file", "data", "--profile", "quick", env={"CMI_DATA": str(afile)})
    cli("2 CMI_ARTIFACTS set but empty", "config", "--profile", "quick", env={"CMI_ARTIFACTS": ""})
    cli("2 a key given twice", "config", "--profile", "quick", "epochs=1", "epochs=2")

    # 3. Fashion-MNIST from CMI_DATA, and a corrupt IDX file
    sys.path.insert(0, str(ROOT / "tests"))
    from test_data import write_fashion_fixture
    own = TMP / "data"
    write_fashion_fixture(own)
    cli("3 CMI_DATA holds the user's own Fashion-MNIST (20 + 20 images)", "data", "--profile", "smoke",
        "dataset=fashion-mnist", "val_size=5", "train_subset=null", "test_subset=null", env={"CMI_DATA": str(own)})
    bad = own / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:40])
    cli("3 a truncated IDX file under CMI_DATA", "data", "--profile", "smoke", "dataset=fashion-mnist",
        "val_size=5", env={"CMI_DATA": str(own)})

    # 5. a saturated estimator
    g = torch.Generator().manual_seed(0)
    feats, y = torch.rand(32, 4, 3, 3, generator=g), torch.arange(32) % 4
    api("5 features scaled by 1e30", lambda: rank_channels(feats * 1e30, y, desc="conv").order)
    api("5 sigma=1e-6", lambda: rank_channels(feats, y, sigma=1e-6, desc="conv").order)

    # 6. pruning API inputs
    model = build_model(num_classes=10, width=0.0625, head="linear")
    api("6 kept as a tensor and an array, layers by name",
        lambda: [c.out_channels for c in mask_model(model, {"conv1_1": torch.tensor([0, 1]),
                                                            3: np.array([0])}).convs()][:2])
    api("6 kept as floats", lambda: mask_model(model, {0: [0.5]}))
    api("6 an unknown layer name", lambda: mask_model(model, {"conv6_1": [0]}))
    torch.save({"spec": {"num_classes": 10, "width": 0.0625, "head": "linear"}, "state_dict": model.state_dict()},
               TMP / "model.pt")
    api("6 load_pruned on a baseline model.pt", lambda: load_pruned(TMP / "model.pt"))
    api("6 dtype=float16", lambda: rank_channels(feats, y, dtype=torch.float16))
    api("6 chunk=-1", lambda: rank_channels(feats, y, chunk=-1))

    def overrides_3():
        from cmi.outputs import start_notebook
        return start_notebook("smoke", None, 3)
    api("6 papermill -p overrides 3", overrides_3)

    def tiny_run():
        from cmi.activations import capture
        from cmi.data import load_dataset
        from cmi.run import Run
        from cmi.train import Baseline
        pcfg = load_config("smoke", SYN + ["cmi.permutations=5", "cmi.saturation_tol=0"])
        ds = load_dataset(pcfg)
        acts = capture(model, ds, n=32, seed=0)
        return Run(pcfg, Baseline(model, {"test_accuracy": 0.0}, [], None, False), ds, acts, torch.device("cpu"),
                   None)                                   # nothing cached

    def plan_elsewhere():
        from cmi.planner import plan
        p, _ = plan(tiny_run(), ("per-layer", "ptest", "forward"), progress=False)
        torch.manual_seed(1)
        return mask_model(build_model(num_classes=10, width=0.0625, head="linear"), p) and "masked"
    api("6 a Plan applied to another network of the same widths", plan_elsewhere)

    def plan_spec(spec, criterion="cmi"):
        from cmi.planner import plan
        return lambda: plan(tiny_run(), spec, criterion=criterion, progress=False)[0].name
    api("6 a plan spec with a misspelt formulation", plan_spec(("per-leyer", "scree", "forward")))
    api("6 the permutation-test cutoff on the random criterion", plan_spec(("per-layer", "ptest", "forward"), "random"))

    # 7. silent overrides
    cli("7 dataset=fashion-mnist data.name=cifar10", "config", "--profile", "quick", "dataset=fashion-mnist",
        "data.name=cifar10")
    cli("7 train_subset above the data (then prints the config)", "config", "--profile", "smoke",
        "dataset=synthetic", "train_subset=99999")

    issue27(cfg, run)

    print("| probe | first line the user sees | exit code |\n|---|---|---|")
    for probe, line, code in rows:
        print(f"| {probe} | `{line}` | {code} |")


if __name__ == "__main__":
    main()
