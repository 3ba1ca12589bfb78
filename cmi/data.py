"""Datasets as in-memory uint8 tensors, and whole-batch augmentation on tensors.

Every dataset is returned as ``(N, C, 32, 32)`` uint8 images and int64 labels, where C is 3
(CIFAR-10, synthetic) or 1 (Fashion-MNIST, zero-padded from 28x28 and replicated to 3 channels
only when a batch is normalised). Nothing runs per image: cropping, flipping and normalising
work on whole batches, on whatever device the batch lives on.

- ``cifar10``: torchvision's archive in ``<data root>/`` (``CMI_DATA``), downloaded when missing.
- ``fashion-mnist``: the files in ``<data root>/FashionMNIST/raw/`` when ``CMI_DATA`` is set, else
  Debian's ``dataset-fashion-mnist`` files when installed, else torchvision's download there.
- ``synthetic``: a small CIFAR-shaped dataset with learnable class structure, for tests.
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config, DataConfig
from .errors import DatasetUnavailable
from .paths import data_root

#: docs/method.md §1 normalisation for CIFAR-10 (per-channel mean and std of the training set).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Label names 0-9 as Fashion-MNIST's README lists them (torchvision's ``FashionMNIST.classes``, which a
#: test compares; written out so that loading the data does not import torchvision).
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

@dataclass(frozen=True)
class Cifar10Source:
    """Where the CIFAR-10 archive comes from and what it holds (torchvision's ``CIFAR10`` attributes)."""

    url: str
    archive: str                    # the archive's file name, e.g. cifar-10-python.tar.gz
    md5: str                        # of the archive
    folder: str                     # the folder the archive extracts to
    train_batches: tuple[str, ...]  # file names in ``folder``
    test_batches: tuple[str, ...]


@functools.cache
def cifar10_source() -> Cifar10Source:
    """torchvision's source of truth for the CIFAR-10 archive, read on first use: importing torchvision
    costs about a second (it imports torch._dynamo) that most users never need. Tests point the loader
    at a fixture archive or an unreachable URL by passing ``source=`` to :func:`load_cifar10` or by
    monkeypatching this function."""
    from torchvision.datasets import CIFAR10
    return Cifar10Source(url=CIFAR10.url, archive=CIFAR10.filename, md5=CIFAR10.tgz_md5,
                         folder=CIFAR10.base_folder,
                         train_batches=tuple(n for n, _ in CIFAR10.train_list),
                         test_batches=tuple(n for n, _ in CIFAR10.test_list))


@dataclass
class Dataset:
    """Images are uint8 ``(N, C, 32, 32)``, labels int64 ``(N,)``; ``mean``/``std`` per RGB channel."""

    name: str
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, 32, 32)`` -> float32 ``(B, 3, 32, 32)``, standardised per channel."""
        return normalize(x, self.mean, self.std)

    def summary(self) -> dict:
        return {"dataset": self.name, "classes": self.num_classes, "train": len(self.train_y),
                "val": len(self.val_y), "test": len(self.test_y),
                "image": list(self.train_x.shape[1:]), "mean": self.mean, "std": self.std}


def seeded_indices(total: int, n: int | None, seed: int) -> torch.Tensor:
    """``n`` of ``range(total)`` drawn with ``seed``, ascending (all of them when ``n`` is None or
    at least ``total``): the one way the package draws images for activations, scores and controls."""
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return (perm if n is None else perm[:n]).sort().values


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` with C in {1, 3} -> float32 ``(B, 3, H, W)``: ``(x/255 - mean) / std``."""
    x = x.float().div_(255)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------- augmentation
def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Crop each image of ``x`` (B, C, H, W) from its zero-padded copy at offsets ``(dy, dx)``
    (ints in [0, 2*pad]) and mirror it horizontally where ``flip`` (bool, (B,)) is set."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = (dy[:, None] + ar_h)[:, None, :, None]                          # (B, 1, H, 1)
    cols = (dx[:, None] + ar_w)[:, None, None, :]                          # (B, 1, 1, W)
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)     # flip = read columns backwards
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad``-pixel zero padding and random horizontal flip, for a whole batch."""
    b, dev = x.shape[0], x.device
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    return crop_flip(x, dy, dx, flip, pad)


# ----------------------------------------------------------------------------- loading
def load_dataset(cfg: Config | DataConfig, seed: int | None = None, root: Path | None = None) -> Dataset:
    """Load ``cfg.data.name``, hold out ``val_size`` training images and draw the subsets.

    The validation split and the subsets are seeded draws (``seed`` defaults to ``cfg.seed``), so
    the same config always yields the same images. Validation images never overlap training ones.
    """
    if isinstance(cfg, Config):
        data_cfg, seed = cfg.data, cfg.seed if seed is None else seed
    else:
        data_cfg, seed = cfg, 0 if seed is None else seed
    explicit = root is not None or "CMI_DATA" in os.environ
    root = Path(root) if root is not None else data_root()
    loaders = {"cifar10": load_cifar10, "fashion-mnist": lambda r: load_fashion_mnist(r, explicit),
               "synthetic": make_synthetic}
    train_x, train_y, test_x, test_y, classes = loaders[data_cfg.name](root)

    g = torch.Generator().manual_seed(seed)
    n = len(train_y)
    if data_cfg.val_size >= n:
        raise DatasetUnavailable(f"data.val_size={data_cfg.val_size} leaves no training images "
                                 f"({data_cfg.name} has {n})")
    perm = torch.randperm(n, generator=g)
    val_idx, train_idx = perm[:data_cfg.val_size], perm[data_cfg.val_size:]
    if data_cfg.train_subset is not None:
        train_idx = train_idx[:data_cfg.train_subset]
    test_idx = torch.arange(len(test_y))
    if data_cfg.test_subset is not None:
        test_idx = torch.randperm(len(test_y), generator=g)[:data_cfg.test_subset]

    if data_cfg.name == "cifar10":
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:  # statistics of the (padded) training images, replicated over RGB for grey datasets
        pix = train_x.float().div(255).transpose(0, 1).reshape(train_x.shape[1], -1)
        mean = tuple(pix.mean(1).tolist()) * (3 // train_x.shape[1])
        std = tuple(pix.std(1).tolist()) * (3 // train_x.shape[1])
    return Dataset(data_cfg.name, classes, train_x[train_idx], train_y[train_idx],
                   train_x[val_idx], train_y[val_idx], test_x[test_idx], test_y[test_idx],
                   tuple(mean), tuple(std))


def _cifar_missing_message(root: Path, reason: str, src: Cifar10Source) -> str:
    folder, archive = root / src.folder, root / src.archive
    names = ", ".join(src.train_batches + src.test_batches + ("batches.meta",))
    return (f"CIFAR-10 is not in {root} and could not be downloaded ({reason}).\n"
            f"Expected one of:\n"
            f"  {archive}  (the archive from {src.url}, md5 {src.md5}), or\n"
            f"  {folder}/ holding {names}.\n"
            f"Fix: copy {src.archive} into {root}/ (or set CMI_DATA to the folder holding it), "
            f"or use another dataset, e.g. dataset=fashion-mnist.")


def load_cifar10(root: Path, source: Cifar10Source | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """CIFAR-10 from ``root``: the extracted batches, else the archive (checked, then extracted),
    else a download of the archive. Any failure is one :class:`DatasetUnavailable` message.
    ``source`` (default :func:`cifar10_source`) names the archive, its URL and md5 and its files.

    Returns ``(train_x, train_y, test_x, test_y, classes)``: uint8 images (n_train, 3, 32, 32) and
    (n_test, 3, 32, 32), int64 labels (n_train,) and (n_test,) in 0..9 (50000 and 10000 in the real
    archive), and the 10 class names."""
    from torchvision.datasets.utils import check_integrity, download_url

    root = Path(root)
    src = cifar10_source() if source is None else source
    name, url, md5 = src.archive, src.url, src.md5
    folder, archive = root / src.folder, root / name
    if not all((folder / f).is_file() for f in src.train_batches + src.test_batches):
        if not archive.is_file():
            part = f".{name}.part"
            try:
                download_url(url, str(root), filename=part)
            except Exception as e:  # noqa: BLE001 - offline, DNS, HTTP errors all mean the same here
                (root / part).unlink(missing_ok=True)
                raise DatasetUnavailable(_cifar_missing_message(root, f"{type(e).__name__}: {e}", src)) from None
            os.replace(root / part, archive)
        if not check_integrity(str(archive), md5):
            raise DatasetUnavailable(
                f"{archive} is corrupt or incomplete (its md5 is not {md5}, "
                f"size {archive.stat().st_size} bytes). Delete it and download it again from {url}.")
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetUnavailable(f"could not extract {archive}: {e}") from None
    train = [_read_cifar_batch(folder / f) for f in src.train_batches]
    test = _read_cifar_batch(folder / src.test_batches[0])
    classes = _read_cifar_meta(folder / "batches.meta")
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    return train_x, train_y, test[0], test[1], classes


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled CIFAR-10 batch: ``data`` (n, 3072) uint8 in CHW order, ``labels`` (n,)."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ValueError(f"data has shape {data.shape} and {len(labels)} labels; expected (n, 3072) and n")
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
            raise ValueError("labels outside 0..9")
    except Exception as e:  # noqa: BLE001
        raise DatasetUnavailable(f"CIFAR-10 file {path} is corrupt or incomplete ({type(e).__name__}: {e}). "
                                 f"Delete {path.parent} to extract the archive again.") from None
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _read_cifar_meta(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            return list(pickle.load(f, encoding="latin1")["label_names"])
    except Exception as e:  # noqa: BLE001
        raise DatasetUnavailable(f"CIFAR-10 file {path} is missing or corrupt ({type(e).__name__}: {e})") from None


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed or not), as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        ndim = raw[3]
        dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
        if raw[2] != 0x08:
            raise ValueError(f"element type 0x{raw[2]:02x} is not uint8")
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except Exception as e:  # noqa: BLE001
        raise DatasetUnavailable(f"{path} is not a readable IDX file ({type(e).__name__}: {e}). "
                                 f"Replace it with the original file (or delete it to download it again).") from None


def _fashion_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """The four IDX files in ``folder`` (each gzip-compressed or not), or None when one is missing."""
    found = {}
    for split, pair in FASHION_FILES.items():
        paths = [folder / f if (folder / f).is_file() else folder / f.removesuffix(".gz") for f in pair]
        if not all(p.is_file() for p in paths):
            return None
        found[split] = tuple(paths)
    return found


def load_fashion_mnist(root: Path, explicit: bool = False):
    """Fashion-MNIST padded to 32x32, from the first place that has all four files: an explicit data
    root (``CMI_DATA``, or ``root`` given to :func:`load_dataset`: ``<root>/FashionMNIST/raw/``),
    Debian's ``dataset-fashion-mnist``, the default data root; else torchvision's download into
    ``<root>/FashionMNIST/raw/``. ``explicit`` (:func:`load_dataset` passes whether ``CMI_DATA`` or
    ``root`` was given) puts the data root before Debian's copy. A file that is there but unreadable
    is an error naming it.

    Returns ``(train_x, train_y, test_x, test_y, classes)``: uint8 images (n_train, 1, 32, 32) and
    (n_test, 1, 32, 32) (the 28x28 images zero-padded by 2 on each side), int64 labels (n_train,) and
    (n_test,) in 0..9 (60000 and 10000 in the original files), and the 10 class names."""
    root = Path(root)
    raw = root / "FashionMNIST" / "raw"
    places = [raw, DEBIAN_FASHION_MNIST] if explicit else [DEBIAN_FASHION_MNIST, raw]
    files = next((f for f in map(_fashion_files, places) if f is not None), None)
    if explicit and files is not None and files["train"][0].parent != raw:
        warnings.warn(f"{raw}/ holds no Fashion-MNIST (the four *-ubyte[.gz] files); reading the copy in "
                      f"{files['train'][0].parent}/", stacklevel=3)
    if files is None:
        from torchvision.datasets import FashionMNIST
        try:
            for train in (True, False):
                FashionMNIST(str(root), train=train, download=True)
        except Exception as e:  # noqa: BLE001 - offline, DNS, HTTP errors all mean the same here
            raise DatasetUnavailable(
                f"Fashion-MNIST is not installed and could not be downloaded ({type(e).__name__}: {e}). "
                f"Install Debian's package (apt-get install dataset-fashion-mnist, files in "
                f"{DEBIAN_FASHION_MNIST}) or put the four *-ubyte.gz files in {raw}/.") from None
        files = _fashion_files(raw)
        if files is None:
            raise DatasetUnavailable(f"torchvision's Fashion-MNIST download left no IDX files in {raw}/")
    xs, ys = {}, {}
    for split, (xi, yi) in files.items():
        x, y = _read_idx(xi), _read_idx(yi)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DatasetUnavailable(f"{xi} and {yi} hold images of shape {x.shape} and labels of shape {y.shape}; "
                                     f"expected (n, 28, 28) and (n,). Replace them with the original files.")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(FASHION_CLASSES)):
            raise DatasetUnavailable(f"{yi} holds labels {int(y.min())}..{int(y.max())}; Fashion-MNIST's are "
                                     f"0..{len(FASHION_CLASSES) - 1}. Replace it with the original file.")
        xs[split], ys[split] = torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))
    pad = lambda x: F.pad(x[:, None], (2, 2, 2, 2))  # noqa: E731 - (n, 28, 28) -> (n, 1, 32, 32)
    return pad(xs["train"]), ys["train"], pad(xs["test"]), ys["test"], list(FASHION_CLASSES)


def make_synthetic(root: Path | None = None, n_train: int = 2000, n_test: int = 500, seed: int = 1234):
    """A CIFAR-shaped toy dataset: each of 10 classes is a smooth random colour template; an image
    is its class template at a random contrast plus pixel noise. Always the same images (``seed``;
    ``root`` is unused). Returns ``(train_x, train_y, test_x, test_y, classes)``: uint8 images
    (n_train, 3, 32, 32) and (n_test, 3, 32, 32), int64 labels (n_train,) and (n_test,) in 0..9, and
    the names ``class0`` .. ``class9``."""
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.rand(10, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear",
                              align_corners=False)
    templates = (templates - templates.mean((1, 2, 3), keepdim=True)) * 2.5

    def draw(n):
        y = torch.randint(0, 10, (n,), generator=g)
        scale = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
        x = 0.5 + 0.35 * scale * templates[y] + 0.12 * torch.randn(n, 3, 32, 32, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    (tx, ty), (sx, sy) = draw(n_train), draw(n_test)
    return tx, ty, sx, sy, [f"class{i}" for i in range(10)]
