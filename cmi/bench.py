"""Benchmarks that print ratios against a reference measured in the same process.

    python -m cmi.bench ranking                      # everything (the full VGG16 at α=1.01 takes hours on a CPU)
    python -m cmi.bench ranking --layers conv1_1 conv3_1 --alpha 2
    python -m cmi.bench ranking --skip-vgg           # only engine vs the authors' cost structure
    python -m cmi.bench ranking --layers conv1_1 conv2_1 conv3_1 --alpha 1.01 --out figures/bench/x.md

Part 1 ranks the same input (N=128, C=32, 4x4 maps) with the engine and with a reference that has
the authors' cost structure (every candidate rebuilds the Gram matrices of the whole selected and
conditioning set from the features and calls the general eigensolver ``numpy.linalg.eigvals``).
Part 2 ranks random post-ReLU activations shaped like VGG16's 13 layers (N=256) and prints the
wall time per layer next to the floor: the time ``eigvalsh`` alone needs for as many N x N matrices
of the same kind (timed on up to 2048 of them and scaled; α = 2 uses no eigendecomposition, so it
has no such floor). With ``--layers`` naming only some layers, the time of all 13 is projected from
the last layer run (a layer's cost is its entropy count times the cost of one entropy).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .device import resolve_device
from .models import LAYER_NAMES, layer_widths
from .entropy import single_thread
from .ranking import _channel_grams, _variable_gram, rank_channels
from .store import atomic_write_text

SPATIAL = (32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2)


# ----------------------------------------------------------------------------- authors' cost structure
def _gram_np(x: np.ndarray, sigma: float) -> np.ndarray:
    g = x @ x.T
    sq = np.diag(g)
    return np.exp(-(sq[:, None] + sq[None, :] - 2 * g) / (2 * sigma ** 2)) / x.shape[0]


def _entropy_np(grams: list[np.ndarray], alpha: float) -> float:
    n = grams[0].shape[0]
    t = grams[0]
    for g in grams[1:]:
        t = t * g * n
    lam = np.abs(np.linalg.eigvals(t))
    return float(np.log(np.sum(lam ** alpha)) / (1 - alpha))


def reference_ranking(features: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor, alpha: float = 1.01,
                      condition: list[torch.Tensor] = ()) -> list[int]:
    """Greedy CMI ranking with the authors' cost structure (see module docstring): numpy, Gram
    matrices rebuilt from the features for every candidate, general eigensolver, MI terms recomputed."""
    f = features.double().numpy()
    n, c = f.shape[:2]
    s_f = 5 * n ** (-1 / (4 + f.shape[2] * f.shape[3]))
    onehot = np.eye(int(labels.max()) + 1)[labels.numpy()]
    gy = [_gram_np(onehot, 5 * n ** (-1 / (4 + onehot.shape[1])))]
    x = inputs.double().numpy()
    gx = [_gram_np(x.reshape(n, -1), 5 * n ** (-1 / (4 + x.shape[2] * x.shape[3])))]
    chan = lambda idx: [_gram_np(f[:, j].reshape(n, -1), s_f) for j in idx]  # noqa: E731
    gz = []
    for z in condition:
        z = z.double().numpy()
        s_z = 5 * n ** (-1 / (4 + z.shape[2] * z.shape[3]))
        gz += [_gram_np(z[:, j].reshape(n, -1), s_z) for j in range(z.shape[1])]
    mi = lambda a, b: _entropy_np(a, alpha) + _entropy_np(b, alpha) - _entropy_np(a + b, alpha)  # noqa: E731
    selected, remaining = [], list(range(c))
    for _ in range(c - 1):
        scores = [mi(gy, gz + chan(selected + [j])) for j in remaining]
        selected.append(remaining.pop(int(np.argmax(scores))))
        sel, rem = chan(selected), chan(remaining)
        _cmi = (_entropy_np(gy + gz + sel, alpha) + _entropy_np(rem + gz + sel, alpha)
                - _entropy_np(gy + rem + gz + sel, alpha) - _entropy_np(gz + sel, alpha))
        _mi_xt, _mi_ty = mi(gx, sel), mi(gy, sel)
    return selected


# ----------------------------------------------------------------------------- helpers
def _random_layer(n: int, c: int, hw: int, gen: torch.Generator) -> torch.Tensor:
    return torch.relu(torch.randn(n, c, hw, hw, generator=gen, dtype=torch.float32))


def eig_floor(features: torch.Tensor, labels: torch.Tensor, count: int, device: torch.device,
              batch: int = 64, sample: int = 2048) -> float:
    """Seconds that ``count`` bare eigvalsh calls take on matrices like the ranking's own: the
    normalised Gram matrices of single channels and of channel x labels, batched, one thread on CPU.
    (The spectrum matters: LAPACK deflates the many near-zero eigenvalues of such matrices.)
    At most ``sample`` calls are timed and the time is scaled to ``count``, so that measuring the
    floor of a full VGG16 ranking does not cost as much as the ranking itself."""
    n = features.shape[0]
    k_feat, _ = _channel_grams(features[:, :batch].to(device), "paper", torch.float64)
    onehot = torch.nn.functional.one_hot(labels.to(device), int(labels.max()) + 1).double()
    k_y, _ = _variable_gram(onehot, "paper", onehot.shape[1], torch.float64)
    mats = torch.cat([k_feat, k_feat * k_y]) / n
    with single_thread(mats.device):
        torch.linalg.eigvalsh(mats[:2])
        _sync(device)
        t0 = time.perf_counter()
        done, todo = 0, min(count, sample)
        while done < todo:
            m = min(len(mats), todo - done)
            torch.linalg.eigvalsh(mats[:m])
            done += m
        _sync(device)
    return (time.perf_counter() - t0) * count / todo


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


# ----------------------------------------------------------------------------- benchmarks
def bench_reference(device: torch.device, n: int = 128, c: int = 32, hw: int = 4, alpha: float = 1.01) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = _random_layer(n, c, hw, gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    inputs = torch.randn(n, 3, 32, 32, generator=gen)
    print(f"[1] engine vs authors' cost structure: N={n}, C={c}, {hw}x{hw} maps, alpha={alpha}", flush=True)
    t_engine = float("inf")
    for _ in range(3):  # best of 3: the first call also pays one-off start-up costs
        res = rank_channels(feats, labels, inputs=inputs, alpha=alpha, device=device)
        t_engine = min(t_engine, res.seconds)
    floor = eig_floor(feats, labels, res.entropies, device)
    t0 = time.perf_counter()
    ref_order = reference_ranking(feats, labels, inputs, alpha)
    t_ref = time.perf_counter() - t0
    same = "same order" if ref_order == res.order else "ORDER DIFFERS"
    print(f"    reference {t_ref:8.2f} s   engine {t_engine:8.3f} s   speed-up {t_ref / t_engine:6.1f}x   ({same})\n"
          f"    engine: {res.entropies} entropies; eigvalsh alone on as many {n}x{n} matrices: {floor:.3f} s "
          f"(engine = {t_engine / floor:.2f}x that floor)", flush=True)


def bench_vgg(device: torch.device, layers: list[str], alphas: list[float], n: int = 256, width: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(0)
    widths = layer_widths(width)
    labels = torch.randint(0, 10, (n,), generator=gen)
    inputs = torch.randn(n, 3, 32, 32, generator=gen)
    for alpha in alphas:
        print(f"[2] VGG16-shaped ranking, N={n}, alpha={alpha}, random post-ReLU activations", flush=True)
        print(f"    {'layer':8s} {'C':>4s} {'HxW':>6s} {'entropies':>10s} {'seconds':>9s} {'floor s':>8s} {'x floor':>7s}")
        total = floor_total = 0.0
        for name in layers:
            i = LAYER_NAMES.index(name)
            feats = _random_layer(n, widths[i], SPATIAL[i], gen)
            res = rank_channels(feats, labels, inputs=inputs, alpha=alpha, device=device,
                                progress=sys.stderr.isatty(), desc=name)
            floor = eig_floor(feats, labels, res.entropies, device) if alpha != 2 else float("nan")
            total += res.seconds
            floor_total += floor if alpha != 2 else 0
            ratio = f"{res.seconds / floor:7.2f}" if alpha != 2 else "    n/a"
            print(f"    {name:8s} {widths[i]:4d} {SPATIAL[i]:>3d}x{SPATIAL[i]:<2d} {res.entropies:10d} "
                  f"{res.seconds:9.1f} {floor if alpha != 2 else float('nan'):8.1f} {ratio}", flush=True)
        extra = f"   floor {floor_total:.1f} s ({total / floor_total:.2f}x)" if alpha != 2 else ""
        print(f"    total {len(layers)} layers, {sum(widths[LAYER_NAMES.index(l)] for l in layers)} channels: "
              f"{total:.1f} s = {total / 60:.1f} min{extra}", flush=True)
        rest = [i for i, name in enumerate(LAYER_NAMES) if name not in layers]
        if rest:
            # A layer's cost is its entropy count times the cost of one N x N entropy, whatever its
            # spatial size; a greedy ranking of C channels evaluates (C+1)^2 entropies.
            per_entropy = res.seconds / res.entropies  # the last layer run
            projected = total + per_entropy * sum((widths[i] + 1) ** 2 for i in rest)
            print(f"    projected for all 13 layers: {projected:.0f} s = {projected / 3600:.2f} h "
                  f"({len(rest)} layers not run, at {1e3 * per_entropy:.2f} ms per entropy as measured on {layers[-1]})",
                  flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cmi.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ranking"])
    parser.add_argument("--layers", nargs="+", default=list(LAYER_NAMES), choices=LAYER_NAMES, metavar="LAYER",
                        help="VGG16 layers to rank (default: all 13)")
    parser.add_argument("--alpha", nargs="+", type=float, default=[1.01, 2.0])
    parser.add_argument("--n", type=int, default=256, help="samples for the VGG16-shaped run")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-vgg", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the printout, with the command, to this Markdown file (README includes it)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    printout = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printout)):
        print(f"device: {hardware(device)}; torch {torch.__version__}", flush=True)
        if not args.skip_reference:
            bench_reference(device)
        if not args.skip_vgg:
            bench_vgg(device, args.layers, args.alpha, n=args.n)
    if args.out is not None:
        command = "python -m cmi.bench " + " ".join(sys.argv[1:] if argv is None else argv)
        atomic_write_text(args.out, f"`{command}`\n\n```\n{printout.getvalue().rstrip()}\n```\n")


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


# ----------------------------------------------------------------------------- run-time estimate
def estimate_run(cfg, steps: int = 4) -> dict:
    """Rough wall time of ``make reproduce`` for ``cfg`` on this machine, from a few timed training
    steps and eigendecompositions (no dataset needed): seconds for baseline, rankings, fine-tuning."""
    from .config import Config
    from .models import build_model
    from .train import make_optimizer

    assert isinstance(cfg, Config)
    device = resolve_device(cfg.device)
    model = build_model(num_classes=10, width=cfg.model.width, head=cfg.model.head).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt, _ = make_optimizer(model, cfg.train, 100)
    x = torch.randn(cfg.train.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.train.batch_size,), device=device)
    times = []
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    img_per_s = cfg.train.batch_size / (sum(times) / len(times))
    n_train = {"cifar10": 50000, "fashion-mnist": 60000, "synthetic": 2000}[cfg.data.name] - cfg.data.val_size
    if cfg.data.train_subset:
        n_train = min(n_train, cfg.data.train_subset)
    baseline = 1.1 * cfg.train.epochs * n_train / img_per_s
    n = cfg.cmi.n_samples
    gen = torch.Generator().manual_seed(0)
    feats = _random_layer(n, 16, 4, gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    t_eig = eig_floor(feats, labels, 32, device) / 32
    entropies_per_set = sum(c * c for c in layer_widths(cfg.model.width))
    p = cfg.prune
    sets = 1 + ("ptest" in p.cutoffs) + sum(f != "per-layer" for f in p.formulations) * len(p.cutoffs) * len(p.directions)
    rankings = sets * entropies_per_set * t_eig
    finetune = len(p.formulations) * len(p.cutoffs) * len(p.directions) * p.finetune_epochs * n_train / img_per_s
    return {"hardware": hardware(device), "train_images_per_s": img_per_s, "baseline_s": baseline,
            "rankings_s": rankings, "finetune_s": finetune, "total_s": baseline + rankings + finetune,
            "eig_ms": 1e3 * t_eig, "ranking_sets": sets}


def format_estimate(cfg, est: dict) -> str:
    h = lambda s: f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"  # noqa: E731
    lines = [f"Estimated time of `make reproduce PROFILE={cfg.profile}` ({cfg.data.name}, width {cfg.model.width}) "
             f"on {est['hardware']}:",
             f"  baseline training  ~{h(est['baseline_s'])} ({est['train_images_per_s']:.0f} images/s, "
             f"{cfg.train.epochs} epochs)",
             f"  CMI rankings       ~{h(est['rankings_s'])} ({est['ranking_sets']} sets of 13 layers, "
             f"{est['eig_ms']:.2f} ms per {cfg.cmi.n_samples}x{cfg.cmi.n_samples} eigendecomposition)",
             f"  fine-tuning        ~{h(est['finetune_s'])}",
             f"  total              ~{h(est['total_s'])} (rough: cached stages are skipped)"]
    if est["total_s"] > 2 * 3600:
        lines.append("  For a run in about an hour on a CPU: make reproduce PROFILE=quick DATASET=fashion-mnist; "
                     "in minutes: PROFILE=smoke.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
