import dataclasses
import gzip
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cmi import data
from cmi.config import load_config
from cmi.data import crop_flip, load_cifar10, load_dataset, normalize
from cmi.errors import ConfigError, DatasetUnavailable


# ----------------------------------------------------------------------------- augmentation
def naive_crop_flip(x, dy, dx, flip, pad=4):
    out = []
    for img, a, b, f in zip(x, dy.tolist(), dx.tolist(), flip.tolist()):
        p = torch.zeros(img.shape[0], img.shape[1] + 2 * pad, img.shape[2] + 2 * pad, dtype=img.dtype)
        p[:, pad:pad + img.shape[1], pad:pad + img.shape[2]] = img
        crop = p[:, a:a + img.shape[1], b:b + img.shape[2]]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_flip_matches_per_image_reference(channels):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, channels, 32, 32), generator=g, dtype=torch.uint8)
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    assert torch.equal(crop_flip(x, dy, dx, flip), naive_crop_flip(x, dy, dx, flip))
    # centre offset without flip is the identity
    centre = torch.full((16,), 4)
    assert torch.equal(crop_flip(x, centre, centre, torch.zeros(16, dtype=torch.bool)), x)


def test_augment_is_seeded_and_varied():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = data.augment(x, torch.Generator().manual_seed(1))
    b = data.augment(x, torch.Generator().manual_seed(1))
    c = data.augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.uint8


@pytest.mark.parametrize("shape", [(40, 3, 32, 32), (40, 1, 32, 32), (40, 2, 12, 20)])
def test_augment_equals_the_reference_at_the_offsets_it_drew(shape, monkeypatch):
    """augment = zero-pad by 4, crop at offsets (dy, dx) in 0..8, mirror where drawn, per image."""
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    drawn = []
    real = data.crop_flip

    def spy(x, dy, dx, flip, pad=4):
        drawn.append((dy.clone(), dx.clone(), flip.clone(), pad))
        return real(x, dy, dx, flip, pad)

    monkeypatch.setattr(data, "crop_flip", spy)
    out = data.augment(x, torch.Generator().manual_seed(7))
    (dy, dx, flip, pad), = drawn
    assert pad == 4 and out.shape == x.shape and out.dtype == x.dtype
    # the draws: one (dy, dx, flip) per image from the generator, offsets anywhere in 0..2*pad
    g = torch.Generator().manual_seed(7)
    assert torch.equal(dy, torch.randint(0, 9, (len(x),), generator=g))
    assert torch.equal(dx, torch.randint(0, 9, (len(x),), generator=g))
    assert torch.equal(flip, torch.rand(len(x), generator=g) < 0.5)
    assert 0 < int(flip.sum()) < len(x) and len(set(dy.tolist())) > 3 and len(set(dx.tolist())) > 3
    # the reference, written per image with plain slicing
    assert torch.equal(out, naive_crop_flip(x, dy, dx, flip, pad))
    # and a second one with F.pad + torch.flip
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="constant", value=0)
    h, w = x.shape[-2:]
    for i in range(len(x)):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        assert torch.equal(out[i], torch.flip(crop, dims=[-1]) if flip[i] else crop)


def test_crop_flip_properties():
    x = torch.randint(1, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    no, yes = torch.zeros(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool)
    centre, zero, last = torch.full((6,), 4), torch.zeros(6, dtype=torch.long), torch.full((6,), 8)
    assert torch.equal(crop_flip(x, centre, centre, no), x)                   # (4, 4) without flip: unchanged
    assert torch.equal(crop_flip(x, centre, centre, yes), x.flip(-1))         # (4, 4) with flip: mirrored
    assert torch.equal(crop_flip(crop_flip(x, centre, centre, yes), centre, centre, yes), x)
    # offset (0, 0) shows the image moved 4 pixels down and right, with a zero (not reflected) border
    shifted = crop_flip(x, zero, zero, no)
    assert torch.equal(shifted[..., 4:, 4:], x[..., :-4, :-4])
    assert shifted[..., :4, :].max() == 0 and shifted[..., :, :4].max() == 0
    moved = crop_flip(x, last, last, no)                                       # (8, 8): up and left
    assert torch.equal(moved[..., :-4, :-4], x[..., 4:, 4:]) and moved[..., -4:, :].max() == 0


def test_normalize_replicates_grey_and_standardises():
    x = torch.full((2, 1, 4, 4), 51, dtype=torch.uint8)
    out = normalize(x, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.2, 0.0, -0.2]), atol=1e-6)


# ----------------------------------------------------------------------------- datasets
def test_synthetic_is_deterministic_and_split_disjoint():
    cfg = load_config("smoke", {"dataset": "synthetic", "val_size": 100, "train_subset": 500, "test_subset": 50})
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (500, 100, 50)
    assert a.train_x.dtype == torch.uint8 and a.train_x.shape[1:] == (3, 32, 32)
    # no validation image is also a training image
    flat_train = {bytes(t.numpy()) for t in a.train_x}
    assert not any(bytes(v.numpy()) in flat_train for v in a.val_x)
    other = load_dataset(cfg.replace({"seed": 1}))
    assert not torch.equal(other.val_y, a.val_y)


def test_val_size_too_large():
    with pytest.raises(ConfigError, match="data.val_size is 5000, which leaves no training images"):
        load_config("smoke", {"dataset": "synthetic", "val_size": 5000})


def test_dataset_sizes_match_the_loaders():
    """config.DATASET_SIZES, which checks sizes before any work starts, is what the loaders load."""
    from cmi.config import DATASET_SIZES
    tx, ty, sx, sy, _ = data.make_synthetic()
    assert DATASET_SIZES["synthetic"] == (len(ty), len(sy))
    if data.DEBIAN_FASHION_MNIST.is_dir():
        tx, ty, sx, sy, _ = data.load_fashion_mnist(Path("/nonexistent"), explicit=False)
        assert DATASET_SIZES["fashion-mnist"] == (len(ty), len(sy))
    assert DATASET_SIZES["cifar10"] == (5 * 10000, 10000)      # torchvision: five training batches of 10000


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset(load_config("quick"))
    assert (len(ds.train_y), len(ds.val_y), len(ds.test_y)) == (55000, 5000, 10000)
    assert ds.train_x.shape[1:] == (1, 32, 32) and ds.num_classes == 10
    # padded by 2 pixels of background on every side
    assert ds.train_x[:, :, :2].max() == 0 and ds.train_x[:, :, :, -2:].max() == 0
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.classes[0] == "T-shirt/top"
    assert ds.normalize(ds.train_x[:8]).shape == (8, 3, 32, 32)


# ----------------------------------------------------------------------------- CIFAR-10 offline
def write_cifar_fixture(root: Path, per_batch: int = 6) -> dict:
    """A tiny CIFAR-10 in the real on-disk format: pickled batches of (n, 3072) uint8 rows."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": y, "data": x,
                         "filenames": [f"{i}.png" for i in range(per_batch)]}, f, protocol=2)
        truth[name] = (x, y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"], "num_vis": 3072}, f, protocol=2)
    return truth


def test_cifar10_reads_extracted_batches(tmp_path):
    truth = write_cifar_fixture(tmp_path)
    tx, ty, sx, sy, classes = load_cifar10(tmp_path)
    assert tx.shape == (30, 3, 32, 32) and sx.shape == (6, 3, 32, 32) and tx.dtype == torch.uint8
    x1, y1 = truth["data_batch_1"]
    # row layout is 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    assert torch.equal(tx[0, 1], torch.from_numpy(x1[0, 1024:2048].reshape(32, 32)))
    assert ty[:6].tolist() == y1 and classes[3] == "cat"


def test_cifar10_extracts_a_verified_archive(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar_fixture(src)
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    source = dataclasses.replace(data.cifar10_source(), md5=hashlib.md5(archive.read_bytes()).hexdigest())
    tx, *_ = load_cifar10(root, source)
    assert tx.shape == (30, 3, 32, 32) and (root / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar10_corrupt_archive_is_one_clear_error(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"partial download")
    with pytest.raises(DatasetUnavailable, match="corrupt or incomplete.*md5.*Delete it"):
        load_cifar10(tmp_path)


def test_cifar10_corrupt_batch_is_one_clear_error(tmp_path):
    write_cifar_fixture(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02truncated")
    with pytest.raises(DatasetUnavailable, match="data_batch_3 is corrupt or incomplete"):
        load_cifar10(tmp_path)


def test_cifar10_offline_message(tmp_path, monkeypatch, capsys):
    # port 9 (discard) on localhost: a real, immediate network failure, whatever CI's network
    offline = dataclasses.replace(data.cifar10_source(), url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    monkeypatch.setattr(data, "cifar10_source", lambda: offline)     # load_dataset and the CLI read it
    monkeypatch.setenv("CMI_DATA", str(tmp_path))
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset(load_config("paper"))
    msg = str(err.value)
    assert "CIFAR-10 is not in" in msg and "cifar-10-python.tar.gz" in msg and "dataset=fashion-mnist" in msg
    assert "data_batch_1" in msg and offline.md5 in msg and offline.url in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not list(tmp_path.glob("*.part"))  # no half-downloaded file left behind

    from cmi.__main__ import main
    assert main(["data", "--profile", "paper"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("error: CIFAR-10 is not in") and "Traceback" not in err_text


# ----------------------------------------------------------------------------- Fashion-MNIST from CMI_DATA
def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as MNIST ships it: 0, 0, type 0x08 (uint8), ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_fixture(root: Path, n: int = 20) -> dict:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    truth = {}
    for split, (xi, yi) in data.FASHION_FILES.items():
        x, y = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(raw / xi, x)
        write_idx(raw / yi.removesuffix(".gz"), y)       # torchvision also leaves uncompressed copies
        truth[split] = (x, y)
    return truth


def test_fashion_mnist_explicit_cmi_data_wins(tmp_path, monkeypatch):
    """A user's own copy under CMI_DATA is read even when Debian's package is installed."""
    truth = write_fashion_fixture(tmp_path)
    monkeypatch.setenv("CMI_DATA", str(tmp_path))
    ds = load_dataset(load_config("smoke", {"dataset": "fashion-mnist", "val_size": 5, "train_subset": None,
                                            "test_subset": None}))
    assert len(ds.train_y) + len(ds.val_y) == 20 and len(ds.test_y) == 20
    assert torch.equal(ds.test_x[:, 0, 2:30, 2:30], torch.from_numpy(truth["test"][0].astype(np.uint8)))
    assert ds.test_y.tolist() == truth["test"][1].tolist()


def test_fashion_mnist_corrupt_idx_names_the_file(tmp_path, monkeypatch):
    write_fashion_fixture(tmp_path)
    bad = tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:40])                 # a truncated download
    monkeypatch.setenv("CMI_DATA", str(tmp_path))
    with pytest.raises(DatasetUnavailable, match=r"t10k-images-idx3-ubyte\.gz is not a readable IDX file .*"
                                                 r"Replace it with the original file"):
        load_dataset(load_config("smoke", {"dataset": "fashion-mnist", "val_size": 5}))


def test_constants_written_out_or_loaded_lazily_are_torchvisions():
    from torchvision.datasets import CIFAR10, FashionMNIST

    from cmi import data
    assert list(data.FASHION_CLASSES) == FashionMNIST.classes
    src = data.cifar10_source()
    assert (src.url, src.md5, src.archive, src.folder) == (CIFAR10.url, CIFAR10.tgz_md5, CIFAR10.filename,
                                                           CIFAR10.base_folder)
    assert src.test_batches == ("test_batch",) and len(src.train_batches) == 5
    assert data.cifar10_source() is src                        # read once, then cached
    with pytest.raises(dataclasses.FrozenInstanceError):
        src.url = "elsewhere"


def test_loading_fashion_mnist_does_not_import_torchvision(tmp_path):
    import subprocess
    import sys
    code = ("import sys; from cmi.config import load_config; from cmi.data import load_dataset; "
            "load_dataset(load_config('smoke', {'dataset': 'fashion-mnist'})); print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_fashion_mnist_label_out_of_range_names_the_file(tmp_path, monkeypatch):
    truth = write_fashion_fixture(tmp_path)
    y = truth["train"][1].copy()
    y[3] = 11
    labels = tmp_path / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    write_idx(labels, y)
    monkeypatch.setenv("CMI_DATA", str(tmp_path))
    with pytest.raises(DatasetUnavailable, match=r"train-labels-idx1-ubyte holds labels 0\.\.11; Fashion-MNIST's "
                                                 r"are 0\.\.9"):
        load_dataset(load_config("smoke", {"dataset": "fashion-mnist", "val_size": 5}))
