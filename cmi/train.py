"""Training and evaluation of the baseline (and fine-tuning of pruned models).

SGD with (Nesterov) momentum and a per-step schedule (``train.schedule``: "cosine", linear warm-up
then cosine decay, or "onecycle", :class:`torch.optim.lr_scheduler.OneCycleLR`), weight decay,
optional label smoothing; bf16 autocast on CUDA; channels_last everywhere (about 2x faster on CPU too).
Every epoch's randomness (shuffle, augmentation, dropout) is seeded by ``(seed, epoch)`` alone, so a
run resumed from its last checkpoint ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .config import Config, TrainConfig
from .data import Dataset, augment, load_dataset
from .device import hardware_name, resolve_device
from .errors import CacheCorrupt, ConfigError, Interrupted, TrainingDiverged
from .models import VGG16, build_model
from .store import digest, load_json, load_torch, save_config, save_json, save_torch, stage_dir

StepHook = Callable[[int, int, nn.Module], None]


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def batches(x: torch.Tensor, ds: Dataset, device: torch.device, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 images ``x`` as the network sees them: normalised batches on ``device``, channels_last."""
    for i in range(0, len(x), batch_size):
        yield ds.normalize(x[i:i + batch_size].to(device)).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ds: Dataset, *, device: torch.device | str = "cpu",
             batch_size: int = 1000) -> dict[str, float]:
    """Accuracy (fraction in [0, 1]) and mean cross-entropy (nats) of ``model`` on uint8 images ``x``.
    ``model`` is moved to ``device`` in place (as :func:`fit` does) and left in eval mode."""
    if len(x) != len(y):     # zip would quietly score only the first len(y) images
        raise ValueError(f"evaluate: {len(x)} images but {len(y)} labels; give one label per image")
    device = torch.device(device)
    model.to(device).eval()
    correct, loss_sum = 0, 0.0
    for xb, yb in zip(batches(x, ds, device, batch_size), torch.split(y, batch_size)):
        yb = yb.to(device)
        with autocast(device):
            logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    n = max(len(y), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n}


def lr_lambda(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier on the peak lr: linear warm-up over ``warmup_steps``, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, tcfg: TrainConfig, steps_per_epoch: int):
    """SGD and its per-step schedule. Weight decay reaches conv/linear weights only, or, with
    ``tcfg.decay_norm``, every parameter (BN gamma and beta and all biases too, as the authors'
    baseline was trained). ``tcfg.schedule``: "cosine" (warm-up, then cosine to 0) or "onecycle"
    (:class:`torch.optim.lr_scheduler.OneCycleLR` with its defaults, peak ``tcfg.lr``)."""
    params = list(model.parameters())
    decay = params if tcfg.decay_norm else [p for p in params if p.ndim > 1]
    ids = {id(p) for p in decay}
    no_decay = [p for p in params if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=tcfg.lr, momentum=tcfg.momentum,
                          nesterov=tcfg.nesterov and tcfg.momentum > 0)
    total = tcfg.epochs * steps_per_epoch
    if tcfg.schedule == "onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=total)
    warmup = round(tcfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, total, warmup))
    return opt, sched


#: A BN channel counts as shrunk when its |gamma| is below this fraction of its layer's largest.
SMALL_GAMMA = 0.1


@torch.no_grad()
def small_gamma_fractions(model: VGG16, threshold: float = SMALL_GAMMA) -> list[float]:
    """Per conv layer, the fraction of its BN channels whose |gamma| < ``threshold`` x the layer's largest."""
    out = []
    for bn in model.norms():
        g = bn.weight.detach().abs().float()
        out.append((g < threshold * g.max()).float().mean().item())
    return out


@dataclass
class History:
    """One dict per finished epoch: epoch, lr, train_loss, train_acc, val_acc, test_acc, seconds, and
    ``small_gamma``: per conv layer, the fraction of channels with |gamma| < 10 % of the layer's largest."""

    epochs: list[dict] = field(default_factory=list)

    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def _identity(tcfg: TrainConfig, seed: int) -> dict:
    """What a checkpoint was trained with: the training settings and the seed."""
    return {"train": dataclasses.asdict(tcfg), "seed": seed}


def _resume(ckpt_path: Path | None, model: nn.Module, opt, sched, history: History, identity: dict) -> int:
    """Load the checkpoint at ``ckpt_path``, if there is one, into the model, optimiser, scheduler
    and history; the number of epochs it had finished (0 without one). A checkpoint written with other
    training settings (``identity``) is refused: its optimizer state would bring them back."""
    if ckpt_path is None or not ckpt_path.is_file():
        return 0
    ckpt = load_torch(ckpt_path)
    theirs = ckpt.get("identity")
    if theirs is not None and theirs != identity:
        diff = {k: (theirs["train"].get(k), v) for k, v in identity["train"].items() if theirs["train"].get(k) != v}
        if theirs.get("seed") != identity["seed"]:
            diff["seed"] = (theirs.get("seed"), identity["seed"])
        raise CacheCorrupt(f"{ckpt_path} was written with other training settings ("
                           + ", ".join(f"{k} {a!r} here {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
                           + "); delete it to train this config from the start")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    history.epochs = list(ckpt["history"])
    print(f"resuming from {ckpt_path} after epoch {ckpt['epoch']}", file=sys.stderr)   # also without progress bars
    return ckpt["epoch"]


def _train_epoch(model: nn.Module, ds: Dataset, x_all: torch.Tensor, y_all: torch.Tensor, opt, sched,
                 criterion: nn.Module, *, seed: int, epoch: int, epochs: int, bs: int, steps: int,
                 device: torch.device, augment_images: bool, progress: bool,
                 on_step: StepHook | None) -> tuple[float, float]:
    """One epoch of SGD, its randomness (shuffle, augmentation, dropout) seeded by (seed, epoch)
    alone; returns the mean training loss and accuracy over its ``steps`` batches of ``bs``."""
    es = _epoch_seed(seed, epoch)
    torch.manual_seed(es)  # dropout
    gen = torch.Generator(device=device).manual_seed(es)
    perm = torch.randperm(len(y_all), generator=gen, device=device)
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
               file=sys.stderr, leave=False, dynamic_ncols=True)
    for step in bar:
        idx = perm[step * bs:(step + 1) * bs]
        xb = augment(x_all[idx], gen) if augment_images else x_all[idx]
        xb = ds.normalize(xb).contiguous(memory_format=torch.channels_last)
        yb = y_all[idx]
        with autocast(device):
            logits = model(xb)
            loss = criterion(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == yb).sum()
        if on_step is not None:
            on_step(epoch, step, model)
        if progress and (step % 20 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}",
                            acc=f"{correct.item() / ((step + 1) * bs):.3f}")
    bar.close()
    return loss_sum.item() / steps, correct.item() / (steps * bs)


def fit(model: nn.Module, ds: Dataset, tcfg: TrainConfig, *, seed: int, device: torch.device | str = "cpu",
        run_dir: Path | None = None, augment_images: bool = True, progress: bool = True,
        on_step: StepHook | None = None, eval_each_epoch: bool = True) -> History:
    """Train ``model`` in place on ``ds.train_x`` for ``tcfg.epochs`` epochs.

    With ``run_dir`` a checkpoint (model, optimizer, scheduler, history) is written atomically
    after every epoch and an existing one is resumed from. ``on_step(epoch, step, model)`` is
    called after every optimiser step (tests use it to interrupt or poison a run).
    Raises :class:`TrainingDiverged` if an epoch's loss is not finite; the last good checkpoint
    is left untouched.
    """
    device = torch.device(device)
    model.to(device).to(memory_format=torch.channels_last)
    n = len(ds.train_y)
    bs = min(tcfg.batch_size, n)
    steps = n // bs
    if steps == 0:
        raise ValueError(f"no training images (dataset {ds.name} has {n})")
    opt, sched = make_optimizer(model, tcfg, steps)
    history = History()
    ckpt_path = Path(run_dir) / "checkpoint.pt" if run_dir is not None else None
    identity = _identity(tcfg, seed)
    start = _resume(ckpt_path, model, opt, sched, history, identity)
    x_all, y_all = ds.train_x.to(device), ds.train_y.to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)
    hardware = hardware_name(device)      # per epoch: a run resumed on another machine type says so

    saved = start if ckpt_path is not None else 0          # epochs in the checkpoint on disk
    for epoch in range(start, tcfg.epochs):
        try:        # Ctrl-C anywhere in the epoch, its evaluation or its checkpoint: one line, nothing lost
            t0 = time.perf_counter()
            train_loss, train_acc = _train_epoch(
                model, ds, x_all, y_all, opt, sched, criterion, seed=seed, epoch=epoch, epochs=tcfg.epochs, bs=bs,
                steps=steps, device=device, augment_images=augment_images, progress=progress, on_step=on_step)
            if not math.isfinite(train_loss):
                where = f"; the last good checkpoint (epoch {epoch}) is kept in {ckpt_path}" if ckpt_path and epoch else ""
                raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1} "
                                       f"(peak lr {tcfg.lr}){where}. Lower train.lr or check the data.")
            row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": train_loss,
                   "train_acc": train_acc, "small_gamma": small_gamma_fractions(model)}
            if eval_each_epoch:
                if len(ds.val_y):
                    row["val_acc"] = evaluate(model, ds.val_x, ds.val_y, ds, device=device,
                                              batch_size=tcfg.eval_batch_size)["accuracy"]
                row["test_acc"] = evaluate(model, ds.test_x, ds.test_y, ds, device=device,
                                           batch_size=tcfg.eval_batch_size)["accuracy"]
            row["seconds"] = time.perf_counter() - t0
            row["hardware"] = hardware
            history.epochs.append(row)
            if progress:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                    if k not in ("small_gamma", "hardware")), file=sys.stderr)
            if ckpt_path is not None:
                save_torch({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "history": history.epochs, "identity": identity}, ckpt_path)
                saved = epoch + 1
        except KeyboardInterrupt:
            done = "epoch 1 is" if saved == 1 else f"epochs 1-{saved} are"
            kept = f"{done} saved in {ckpt_path}; " if ckpt_path and saved else ""
            raise Interrupted(f"training stopped in epoch {epoch + 1} of {tcfg.epochs}; {kept}") from None
    return history


@dataclass
class Baseline:
    """A trained baseline: the model (on CPU, eval mode), its metrics and where it is cached."""

    model: VGG16
    metrics: dict
    history: list[dict]
    run_dir: Path
    cached: bool


def baseline_dir(cfg: Config) -> Path:
    return stage_dir("baseline", digest(cfg, "data", "model", "train"))


def model_spec(model: VGG16) -> dict:
    return {"num_classes": model.num_classes, "width": model.width, "head": model.head_kind}


def load_model(path: Path) -> VGG16:
    """A model saved by :func:`train_baseline` (state dict + spec, no pickled classes)."""
    return _model_from(load_torch(path, what="model file"), path)


def _model_from(blob: dict, path: Path) -> VGG16:
    """The network a model file holds; weights that do not fit its recorded spec (width, head, classes)
    are a :class:`CacheCorrupt` naming the file."""
    try:
        model = build_model(**blob["spec"])
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines()] or [""]
        first = next((ln for ln in lines if "size mismatch" in ln), lines[0])[:200]
        raise CacheCorrupt(f"model file {str(path)!r} does not hold the network it describes ({type(e).__name__}: "
                           f"{first}); delete it to train the baseline again") from None
    return model.eval()


def _check_cached_config(cfg: Config, run_dir: Path, blob: dict) -> None:
    """The cached model (its loaded file ``blob``) and the config.yaml beside it must name this folder
    (another config's model copied into the slot would otherwise be taken for this one's)."""
    from .config import load_config
    stored = run_dir / "config.yaml"
    if blob.get("baseline", run_dir.name) != run_dir.name:
        raise CacheCorrupt(f"{run_dir / 'model.pt'} was trained for baseline {blob['baseline']}, not {run_dir.name} "
                           f"(the folder it is in); delete {run_dir} to train this config again")
    if not stored.is_file():
        return
    theirs = load_config(str(stored))
    if digest(theirs, "data", "model", "train") != run_dir.name:
        mine, other = cfg.payload("data", "model", "train"), theirs.payload("data", "model", "train")
        diff = [k for k in mine if mine[k] != other.get(k)] or ["(the cache version)"]
        raise CacheCorrupt(f"{stored} describes another baseline than the folder it is in ({', '.join(diff)} "
                           f"differ); delete {run_dir} to train this config again")


def train_baseline(cfg: Config, *, progress: bool = True, ds: Dataset | None = None) -> Baseline:
    """Train the baseline of ``cfg`` or load it from the cache (keyed by data, model, train, seed).

    An interrupted run resumes from its last epoch. Files in the cache folder: ``config.yaml``
    (resolved config), ``checkpoint.pt`` (while training), ``model.pt``, ``metrics.json``.
    """
    run_dir = baseline_dir(cfg)
    model_path, metrics_path = run_dir / "model.pt", run_dir / "metrics.json"
    if model_path.is_file() and metrics_path.is_file():
        info = load_json(metrics_path, what="baseline metrics")
        if not (isinstance(info, dict) and isinstance(info.get("metrics"), dict) and isinstance(info.get("history"), list)
                and isinstance(info["metrics"].get("test_accuracy"), float)):
            raise CacheCorrupt(f"baseline metrics {str(metrics_path)!r} lack their keys (metrics.test_accuracy, "
                               f"history); delete {run_dir} to train this baseline again")
        blob = load_torch(model_path, what="model file")
        _check_cached_config(cfg, run_dir, blob)
        return Baseline(_model_from(blob, run_dir / "model.pt"), info["metrics"], info["history"], run_dir, cached=True)
    save_config(cfg, run_dir / "config.yaml")
    ds = ds if ds is not None else load_dataset(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(num_classes=ds.num_classes, width=cfg.model.width, head=cfg.model.head)
    t0 = time.perf_counter()
    history = fit(model, ds, cfg.train, seed=cfg.seed, device=device, run_dir=run_dir,
                  augment_images=cfg.data.augment, progress=progress)
    test = evaluate(model, ds.test_x, ds.test_y, ds, device=device, batch_size=cfg.train.eval_batch_size)
    metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "train_seconds": sum(r["seconds"] for r in history.epochs),
               "wall_seconds_this_run": time.perf_counter() - t0, "device": str(device),
               "hardware": trained_on(history.epochs, hardware_name(device)), "dataset": ds.summary()}
    model = model.cpu().eval()
    save_torch({"spec": model_spec(model), "state_dict": model.state_dict(), "baseline": run_dir.name}, model_path)
    save_json({"metrics": metrics, "history": history.epochs}, metrics_path)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    return Baseline(model, metrics, history.epochs, run_dir, cached=False)


UNRECORDED = "machine not recorded"


def trained_on(epochs: list[dict], here: str) -> str:
    """The machine that trained these epochs; when a resumed run spans machines, each with its epochs
    ("A (epochs 1-30); B (epochs 31-91)"). Epochs from a checkpoint written before machines were recorded
    count as "machine not recorded" when the run spans more than one."""
    spans: list[list] = []
    for r in epochs:
        hw = r.get("hardware", UNRECORDED)
        if spans and spans[-1][0] == hw:
            spans[-1][2] = r["epoch"]
        else:
            spans.append([hw, r["epoch"], r["epoch"]])
    if len(spans) <= 1:
        return here if not spans or spans[0][0] == UNRECORDED else spans[0][0]
    return "; ".join(f"{hw} (epochs {a}-{b})" if a != b else f"{hw} (epoch {a})" for hw, a, b in spans)


def seeds_table(cfg: Config, seeds: int, *, progress: bool = True, out=None) -> tuple[list[dict], str]:
    """The baseline of ``cfg`` trained with seeds 0..``seeds``-1 (each cached like any baseline; the seed
    draws the initial weights, the held-out split, the subsets and the augmentation): one row per seed
    and a one-line summary, mean ± sd (sample sd) of the test accuracy. Written through ``out`` (an
    :class:`cmi.outputs.Outputs`) as ``01_baseline_seeds`` when given."""
    import statistics
    if seeds < 2:
        raise ConfigError(f"--seeds must be at least 2 for a spread, got {seeds}")
    rows = []
    for seed in range(seeds):
        base = train_baseline(cfg.replace({"seed": seed}), progress=progress)
        m = base.metrics
        rows.append({"seed": seed, "test_accuracy": 100 * m["test_accuracy"], "train_seconds": m["train_seconds"],
                     "hardware": m["hardware"], "cached": base.cached})
    acc = [r["test_accuracy"] for r in rows]
    summary = (f"{cfg.profile} baseline over {seeds} seeds: {statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f} % "
               f"(mean ± sd; min {min(acc):.2f}, max {max(acc):.2f})")
    if out is not None:
        out.table([{k: v for k, v in r.items() if k != "cached"} for r in rows], "01_baseline_seeds",
                  f"Test accuracy (%) of the baseline per training seed; {summary}. "
                  "The seed draws the initial weights, the held-out split and the augmentation; each row's "
                  "hardware is where it was trained", floatfmt=".2f")
    return rows, summary
