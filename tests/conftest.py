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
