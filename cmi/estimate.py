"""How long would ``make reproduce`` take with a profile on this machine? ``python -m cmi estimate``.

A few timed training steps and eigendecompositions (no dataset needed) scaled to the profile's
epochs, images and ranking sets: a rough upper bound, since cached stages are skipped and the
saturation stop cuts most rankings short.
"""
from __future__ import annotations

import time

import torch

from .bench import eig_floor, random_layer, sync
from .device import hardware_name
from .config import Config
from .device import resolve_device
from .models import build_model, layer_widths
from .names import DATASET_SIZES
from .train import make_optimizer


def estimate_run(cfg, steps: int = 4) -> dict:
    """Rough wall time of ``make reproduce`` for ``cfg`` on this machine, from a few timed training
    steps and eigendecompositions (no dataset needed): seconds for baseline, rankings, fine-tuning."""
    if not isinstance(cfg, Config):
        raise TypeError(f"estimate_run needs a cmi.config.Config, got {type(cfg).__name__}")
    device = resolve_device(cfg.device)
    model = build_model(num_classes=10, width=cfg.model.width, head=cfg.model.head).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt, _ = make_optimizer(model, cfg.train, 100)
    x = torch.randn(cfg.train.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.train.batch_size,), device=device)
    times = []
    for i in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    img_per_s = cfg.train.batch_size / (sum(times) / len(times))
    n_train = DATASET_SIZES[cfg.data.name][0] - cfg.data.val_size
    if cfg.data.train_subset:
        n_train = min(n_train, cfg.data.train_subset)
    baseline = 1.1 * cfg.train.epochs * n_train / img_per_s
    n = cfg.cmi.n_samples
    gen = torch.Generator().manual_seed(0)
    feats = random_layer(n, 16, 4, gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    t_eig = eig_floor(feats, labels, 32, device) / 32
    entropies_per_set = sum(c * c for c in layer_widths(cfg.model.width))
    p = cfg.prune
    sets = 1 + ("ptest" in p.cutoffs) + sum(f != "per-layer" for f in p.formulations) * len(p.cutoffs) * len(p.directions)
    rankings = sets * entropies_per_set * t_eig
    finetune = len(p.formulations) * len(p.cutoffs) * len(p.directions) * p.finetune_epochs * n_train / img_per_s
    return {"hardware": hardware_name(device), "train_images_per_s": img_per_s, "baseline_s": baseline,
            "rankings_s": rankings, "finetune_s": finetune, "total_s": baseline + rankings + finetune,
            "eig_ms": 1e3 * t_eig, "ranking_sets": sets}


def format_estimate(cfg, est: dict) -> str:
    h = lambda s: f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"  # noqa: E731
    lines = [f"Estimated time of `make reproduce PROFILE={cfg.profile}` ({cfg.data.name}, width {cfg.model.width}) "
             f"on {est['hardware']}:",
             f"  baseline training  ~{h(est['baseline_s'])} ({est['train_images_per_s']:.0f} images/s, "
             f"{cfg.train.epochs} epochs)",
             f"  CMI rankings       {'at most ' if cfg.cmi.saturation_tol else '~'}{h(est['rankings_s'])} "
             f"({est['ranking_sets']} sets of 13 layers, {est['eig_ms']:.2f} ms per "
             f"{cfg.cmi.n_samples}x{cfg.cmi.n_samples} eigendecomposition"
             + ("; every greedy pick, which the saturation stop cuts short" if cfg.cmi.saturation_tol else "") + ")",
             f"  fine-tuning        ~{h(est['finetune_s'])}",
             f"  total              ~{h(est['total_s'])} (rough: cached stages are skipped)"]
    if est["total_s"] > 2 * 3600:
        lines.append("  For a run in about an hour on a CPU: make reproduce PROFILE=quick DATASET=fashion-mnist; "
                     "in minutes: PROFILE=smoke.")
    return "\n".join(lines)
