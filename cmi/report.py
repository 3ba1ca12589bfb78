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
