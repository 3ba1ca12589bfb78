"""Applying kept channels to a network: mask (the paper's way), remove (Torch-Pruning), recalibrate BN,
save and load the smaller network.

``kept`` is a :class:`cmi.plans.Plan` made for this network, or ``{layer: kept channel indices}``
(layers not named stay whole): a layer is its index or its name (``"conv3_1"``), the indices a list,
tuple, 1-D integer tensor or array.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .activations import check_vgg, model_fingerprint
from .cutoffs import check_keep
from .models import LAYER_NAMES, VGG16, build_model
from .plans import Plan
from .store import load_torch, save_torch
from .train import model_spec


def check_plan_for_model(plan: Plan, model: VGG16) -> None:
    widths = [c.out_channels for c in check_vgg(model).convs()]
    if widths != plan.widths:
        raise ValueError(f"the plan {plan.name} is for layer widths {plan.widths}, but the model has {widths} "
                         f"(a plan for another width or an already pruned model?)")
    fingerprint = model_fingerprint(model)
    if plan.model != fingerprint:
        warnings.warn(f"the plan {plan.name} was made for network {plan.model}, not this one ({fingerprint}): "
                      f"its rankings and cuts describe the other network's filters", stacklevel=3)


def _layer_index(layer) -> int:
    if isinstance(layer, str):
        if layer in LAYER_NAMES:
            return LAYER_NAMES.index(layer)
        if layer.strip().isdigit():
            return int(layer)
        raise ValueError(f"unknown layer {layer!r}: use an index 0..{len(LAYER_NAMES) - 1} or a name in {LAYER_NAMES}")
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        return int(layer)
    raise ValueError(f"a layer must be an int index or a name like 'conv3_1', got {type(layer).__name__} {layer!r}")


def _indices(name: str, idx) -> list[int]:
    if isinstance(idx, (torch.Tensor, np.ndarray)):
        dtype_ok = not (idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool) \
            if isinstance(idx, torch.Tensor) else np.issubdtype(idx.dtype, np.integer)
        if idx.ndim != 1 or not dtype_ok:
            raise ValueError(f"{name}: kept channels must be a 1-D integer tensor or array, got shape "
                             f"{tuple(idx.shape)} of {idx.dtype}")
        return [int(i) for i in idx.tolist()]
    if isinstance(idx, (list, tuple, range)) and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in idx):
        return [int(i) for i in idx]
    raise ValueError(f"{name}: kept channels must be a list of int indices, got {type(idx).__name__} {idx!r}"[:200])


def kept_per_layer(model: VGG16, kept: "Plan | dict[int, list[int]]") -> tuple[dict[int, list[int]], list[int]]:
    """The kept channels per layer (checked against the model) and the model's layer widths."""
    if isinstance(kept, Plan):
        check_plan_for_model(kept, model)
        kept = kept.kept_channels()
    widths = [c.out_channels for c in check_vgg(model).convs()]
    if not isinstance(kept, dict):
        raise ValueError(f"kept must be a Plan or a dict {{layer: kept channel indices}}, got {type(kept).__name__}")
    normal: dict[int, list[int]] = {}
    for key, given in kept.items():
        layer = _layer_index(key)
        if layer in normal:
            raise ValueError(f"layer {key!r} is given twice (by name and by index)")
        name = LAYER_NAMES[layer] if 0 <= layer < len(LAYER_NAMES) else f"layer {layer}"
        idx = normal[layer] = _indices(name, given)
        if not 0 <= layer < len(widths):
            raise ValueError(f"plan names {name}, but the model has {len(widths)} conv layers")
        check_keep(len(idx), widths[layer], name)
        if len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= widths[layer]:
            raise ValueError(f"{name}: kept channels must be distinct indices in 0..{widths[layer] - 1}")
    return normal, widths


def mask_model(model: VGG16, kept: "Plan | dict[int, list[int]]") -> VGG16:
    """A copy with every pruned filter's conv weights and bias set to zero (BN left as is)."""
    kept, widths = kept_per_layer(model, kept)
    out = copy.deepcopy(model)
    convs = out.convs()
    with torch.no_grad():
        for layer, idx in kept.items():
            mask = torch.ones(widths[layer], dtype=torch.bool)
            mask[list(idx)] = False
            convs[layer].weight[mask] = 0
            if convs[layer].bias is not None:
                convs[layer].bias[mask] = 0
    return out


def remove_channels(model: VGG16, kept: "Plan | dict[int, list[int]]") -> VGG16:
    """A physically smaller copy: pruned filters removed with their BN channels and the next layer's
    input channels, through Torch-Pruning's DependencyGraph. The caller's model is left as it is."""
    import torch_pruning as tp

    kept, widths = kept_per_layer(model, kept)
    out = copy.deepcopy(model).cpu().eval()
    convs = out.convs()
    with torch.enable_grad():            # Torch-Pruning traces the graph through autograd
        graph = tp.DependencyGraph().build_dependency(out, example_inputs=torch.zeros(1, 3, 32, 32))
    for layer, idx in sorted(kept.items()):
        pruned = sorted(set(range(widths[layer])) - set(idx))
        if pruned:
            graph.get_pruning_group(convs[layer], tp.prune_conv_out_channels, idxs=pruned).prune()
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, normalize, *, batch_size: int = 500,
                   device="cpu") -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``images`` (uint8, (B, C, 32, 32),
    standardised by ``normalize``), in place, with no gradient step: the cheapest repair of a pruned
    network without retraining. Running statistics become the exact average over ``images``
    (momentum None); everything else (weights, dropout) stays in eval mode. Returns ``model``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    model.to(device).eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for i in range(0, len(images), batch_size):
            model(normalize(images[i:i + batch_size].to(device)).contiguous(memory_format=torch.channels_last))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return model


@dataclass
class Pruned:
    """A physically pruned network and which channels of the network it came from it kept."""

    model: VGG16
    kept: dict[int, list[int]]   #: {layer: kept channel indices of the unpruned network}


def save_pruned(model: VGG16, kept: "Plan | dict[int, list[int]]", path: Path) -> None:
    """A network made by :func:`remove_channels` with ``kept``: state dict, the unpruned network's
    spec and the kept channels per layer, no pickled classes."""
    spec = model_spec(model)
    kept = kept.kept_channels() if isinstance(kept, Plan) else kept
    save_torch({"spec": spec, "kept": {str(int(k)): sorted(int(i) for i in v) for k, v in kept.items()},
                "state_dict": model.state_dict()}, path)


def load_pruned(path: Path) -> Pruned:
    """What :func:`save_pruned` wrote: the smaller network (eval mode) and its kept channels."""
    blob = load_torch(path, what="pruned model file")
    if not (isinstance(blob, dict) and {"spec", "kept", "state_dict"} <= blob.keys()):
        raise ValueError(f"{str(path)!r} is not a pruned model file (save_pruned writes spec, kept and state_dict; "
                         f"it holds {sorted(blob) if isinstance(blob, dict) else type(blob).__name__}); "
                         f"a baseline model.pt loads with cmi.train.load_model")
    kept = {int(k): v for k, v in blob["kept"].items()}
    model = remove_channels(build_model(**blob["spec"]), kept)
    model.load_state_dict(blob["state_dict"])
    return Pruned(model.eval(), kept)
