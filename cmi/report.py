"""Size, cost and speed of a (pruned) network.

MACs count the multiply-accumulates of conv and linear layers only, for one 3x32x32 image: the
convention of the pruning literature (Li et al. 2017, HRank, CHIP); BN, ReLU and pooling are left
out. Latency is the median wall time of repeated forward passes on the CPU.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from .models import count_params


def conv_linear_macs(model: nn.Module, input_shape=(1, 3, 32, 32)) -> int:
    """Multiply-accumulates of every Conv2d and Linear layer for one input of ``input_shape``."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() // out.shape[0] * k

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += m.in_features * m.out_features * (out.numel() // out.shape[-1] // out.shape[0])

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            model(torch.zeros(input_shape, device=dev))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


def cpu_latency(model: nn.Module, batch: int, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one forward pass of ``batch`` images on the CPU (a channels_last copy in
    eval mode; the model passed in is left as it is)."""
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_cost(model: nn.Module, latency_repeats: tuple[int, int] = (20, 5)) -> dict:
    """Params, conv+linear MACs and CPU latency (ms) at batch 1 and 256."""
    return {"params": count_params(model), "macs": conv_linear_macs(model),
            "latency_b1_ms": 1e3 * cpu_latency(model, 1, latency_repeats[0]),
            "latency_b256_ms": 1e3 * cpu_latency(model, 256, latency_repeats[1])}


def layer_table(model: nn.Module) -> list[dict]:
    """One row per conv layer: filters, output size, parameters (conv + BN) and MACs per image."""
    from .models import LAYER_NAMES

    rows, sizes = [], []
    hooks = [c.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for c in model.convs()]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    for name, conv, bn, s in zip(LAYER_NAMES, model.convs(), bns, sizes):
        rows.append({"layer": name, "in": conv.in_channels, "filters": conv.out_channels, "output": f"{s}x{s}",
                     "params": sum(p.numel() for p in (*conv.parameters(), *bn.parameters())),
                     "macs": conv.out_channels * conv.in_channels * 9 * s * s})
    return rows


def paper_tables(results, baseline_acc: float):
    """Table 1 (formulation x direction, per cutoff) and Table 2 (cutoffs, per formulation and
    direction) in the paper's terms: filters kept of all, pruning efficiency, accuracy and its drop."""
    import pandas as pd

    df = results[results.plan != "baseline"].copy()
    df["filters"] = df.filters_kept.astype(int).astype(str) + " / " + df.filters_total.astype(int).astype(str)
    df["pruning efficiency (%)"] = 100 * df.pruning_efficiency
    df["accuracy masked (%)"] = 100 * df.acc_masked
    df["drop (pp)"] = 100 * (baseline_acc - df.acc_masked)
    if df.acc_finetuned.notna().any():
        df["accuracy fine-tuned (%)"] = 100 * df.acc_finetuned.astype(float)
    cols = [c for c in ("filters", "pruning efficiency (%)", "accuracy masked (%)", "drop (pp)",
                        "accuracy fine-tuned (%)") if c in df]
    t1 = df.sort_values(["cutoff", "direction", "formulation"])[["cutoff", "direction", "formulation", *cols]]
    t2 = df.sort_values(["formulation", "direction", "cutoff"])[["formulation", "direction", "cutoff", *cols]]
    return pd.DataFrame(t1).reset_index(drop=True), pd.DataFrame(t2).reset_index(drop=True)


def headline(results, baseline_acc: float, max_drop_pp: float = 1.0) -> str:
    """The paper-style headline: the plan removing the most filters within ``max_drop_pp`` of the
    baseline's test accuracy (masked, no fine-tuning: the paper's protocol)."""
    df = results[results.plan != "baseline"]
    ok = df[100 * (baseline_acc - df.acc_masked) <= max_drop_pp]
    if ok.empty:
        best = df.loc[df.acc_masked.idxmax()]
        return (f"No plan stays within {max_drop_pp:g} pp of the baseline ({100 * baseline_acc:.2f}%) without "
                f"fine-tuning. The most accurate, {best.plan}, removes {int(best.filters_total - best.filters_kept)} "
                f"of {int(best.filters_total)} filters at {100 * best.acc_masked:.2f}% "
                f"({100 * (best.acc_masked - baseline_acc):+.2f} pp).")
    best = ok.loc[ok.pruning_efficiency.idxmax()]
    return (f"{best.plan}: {int(best.filters_total - best.filters_kept)} of {int(best.filters_total)} filters "
            f"removed ({100 * best.pruning_efficiency:.1f}%), test accuracy {100 * best.acc_masked:.2f}% vs "
            f"{100 * baseline_acc:.2f}% ({100 * (best.acc_masked - baseline_acc):+.2f} pp), masked, no fine-tuning.")
