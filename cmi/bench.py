"""Benchmarks that print ratios against a reference measured in the same process.

    python -m cmi.bench ranking --alpha 1.01 --skip-reference        # full VGG16, saturation stop, exact on
                                                                     # conv1_1 and conv2_1 (--exact-layers);
                                                                     # one core, then all cores, same process
    python -m cmi.bench ranking --layers conv1_1 conv3_1 --alpha 2
    python -m cmi.bench ranking --skip-vgg           # only engine vs the authors' cost structure
    python -m cmi.bench ranking --saturation-tol 0 --layers conv1_1 conv2_1   # the exact full greedy run
    python -m cmi.bench ranking --activations artifacts/cmi/<digest>/activations.pt   # a trained network's maps
    python -m cmi.bench saturation --profile quick   # what the stop costs and changes on the trained network
    python -m cmi.bench scoring --profile quick --dataset fashion-mnist   # candidate-cut scoring vs mask + evaluate

Part 1 ranks the same input (N=128, C=32, 4x4 maps) with the engine and with a reference that has
the authors' cost structure (every candidate rebuilds the Gram matrices of the whole selected and
conditioning set from the features and calls the general eigensolver ``numpy.linalg.eigvals``).
Part 2 ranks the 13 layers of VGG16 (N=256) with the saturation stop (``--saturation-tol``,
default :data:`cmi.names.SATURATION_TOL`) and prints, per layer, the pick where the stop fired,
the wall time and the floor: the time ``eigvalsh`` alone needs for as many N x N matrices of the
same kind (timed on up to 2048 of them and scaled; α = 2 uses no eigendecomposition, so it has no
such floor). The activations are random post-ReLU maps (:data:`RANDOM_SCALE`: calibrated so that
they saturate where a trained network's maps do) or, with ``--activations``, a captured file of a
trained network (its N, widths and labels). With ``--layers`` naming only some layers, the
time of all 13 is projected from the last layer run (a layer's cost is its entropy count times
the cost of one entropy). Part 3 ranks ``--exact-layers`` again with tolerance 0 (the exact full
greedy run) in the same process and prints the speed-up and whether the prefix agrees.

``saturation`` ranks every layer of a profile's trained network at several tolerances (0 first:
the exact run is the reference, same process) and prints where the stop fires, the speed-up, and
the test accuracy of keeping half of the layer in each order, next to random choices.

``scoring`` scores the masks a bi-directional plan scores (:func:`plan_like_masks`) on a profile's
held-out images, with :class:`cmi.evaluation.MaskedScorer` and with the reference, a masked copy
evaluated whole (``evaluate(mask_model(...))``), in the same process, and checks the accuracies agree.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .device import hardware_name, resolve_device
from .models import LAYER_NAMES, layer_widths
from .entropy import cpu_workers, eigvalsh
from .grams import channel_grams, variable_gram
from .names import SATURATION_TOL
from .ranking import rank_channels
from .reference import reference_ranking
from .store import atomic_write_text

SPATIAL = (32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2)


# ----------------------------------------------------------------------------- helpers
#: Scale of the random post-ReLU maps of part 2: relu(0.8 N(0, 1)) has per-pixel variance 0.22
#: (the trained quick network's layers: 0.09-0.47) and, at the quick shapes, stops where that
#: network's own maps stop (figures/bench/calibration-{trained,random}-quick.md).
RANDOM_SCALE = 0.8


def random_layer(n: int, c: int, hw: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.relu(scale * torch.randn(n, c, hw, hw, generator=gen, dtype=torch.float32))


def eig_floor(features: torch.Tensor, labels: torch.Tensor, count: int, device: torch.device,
              batch: int = 64, sample: int = 2048) -> float:
    """Seconds that ``count`` bare eigvalsh calls take on matrices like the ranking's own: the
    normalised Gram matrices of single channels and of channel x labels, batched (:func:`cmi.entropy.eigvalsh`:
    one thread on CPU, cuSOLVER's batched solver on CUDA).
    (The spectrum matters: LAPACK deflates the many near-zero eigenvalues of such matrices.)
    At most ``sample`` calls are timed and the time is scaled to ``count``, so that measuring the
    floor of a full VGG16 ranking does not cost as much as the ranking itself."""
    n = features.shape[0]
    k_feat, _ = channel_grams(features[:, :batch].to(device), "paper", torch.float64)
    onehot = torch.nn.functional.one_hot(labels.to(device), int(labels.max()) + 1).double()
    k_y, _ = variable_gram(onehot, "paper", onehot.shape[1], torch.float64)
    mats = torch.cat([k_feat, k_feat * k_y]) / n
    eigvalsh(mats[:2])          # the ranking's own solver: one thread on CPU, the batched one on CUDA
    sync(device)
    t0 = time.perf_counter()
    done, todo = 0, min(count, sample)
    while done < todo:
        m = min(len(mats), todo - done)
        eigvalsh(mats[:m])
        done += m
    sync(device)
    return (time.perf_counter() - t0) * count / todo


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- benchmarks
def bench_gpu_solver(device: torch.device, sizes=(64, 128, 256), batch: int = 512) -> None:
    """On CUDA: ``batch`` Gram-like matrices per size through torch.linalg.eigvalsh (one cuSOLVER call per
    matrix above N = 32) and through cmi.gpu_eigh's batched call, same process; ratio and largest difference."""
    print(f"[gpu] eigensolver, {batch} float64 matrices per size: torch.linalg.eigvalsh vs cusolverDnXsyevBatched",
          flush=True)
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        x = torch.randn(batch, n, 9, dtype=torch.float64, generator=gen).to(device)
        a = torch.exp(-torch.cdist(x, x) ** 2 / 8) / n
        times = {}
        for batched in (False, True):
            eigvalsh(a[:2], batched=batched)
            sync(device)
            t0 = time.perf_counter()
            w = eigvalsh(a, batched=batched)
            sync(device)
            times[batched] = (time.perf_counter() - t0, w)
        diff = (times[True][1] - times[False][1]).abs().max().item()
        print(f"    N={n:4d}: torch {times[False][0]:.3f} s, batched {times[True][0]:.3f} s, "
              f"{times[False][0] / times[True][0]:.1f}x; max |diff| {diff:.1e}", flush=True)


def bench_reference(device: torch.device, n: int = 128, c: int = 32, hw: int = 4, alpha: float = 1.01) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = random_layer(n, c, hw, gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    inputs = torch.randn(n, 3, 32, 32, generator=gen)
    print(f"[1] engine vs authors' cost structure: N={n}, C={c}, {hw}x{hw} maps, alpha={alpha}", flush=True)
    t_engine = float("inf")
    for _ in range(3):  # best of 3: the first call also pays one-off start-up costs
        res = rank_channels(feats, labels, inputs=inputs, alpha=alpha, device=device, saturation_tol=0)
        t_engine = min(t_engine, res.seconds)
    floor = eig_floor(feats, labels, res.entropies, device)
    t0 = time.perf_counter()
    ref_order = reference_ranking(feats, labels, inputs, alpha)
    t_ref = time.perf_counter() - t0
    same = "same order" if ref_order == res.order else "ORDER DIFFERS"
    print(f"    reference {t_ref:8.2f} s   engine {t_engine:8.3f} s   speed-up {t_ref / t_engine:6.1f}x   ({same})\n"
          f"    engine: {res.entropies} entropies; eigvalsh alone on as many {n}x{n} matrices: {floor:.3f} s "
          f"(engine = {t_engine / floor:.2f}x that floor)", flush=True)


def _layers_from(activations: Path | None, n: int, width: float, gen: torch.Generator):
    """(source description, labels, inputs, {layer name: features}) for part 2."""
    if activations is not None:
        from .activations import Activations
        acts = Activations.load(activations)
        feats = {name: f for name, f in zip(LAYER_NAMES, acts.features)}
        return (f"activations of a trained network ({activations}, N={acts.n})", acts.labels, acts.inputs, feats)
    widths = layer_widths(width)
    labels = torch.randint(0, 10, (n,), generator=gen)
    inputs = torch.randn(n, 3, 32, 32, generator=gen)
    feats = {name: random_layer(n, widths[i], SPATIAL[i], gen, RANDOM_SCALE) for i, name in enumerate(LAYER_NAMES)}
    return (f"random post-ReLU activations relu({RANDOM_SCALE} N(0,1)), width {width}, N={n}",
            labels, inputs, feats)


def bench_vgg(device: torch.device, layers: list[str], alphas: list[float], n: int = 256, width: float = 1.0,
              saturation_tol: float = SATURATION_TOL, exact_layers: list[str] = (),
              activations: Path | None = None, workers: list[int] = (1,)) -> None:
    gen = torch.Generator().manual_seed(0)
    source, labels, inputs, all_feats = _layers_from(activations, n, width, gen)
    workers = list(dict.fromkeys(workers))
    for alpha in alphas:
        print(f"[2] VGG16 ranking, alpha={alpha}, saturation_tol={saturation_tol:g}, {source}; "
              f"workers {workers} (CPU threads sharing each eigendecomposition batch; the first is the reference)",
              flush=True)
        w_cols = " ".join(f"{f's w={w}':>9s}" for w in workers)
        print(f"    {'layer':8s} {'C':>4s} {'HxW':>6s} {'stop':>5s} {'entropies':>10s} {w_cols} "
              f"{'floor s':>8s} {'x floor':>7s}" + ("  speed-up  same order & CMI" if len(workers) > 1 else ""))
        totals, floor_total, results, same_all = [0.0] * len(workers), 0.0, {}, True
        for name in layers:
            feats = all_feats[name]
            c, hw = feats.shape[1], feats.shape[2]
            runs = [rank_channels(feats, labels, inputs=inputs, alpha=alpha, device=device, workers=w,
                                  saturation_tol=saturation_tol, progress=sys.stderr.isatty(), desc=f"{name} w={w}")
                    for w in workers]
            res = results[name] = runs[0]
            totals = [t + r.seconds for t, r in zip(totals, runs)]
            floor = eig_floor(feats, labels, res.entropies, device) if alpha != 2 else float("nan")
            floor_total += floor if alpha != 2 else 0
            ratio = f"{res.seconds / floor:7.2f}" if alpha != 2 else "    n/a"
            stop = "-" if res.saturated_at is None else str(res.saturated_at)
            secs = " ".join(f"{r.seconds:9.1f}" for r in runs)
            same = all((r.order, r.cmi) == (res.order, res.cmi) for r in runs)
            same_all &= same
            tail = f"  {res.seconds / runs[-1].seconds:7.2f}x  {'yes' if same else 'DIFFERS'}" if len(runs) > 1 else ""
            print(f"    {name:8s} {c:4d} {hw:>3d}x{hw:<2d} {stop:>5s} {res.entropies:10d} {secs} "
                  f"{floor if alpha != 2 else float('nan'):8.1f} {ratio}{tail}", flush=True)
        total = totals[0]
        extra = f"   floor {floor_total:.1f} s ({total / floor_total:.2f}x)" if alpha != 2 else ""
        print(f"    total {len(layers)} layers, {sum(all_feats[l].shape[1] for l in layers)} channels: "
              f"{total:.1f} s = {total / 60:.1f} min with workers={workers[0]}{extra}", flush=True)
        for w, t in zip(workers[1:], totals[1:]):
            print(f"    workers={w}: {t:.1f} s = {t / 60:.1f} min, {total / t:.2f}x the speed of workers={workers[0]}; "
                  f"orders and CMI values {'identical in every layer' if same_all else 'DIFFER'}", flush=True)
        print("    stop: picks chosen by greedy CMI before CMI_t <= tol x I(Y; L) ('-': never, every pick is CMI's)",
              flush=True)
        rest = [name for name in LAYER_NAMES if name not in layers]
        if rest and saturation_tol == 0:
            # A layer's cost is its entropy count times the cost of one N x N entropy, whatever its
            # spatial size; an exact greedy ranking of C channels evaluates (C+1)^2 entropies.
            per_entropy = res.seconds / res.entropies  # the last layer run
            projected = total + per_entropy * sum((all_feats[r].shape[1] + 1) ** 2 for r in rest)
            print(f"    projected for all 13 layers: {projected:.0f} s = {projected / 3600:.2f} h "
                  f"({len(rest)} layers not run, at {1e3 * per_entropy:.2f} ms per entropy as measured on {layers[-1]})",
                  flush=True)
        elif rest:
            print(f"    {len(rest)} layers not run (where the stop fires cannot be projected)", flush=True)
        if exact_layers and saturation_tol > 0:
            print(f"[3] the same layers ranked exactly (saturation_tol=0), same process, alpha={alpha}", flush=True)
            print(f"    {'layer':8s} {'stop':>5s} {'exact s':>9s} {'stop s':>8s} {'speed-up':>8s}  prefix")
            for name in exact_layers:
                fast = results.get(name) or rank_channels(all_feats[name], labels, inputs=inputs, alpha=alpha,
                                                          device=device, saturation_tol=saturation_tol)
                exact = rank_channels(all_feats[name], labels, inputs=inputs, alpha=alpha, device=device,
                                      saturation_tol=0, progress=sys.stderr.isatty(), desc=f"{name} exact")
                t = fast.cmi_picks
                same = (fast.order[:t] == exact.order[:t] and fast.cmi[:t] == exact.cmi[:t])
                print(f"    {name:8s} {t:5d} {exact.seconds:9.1f} {fast.seconds:8.1f} {exact.seconds / fast.seconds:7.1f}x  "
                      f"{'identical order and CMI values' if same else 'DIFFERS'} over the {t} CMI picks", flush=True)


def bench_saturation(profile: str, dataset: str | None, tols: list[float], keep: float, test_images: int,
                     seeds: int, progress: bool) -> None:
    """What the saturation stop costs and changes on a trained network: per layer (no conditioning)
    and tolerance, where the stop fires, the ranking time against the exact run (same process), and
    the test accuracy of keeping ``keep`` of that layer's channels in the ranking's order (masked;
    and BN-recalibrated after removal), next to the exact order and to random choices."""
    import dataclasses

    from .config import load_config
    from .evaluation import controls_budget, evaluate
    from .run import prepare_run

    cfg = load_config(profile, overrides={"data.name": dataset} if dataset else None)
    study = prepare_run(cfg, progress)
    acts, c = study.acts, cfg.cmi
    budget = dataclasses.replace(controls_budget(cfg), test_images=test_images)

    print(f"[saturation] profile {cfg.profile} · {cfg.data.name} · N={acts.n}, alpha={c.alpha}, sigma={c.sigma}; "
          f"keep {keep:.0%} of one layer; accuracy on {test_images} test images (masked / BN-recalibrated); "
          f"random: {seeds} seeds", flush=True)
    print(f"    {'layer':8s} {'tol':>7s} {'picks':>5s} {'seconds':>8s} {'speed-up':>8s} {'overlap':>7s} "
          f"{'masked':>7s} {'recal':>7s}")
    summary = {t: [] for t in tols}
    randoms = []
    for layer, name in enumerate(LAYER_NAMES):
        width = acts.widths[layer]
        k = max(1, round(keep * width))
        exact_kept = None
        exact_s = None
        for tol in tols:
            res = rank_channels(acts.features[layer], acts.labels, inputs=acts.inputs, alpha=c.alpha, sigma=c.sigma,
                                saturation_tol=tol, device=study.device)
            full = res.order + [j for j in range(width) if j not in res.order]
            kept = sorted(full[:k])
            if tol == 0:
                exact_kept, exact_s = kept, res.seconds
            ev = evaluate(study, {layer: kept}, ("masked", "recalibrated"), budget)
            overlap = len(set(kept) & set(exact_kept)) / k if exact_kept is not None else float("nan")
            speed = exact_s / res.seconds if exact_s else float("nan")
            summary[tol].append((res.seconds, ev["acc_masked"], ev["acc_recalibrated"], overlap, res.cmi_picks))
            picks = "all" if res.saturated_at is None else str(res.saturated_at)
            print(f"    {name:8s} {tol:7.0e} {picks:>5s} {res.seconds:8.2f} {speed:7.1f}x {overlap:7.0%} "
                  f"{100 * ev['acc_masked']:7.2f} {100 * ev['acc_recalibrated']:7.2f}", flush=True)
        gen = torch.Generator().manual_seed(cfg.seed)
        rnd = [evaluate(study, {layer: sorted(torch.randperm(width, generator=gen)[:k].tolist())},
                        ("masked", "recalibrated"), budget) for _ in range(seeds)]
        m = [100 * r["acc_masked"] for r in rnd]
        rc = [100 * r["acc_recalibrated"] for r in rnd]
        randoms.append((np.mean(m), np.mean(rc)))
        print(f"    {name:8s} {'random':>7s} {'':5s} {'':8s} {'':8s} {'':7s} {np.mean(m):7.2f} {np.mean(rc):7.2f}"
              f"   (sd {np.std(m, ddof=1):.2f} / {np.std(rc, ddof=1):.2f})", flush=True)
    exact = summary.get(0.0)
    print("    summary over the 13 layers:", flush=True)
    for tol, rows in summary.items():
        secs = sum(r[0] for r in rows)
        line = (f"    tol {tol:7.0e}: {secs:7.1f} s in all"
                + (f" ({sum(r[0] for r in exact) / secs:.1f}x faster than exact)" if exact and tol else "")
                + f", mean overlap with the exact kept set {np.mean([r[3] for r in rows]):.0%}")
        if exact and tol:
            dm = np.mean([abs(a[1] - b[1]) for a, b in zip(rows, exact)]) * 100
            dr = np.mean([abs(a[2] - b[2]) for a, b in zip(rows, exact)]) * 100
            line += f", mean |accuracy change| {dm:.2f} pp masked / {dr:.2f} pp recalibrated"
        line += (f"; mean accuracy {100 * np.mean([r[1] for r in rows]):.2f} masked / "
                 f"{100 * np.mean([r[2] for r in rows]):.2f} recalibrated")
        print(line, flush=True)
    print(f"    random ({seeds} seeds per layer): mean accuracy {np.mean([r[0] for r in randoms]):.2f} masked / "
          f"{np.mean([r[1] for r in randoms]):.2f} recalibrated", flush=True)


def plan_like_masks(widths: list[int], start: int, rng, candidates: int = 3) -> list[dict[int, list[int]]]:
    """The masks ({layer: kept channels}) a bi-directional plan scores, in its order, with random cuts:
    the unpruned network (the reference), pass one (each layer alone, ``candidates`` cuts), the
    forward half from ``start`` (the chain so far plus each candidate of the next layer), then the
    backward half."""
    cut = lambda l: sorted(rng.sample(range(widths[l]), rng.randint(1, widths[l])))  # noqa: E731
    masks: list[dict[int, list[int]]] = [{}]
    masks += [{l: cut(l)} for l in range(len(widths)) for _ in range(candidates)]
    first = {start: cut(start)}
    for half in (range(start + 1, len(widths)), range(start - 1, -1, -1)):
        chain = dict(first)
        for l in half:
            masks += [{**chain, l: cut(l)} for _ in range(candidates)]
            chain[l] = masks[-1][l]
    return masks


def bench_scoring(profile: str, dataset: str | None, start: int, device: torch.device) -> None:
    """Candidate-cut scoring: :class:`cmi.evaluation.MaskedScorer` against masking a copy and evaluating it
    whole, on the masks of :func:`plan_like_masks` and the profile's ``prune.select_images`` held-out
    images, with an untrained network of the profile's width (the cost does not depend on the weights)."""
    import random

    from .config import load_config
    from .data import load_dataset
    from .models import build_model
    from .surgery import mask_model
    from .evaluation import MaskedScorer
    from .train import evaluate

    cfg = load_config(profile, overrides={"data.name": dataset} if dataset else None)
    ds = load_dataset(cfg)
    n = cfg.prune.select_images or len(ds.val_y)
    x, y = ds.val_x[:n], ds.val_y[:n]
    torch.manual_seed(cfg.seed)
    model = build_model(num_classes=ds.num_classes, width=cfg.model.width, head=cfg.model.head).to(device).eval()
    widths = [c.out_channels for c in model.convs()]
    masks = plan_like_masks(widths, start, random.Random(cfg.seed))
    print(f"[scoring] profile {cfg.profile} · {cfg.data.name} · width {cfg.model.width} · {len(y)} held-out images; "
          f"{len(masks)} masks in a bi-directional plan's order from start {LAYER_NAMES[start]}", flush=True)
    evaluate(model, x[:100], y[:100], ds, device=device)            # warm-up
    sync(device)
    t0 = time.perf_counter()
    ref = [evaluate(mask_model(model, k), x, y, ds, device=device)["accuracy"] for k in masks]
    sync(device)
    t_ref = time.perf_counter() - t0
    scorer = MaskedScorer(model, x, y, ds, device=device)
    t0 = time.perf_counter()
    fast = [scorer(k) for k in masks]
    sync(device)
    t_fast = time.perf_counter() - t0
    print(f"    mask + evaluate whole   {t_ref:7.1f} s  ({1000 * t_ref / len(masks):.0f} ms per mask)")
    print(f"    MaskedScorer            {t_fast:7.1f} s  ({1000 * t_fast / len(masks):.0f} ms per mask)  "
          f"{t_ref / t_fast:.1f}x faster; accuracies {'identical' if fast == ref else 'DIFFER'} on all "
          f"{len(masks)} masks", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cmi.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ranking", "saturation", "scoring"])
    parser.add_argument("--layers", nargs="+", default=list(LAYER_NAMES), choices=LAYER_NAMES, metavar="LAYER",
                        help="VGG16 layers to rank (default: all 13)")
    parser.add_argument("--alpha", nargs="+", type=float, default=[1.01, 2.0])
    parser.add_argument("--n", type=int, default=256, help="samples for the VGG16-shaped run")
    parser.add_argument("--width", type=float, default=1.0, help="VGG16 width multiplier of the random layers")
    parser.add_argument("--saturation-tol", type=float, default=SATURATION_TOL,
                        help=f"relative tolerance of the saturation stop; 0 = exact full run (default {SATURATION_TOL:g})")
    parser.add_argument("--exact-layers", nargs="*", default=["conv1_1", "conv2_1"], choices=LAYER_NAMES,
                        metavar="LAYER", help="layers also ranked exactly, for the speed-up (default: conv1_1 conv2_1)")
    parser.add_argument("--profile", default="quick", help="saturation, scoring: the profile (its network, images)")
    parser.add_argument("--dataset", default=None, help="saturation, scoring: dataset override (e.g. fashion-mnist)")
    parser.add_argument("--start", default="conv2_1", choices=LAYER_NAMES,
                        help="scoring: the plan's start layer (default conv2_1: the start layer of quick's "
                             "per-layer scree plan in the Intel run that figures/bench/scoring-quick.md measured)")
    parser.add_argument("--tols", nargs="+", type=float, default=[0.0, 1e-2, 1e-3, 1e-4, 1e-6],
                        help="saturation: tolerances compared (0 = exact, the reference; list it first)")
    parser.add_argument("--keep", type=float, default=0.5, help="saturation: fraction of a layer kept")
    parser.add_argument("--test-images", type=int, default=2000, help="saturation: seeded test-image draw")
    parser.add_argument("--seeds", type=int, default=3, help="saturation: random-choice seeds per layer")
    parser.add_argument("--activations", type=Path, default=None,
                        help="rank a captured activations.pt (a trained network's maps) instead of random ones")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    parser.add_argument("--workers", nargs="+", type=int, default=None,
                        help="ranking: CPU threads per eigendecomposition batch, each run in turn on every layer "
                             "(default: 1 and all cores, the speed-up printed)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-vgg", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the printout, with the command, to this Markdown file (README includes it)")
    args = parser.parse_args(argv)
    if args.activations is not None and not args.activations.is_file():
        parser.error(f"--activations {args.activations}: no such file (make one with `python -m cmi sweep`, "
                     "which captures artifacts/cmi/<digest>/activations.pt)")
    if args.what == "saturation" and (not args.tols or args.tols[0] != 0):
        parser.error("--tols must start with 0: the exact run is the reference")
    if args.workers is not None and min(args.workers) < 1:
        parser.error(f"--workers must be positive, got {args.workers}")
    if not 0 <= args.saturation_tol < 1:
        parser.error(f"--saturation-tol must be in [0, 1), got {args.saturation_tol}")
    device = resolve_device(args.device)
    printout = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printout)):
        print(f"device: {hardware_name(device)}; torch {torch.__version__}", flush=True)
        if args.what == "saturation":
            bench_saturation(args.profile, args.dataset, args.tols, args.keep, args.test_images, args.seeds,
                             sys.stderr.isatty())
        elif args.what == "scoring":
            bench_scoring(args.profile, args.dataset, LAYER_NAMES.index(args.start), device)
        elif not args.skip_reference:
            bench_reference(device)
        if args.what == "ranking" and device.type == "cuda":
            bench_gpu_solver(device)
        if args.what == "ranking" and not args.skip_vgg:
            bench_vgg(device, args.layers, args.alpha, n=args.n, width=args.width,
                      saturation_tol=args.saturation_tol, exact_layers=args.exact_layers,
                      activations=args.activations, workers=args.workers or [1, cpu_workers()])
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


if __name__ == "__main__":
    main()
