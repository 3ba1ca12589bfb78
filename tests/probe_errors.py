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
SYN = ["dataset=synthetic", "train_subset=256", "test_subset=128", "val_size=64", "width=0.0625", "epochs=1"]
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

    print("| probe | first line the user sees | exit code |\n|---|---|---|")
    for probe, line, code in rows:
        print(f"| {probe} | `{line}` | {code} |")


if __name__ == "__main__":
    main()
