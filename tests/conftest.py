import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _isolated_artifacts(tmp_path, monkeypatch):
    """Every test caches into its own temporary folder, never into the checkout's artifacts/."""
    monkeypatch.setenv("CMI_ARTIFACTS", str(tmp_path / "artifacts"))
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_cfg():
    """Synthetic data, 1/16 width: trains in a second or two on a CPU."""
    from cmi.config import load_config
    return load_config("smoke", {"dataset": "synthetic", "train_subset": 256, "test_subset": 128, "sensitivity_test_images": 128,
                                 "val_size": 64, "width": 0.0625, "epochs": 2, "batch_size": 64,
                                 "device": "cpu"})


@pytest.fixture(scope="session")
def trained():
    """A 1/16-width VGG16 trained two epochs on synthetic data, with activations of 32 images:
    (model, activations, dataset). Shared by the plan and controls tests; nothing is cached on disk."""
    from cmi.activations import capture
    from cmi.config import load_config
    from cmi.data import load_dataset
    from cmi.models import build_model
    from cmi.train import fit

    cfg = load_config("smoke", {"dataset": "synthetic", "train_subset": 512, "test_subset": 128, "sensitivity_test_images": 128, "val_size": 128,
                                "width": 0.0625, "epochs": 2, "batch_size": 64, "device": "cpu"})
    ds = load_dataset(cfg)
    torch.manual_seed(0)
    model = build_model(num_classes=10, width=0.0625, head="linear")
    fit(model, ds, cfg.train, seed=0, progress=False, eval_each_epoch=False)
    model = model.cpu().eval()
    return model, capture(model, ds, n=32, seed=0), ds


def make_run(cfg, model, ds, acts, folder=None, test_accuracy: float = 0.0):
    """A :class:`cmi.run.Run` of an already trained ``model`` (no baseline cache): what the planner,
    the evaluation and the controls work on. ``folder``: the cache (None: nothing cached)."""
    from cmi.run import Run
    from cmi.train import Baseline

    base = Baseline(model, {"test_accuracy": test_accuracy}, [], None, False)
    return Run(cfg, base, ds, acts, torch.device("cpu"), folder)


@pytest.fixture(scope="session")
def plan_cfg():
    """The config of the planner tests: every greedy pick (saturation_tol 0), P = 10 shuffles, no
    max_drop rule, candidates scored on the whole held-out split."""
    from cmi.config import load_config
    return load_config("smoke", {"dataset": "synthetic", "train_subset": 512, "test_subset": 128, "sensitivity_test_images": 128, "val_size": 128,
                                 "width": 0.0625, "epochs": 2, "batch_size": 64, "device": "cpu",
                                 "cmi.saturation_tol": 0.0, "cmi.permutations": 10, "prune.max_drop": None,
                                 "prune.select_images": None})
