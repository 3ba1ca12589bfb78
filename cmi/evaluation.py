"""How a pruned network is evaluated: one :func:`evaluate` and a registry of modes.

A mode turns the baseline and its kept channels into a network and scores it on test images.
Modes (the names of :data:`cmi.names.MODES`):

- ``masked``: the paper's: pruned filters' conv weights zeroed, BatchNorm untouched;
- ``removed``: Torch-Pruning's smaller network, BatchNorm untouched;
- ``recalibrated``: removed, then BatchNorm running statistics re-estimated on training images, no
  gradient step;
- ``finetuned``: SGD on training images, from the removed network (the sweep) or the recalibrated one
  (the controls);
- ``compensated``, ``reconstructed``, ``merged``: removed, then repaired in closed form (the first two on
  the recalibration images; :mod:`cmi.repair`; no gradient step, BN statistics kept).

What a mode may use is its :class:`Budget`: which test images score it, how many training images
recalibrate, how many epochs over how many training images fine-tune. :meth:`Budget.describe` says it
in words, for the caption of every table made with it. Calibration and fine-tuning read training
images only; test images only score.

:class:`MaskedScorer` scores many masks of one network fast: the planner's candidate cuts.
"""
from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .data import Dataset, seeded_indices
from .models import VGG16, Kept
from .names import ALL_MODES, MODES
from . import repair
from .store import cache_key, read_cache, save_json
from .surgery import kept_per_layer, mask_model, recalibrate_bn, remove_channels, save_pruned
from .train import autocast, batches, evaluate as test_metrics, fit


@dataclass(frozen=True)
class Budget:
    """What an evaluation may use besides the baseline. Seeds: the run's seed draws the test images,
    seed + 1 the recalibration images, seed + 2 the fine-tuning images."""

    test_images: int | None = None      #: a seeded draw of this many test images scores every mode; None: all
    recal_images: int = 2000            #: training images that re-estimate BN statistics
    finetune_epochs: int = 1            #: epochs of SGD at ``prune.finetune_lr`` (no warm-up)
    finetune_images: int | None = None  #: a seeded draw of training images to fine-tune on; None: all
    recalibrate_first: bool = True      #: fine-tune the recalibrated network (else the removed one)

    def describe(self, mode: str, n_test: int | None = None) -> str:
        """The mode and its budget in words; ``n_test``: the size of the test split."""
        test = (f"{self.test_images} test images (seeded draw)" if self.test_images is not None
                else f"all {n_test} test images" if n_test else "the whole test split")
        what = {"masked": "masked (the paper's: pruned filters zeroed, BN untouched)",
                "removed": "removed (Torch-Pruning, BN untouched)",
                "recalibrated": f"removed + BN statistics re-estimated on {self.recal_images} training images "
                                "(no gradient step)",
                "compensated": f"removed + each removed channel's mean output on {self.recal_images} training images "
                               "folded into the next layer's bias (no gradient step, BN statistics kept)",
                "reconstructed": f"removed + each next layer re-fit by ridge least squares to its unpruned output on "
                                 f"{self.recal_images} training images (no gradient step, BN statistics kept)",
                "merged": "removed + each removed filter merged into its most similar kept filter (Neuron Merging, "
                          "BN-aware; no images, no gradient step)",
                "finetuned": f"{'removed + BN recalibration' if self.recalibrate_first else 'removed'} + "
                             f"{self.finetune_epochs} epoch{'s' * (self.finetune_epochs != 1)} of fine-tuning on "
                             + (f"{self.finetune_images} training images" if self.finetune_images is not None
                                else "the whole training split")}[mode]
        return f"{what}, on {test}"


def sweep_budget(cfg) -> Budget:
    """The sweep's: the whole test split; ``prune.finetune_epochs`` over the whole training split."""
    return Budget(test_images=None, recal_images=cfg.controls.recal_images, finetune_epochs=cfg.prune.finetune_epochs,
                  finetune_images=None, recalibrate_first=False)


def controls_budget(cfg) -> Budget:
    """The controls': ``controls.test_images``; one epoch over ``controls.finetune_images`` after recalibration
    on ``controls.recal_images`` (the same budget for every criterion)."""
    c = cfg.controls
    return Budget(test_images=c.test_images, recal_images=c.recal_images, finetune_epochs=1,
                  finetune_images=c.finetune_images, recalibrate_first=True)


def sensitivity_budget(cfg) -> Budget:
    c = cfg.controls
    return dataclasses.replace(controls_budget(cfg), test_images=c.sensitivity_test_images,
                               recal_images=c.sensitivity_recal_images)


class Pruning:
    """The run's baseline pruned to ``kept``, as each mode needs it (built once, copied before any
    in-place change, so modes do not depend on each other's order)."""

    def __init__(self, run, kept: Kept, budget: Budget):
        self.run, self.kept, self.budget = run, kept, budget
        ds, seed = run.ds, run.cfg.seed
        idx = seeded_indices(len(ds.test_y), budget.test_images, seed)
        self.test_x, self.test_y = ds.test_x[idx], ds.test_y[idx]
        self.finetuned: nn.Module | None = None

    def test(self, model: nn.Module) -> float:
        return test_metrics(model, self.test_x, self.test_y, self.run.ds, device=self.run.device)["accuracy"]

    @cached_property
    def removed(self) -> VGG16:
        return remove_channels(self.run.model, self.kept)

    @cached_property
    def calibration(self) -> torch.Tensor:
        """The uint8 training images that recalibrate BN and calibrate the repairs: a draw seeded by seed + 1."""
        ds = self.run.ds
        return ds.train_x[seeded_indices(len(ds.train_y), self.budget.recal_images, self.run.cfg.seed + 1)]

    @cached_property
    def calibration_inputs(self) -> torch.Tensor:
        """The calibration images normalised, as the repairs read them (computed once for all of them)."""
        return self.run.ds.normalize(self.calibration)

    @cached_property
    def recalibrated(self) -> VGG16:
        return recalibrate_bn(copy.deepcopy(self.removed), self.calibration, self.run.ds.normalize,
                              device=self.run.device)


#: mode name -> function of a :class:`Pruning` returning test accuracy (fraction in [0, 1]).
MODE_FUNCTIONS: dict[str, Callable[[Pruning], float]] = {}


def register_mode(name: str):
    """Add a mode: ``@register_mode("name")`` on a function of a :class:`Pruning`; the name must be listed
    in :data:`cmi.names.ALL_MODES` (where configs validate it)."""
    if name not in ALL_MODES:
        raise ValueError(f"mode {name!r} is not listed in cmi.names.ALL_MODES {ALL_MODES}")

    def add(fn):
        MODE_FUNCTIONS[name] = fn
        return fn
    return add


@register_mode("masked")
def _masked(p: Pruning) -> float:
    return p.test(mask_model(p.run.model, p.kept))


@register_mode("removed")
def _removed(p: Pruning) -> float:
    return p.test(p.removed)


@register_mode("recalibrated")
def _recalibrated(p: Pruning) -> float:
    return p.test(p.recalibrated)


@register_mode("compensated")
def _compensated(p: Pruning) -> float:
    return p.test(repair.compensate(p.run.model, p.kept, p.calibration_inputs))


@register_mode("reconstructed")
def _reconstructed(p: Pruning) -> float:
    return p.test(repair.reconstruct(p.run.model, p.kept, p.calibration_inputs, seed=p.run.cfg.seed))


@register_mode("merged")
def _merged(p: Pruning) -> float:
    return p.test(repair.merge(p.run.model, p.kept))


@register_mode("finetuned")
def _finetuned(p: Pruning) -> float:
    run, b = p.run, p.budget
    net = copy.deepcopy(p.recalibrated if b.recalibrate_first else p.removed)
    ds = run.ds
    if b.finetune_images is not None:
        idx = seeded_indices(len(ds.train_y), b.finetune_images, run.cfg.seed + 2)
        ds = dataclasses.replace(ds, train_x=ds.train_x[idx], train_y=ds.train_y[idx])
    tcfg = dataclasses.replace(run.cfg.train, epochs=b.finetune_epochs, lr=run.cfg.prune.finetune_lr,
                               warmup_epochs=0.0)
    fit(net, ds, tcfg, seed=run.cfg.seed, device=run.device, augment_images=run.cfg.data.augment,
        progress=False, eval_each_epoch=False)
    p.finetuned = net
    return p.test(net)


def _check_row(row, modes) -> dict:
    for key in ("filters_kept", "seconds", *(f"acc_{m}" for m in modes)):
        value = row.get(key) if isinstance(row, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise KeyError(f"{key} is {value!r}, not a number")
    return row


def _ordered(modes) -> list[str]:
    """``modes`` in the canonical order of :data:`cmi.names.ALL_MODES` (registered extras after them)."""
    return [m for m in ALL_MODES if m in modes] + [m for m in modes if m not in ALL_MODES]


def _normalised(run, modes, budget: Budget | None, kept: Kept | None = None):
    unknown = [m for m in modes if m not in MODE_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown evaluation modes {unknown}; registered: {tuple(MODE_FUNCTIONS)}")
    modes = _ordered(modes)
    budget = budget or controls_budget(run.cfg)
    return modes, budget, evaluation_path(run, kept, modes, budget) if kept is not None else None


def evaluation_path(run, kept: Kept, modes, budget: Budget) -> Path | None:
    """Where :func:`evaluate` caches this evaluation (None when the run caches nothing)."""
    if run.folder is None:
        return None
    cfg = run.cfg
    ft = ({"lr": cfg.prune.finetune_lr, "train": dataclasses.asdict(cfg.train), "augment": cfg.data.augment}
          if "finetuned" in modes else None)
    key = {"model": run.acts.model, "kept": sorted([int(l), sorted(k)] for l, k in kept.items()),
           "modes": _ordered(modes),
           "budget": dataclasses.asdict(budget), "finetune": ft, "seed": cfg.seed}
    return Path(run.folder) / "evals" / f"{cache_key(key)}.json"


def evaluate(run, kept: Kept, modes=MODES, budget: Budget | None = None, *,
             save_finetuned: bool = False) -> dict:
    """Test accuracy of the baseline of ``run`` (a :class:`cmi.run.Run`) pruned to ``kept`` ({layer: kept
    channels}; layers not named stay whole) in each of ``modes``, within ``budget`` (default
    :func:`controls_budget`), cached by content under ``<run.folder>/evals/``. Returns ``{"acc_<mode>": accuracy, "filters_kept": int,
    "seconds": float, "seconds_<mode>": float, "finetune_seconds": float when fine-tuned}`` (a mode's seconds
    include its test pass, and the removal surgery for the first mode that needs the removed network). ``save_finetuned``: also keep the
    fine-tuned network beside the cached row (``<key>.pt``, :func:`cmi.surgery.load_pruned` reads it)."""
    modes, budget, path = _normalised(run, modes, budget, kept)
    cached = read_cache(path, lambda d: _check_row(d, modes), "cached evaluation")
    if cached is not None and (not save_finetuned or "finetuned" not in modes or path.with_suffix(".pt").is_file()):
        return cached
    t0 = time.perf_counter()
    pruning = Pruning(run, kept, budget)
    row: dict = {}
    for m in modes:
        t_mode = time.perf_counter()
        row[f"acc_{m}"] = MODE_FUNCTIONS[m](pruning)
        row[f"seconds_{m}"] = time.perf_counter() - t_mode
        if m == "finetuned":
            row["finetune_seconds"] = row[f"seconds_{m}"]
    row["filters_kept"] = sum(len(k) for k in kept.values()) + sum(
        w for l, w in enumerate(run.acts.widths) if l not in kept)
    row["seconds"] = time.perf_counter() - t0
    if path is not None:
        if save_finetuned and pruning.finetuned is not None:
            save_pruned(pruning.finetuned.cpu(), kept, path.with_suffix(".pt"))
        save_json(row, path)
    return row


class MaskedScorer:
    """Accuracy of masked copies of one network on fixed images: ``scorer(kept)`` is
    ``cmi.train.evaluate(mask_model(model, kept), x, y, ds, batch_size=...)["accuracy"]`` bit for bit,
    faster when many related masks are scored (a plan's candidate cuts).

    ``model.features`` up to the input of conv l depends only on the masks of the layers before l, so
    the scorer keeps that prefix's output at the input of every masked layer, keyed by those masks,
    and a later mask resumes from the deepest kept prefix it shares: the candidate cuts of one layer
    share everything before it, a chain's next layer extends its previous one. Prefixes are kept while
    they fit ``budget_bytes`` (least recently used first out). Thread-safe.

    ``model``: a :class:`VGG16` (moved to ``device`` in place, set to eval mode); ``x``: uint8 images
    (B, C, 32, 32); ``y``: labels (B,)."""

    def __init__(self, model: VGG16, x: torch.Tensor, y: torch.Tensor, ds: Dataset, *,
                 device: torch.device | str = "cpu", batch_size: int = 1000, budget_bytes: int = 1 << 30):
        if len(x) != len(y):
            raise ValueError(f"MaskedScorer got {len(x)} images but {len(y)} labels")
        self.device, self.batch_size, self.budget = torch.device(device), batch_size, budget_bytes
        self.model, self.x, self.y, self.ds = model.to(self.device).eval(), x, y, ds
        self.positions = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
        self.prefixes: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()   # (position, masks) -> batches
        self.lock = threading.Lock()

    def _key(self, pos: int, kept: Kept) -> tuple:
        return pos, tuple((l, tuple(k)) for l, k in sorted(kept.items()) if self.positions[l] < pos)

    def _keep(self, key: tuple, batches: list[torch.Tensor]) -> None:
        with self.lock:
            self.prefixes[key] = batches
            self.prefixes.move_to_end(key)
            while len(self.prefixes) > 1 and sum(t.nbytes for bs in self.prefixes.values() for t in bs) > self.budget:
                self.prefixes.popitem(last=False)

    @torch.no_grad()
    def logits(self, kept: Kept) -> torch.Tensor:
        """(B, classes) logits of the network with every filter outside ``kept`` ({layer: kept
        channels}; layers not named stay whole) zeroed, as :func:`cmi.surgery.mask_model` does."""
        kept = kept_per_layer(self.model, kept)[0]
        masked = mask_model(self.model, kept)
        stops = sorted({self.positions[l] for l in kept})
        start, batch_list = 0, None
        with self.lock:
            for pos in reversed(stops):
                if (key := self._key(pos, kept)) in self.prefixes:
                    start, batch_list = pos, self.prefixes[key]
                    self.prefixes.move_to_end(key)
                    break
        if batch_list is None:
            batch_list = list(batches(self.x, self.ds, self.device, self.batch_size))
        with autocast(self.device):
            for pos in stops:
                if pos > start:
                    batch_list = [masked.features[start:pos](b) for b in batch_list]
                    self._keep(self._key(pos, kept), batch_list)
                    start = pos
            out = [masked.classifier(torch.flatten(masked.pool(masked.features[start:](b)), 1)) for b in batch_list]
        return torch.cat(out)

    def __call__(self, kept: Kept) -> float:
        """Accuracy (fraction in [0, 1]) of the masked network on the images."""
        hits = (self.logits(kept).argmax(1) == self.y.to(self.device)).sum().item()
        return hits / max(len(self.y), 1)
