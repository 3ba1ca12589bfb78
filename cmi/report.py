"""Size, cost and speed of a (pruned) network.

MACs count the multiply-accumulates of conv and linear layers only, for one 3x32x32 image: the
convention of the pruning literature (Li et al. 2017, HRank, CHIP); BN, ReLU and pooling are left
out. PyTorch's ``FlopCounterMode`` counts exactly those (convolutions and matrix products, 2 FLOPs
per MAC). Latency is ``torch.utils.benchmark``'s median of repeated forward passes on the CPU,
with its interquartile range.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import count_params


def conv_linear_macs(model: nn.Module, input_shape=(1, 3, 32, 32)) -> int:
    """Multiply-accumulates of every Conv2d and Linear layer for one input of ``input_shape``
    (the model is run once in eval mode and left in the mode it was in)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2 // input_shape[0]


def cpu_latency(model: nn.Module, batch: int, min_run_time: float = 0.5) -> dict:
    """Seconds of one forward pass of ``batch`` images on the CPU: ``{"median", "iqr", "runs",
    "threads"}`` from ``torch.utils.benchmark.Timer.blocked_autorange`` (warm-up and blocking
    included; a channels_last copy in eval mode, the model passed in is left as it is)."""
    # torch.utils.benchmark imports cpp_extension, which logs "No CUDA runtime is found" on a machine
    # without CUDA; it concerns building C++ extensions, not timing.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads)
    with torch.inference_mode():
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return {"median": m.median, "iqr": m.iqr, "runs": len(m.times), "threads": threads}


def model_cost(model: nn.Module, min_run_time: float = 0.5) -> dict:
    """Params, conv+linear MACs and CPU latency (ms, median and IQR) at batch 1 and 256."""
    cost = {"params": count_params(model), "macs": conv_linear_macs(model)}
    for batch in (1, 256):
        lat = cpu_latency(model, batch, min_run_time)
        cost[f"latency_b{batch}_ms"] = 1e3 * lat["median"]
        cost[f"latency_b{batch}_iqr_ms"] = 1e3 * lat["iqr"]
    cost["latency_threads"] = lat["threads"]
    return cost


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
    direction) in the paper's terms: filters kept of all, pruning efficiency, accuracy and its drop.

    ``results``: a pandas DataFrame of the sweep's ``results.csv`` (:data:`cmi.sweep.RESULT_COLUMNS`),
    one row per plan plus the ``baseline`` row (dropped); the columns read are plan, formulation,
    cutoff, direction, filters_kept, filters_total, pruning_efficiency, acc_masked and acc_finetuned
    (accuracies and efficiency as fractions; acc_finetuned may be empty). ``baseline_acc``: a fraction.
    Returns the two tables as DataFrames, percentages and pp."""
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


def headline(results, baseline_acc: float, max_drop: float) -> str:
    """The paper-style headline: the plan removing the most filters within ``max_drop`` (a fraction,
    :attr:`cmi.config.Config.keep_drop`) of the baseline's test accuracy (masked, no fine-tuning: the
    paper's protocol). ``results``: the DataFrame :func:`paper_tables` reads; the columns read are plan,
    filters_kept, filters_total, pruning_efficiency and acc_masked; ``baseline_acc`` a fraction."""
    max_drop_pp = 100 * max_drop
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
