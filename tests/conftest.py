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
    return load_config("smoke", {"dataset": "synthetic", "train_subset": 256, "test_subset": 128,
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

    cfg = load_config("smoke", {"dataset": "synthetic", "train_subset": 512, "test_subset": 128, "val_size": 128,
                                "width": 0.0625, "epochs": 2, "batch_size": 64, "device": "cpu"})
    ds = load_dataset(cfg)
    torch.manual_seed(0)
    model = build_model(num_classes=10, width=0.0625, head="linear")
    fit(model, ds, cfg.train, seed=0, progress=False, eval_each_epoch=False)
    model = model.cpu().eval()
    return model, capture(model, ds, n=32, seed=0), ds
