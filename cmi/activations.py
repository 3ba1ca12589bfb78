"""Post-ReLU activations of the 13 conv layers on N training images, captured once per baseline.

The N images are a seeded draw from the training split (never the held-out or test images),
passed once through the trained model in eval mode with a forward hook on every layer's ReLU.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import Dataset, seeded_indices
from .models import LAYER_NAMES, VGG16
from .store import load_torch, save_torch


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash (12 hex digits) of a model's parameters and buffers: which trained network this is."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def check_vgg(model) -> VGG16:
    """The pipeline works on :class:`cmi.models.VGG16`; anything else is one clear error."""
    convs = model.convs() if isinstance(model, VGG16) else [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d)] if isinstance(model, torch.nn.Module) else []
    if not isinstance(model, VGG16) or len(convs) != len(LAYER_NAMES):
        raise ValueError(f"expected a cmi.models.VGG16 with {len(LAYER_NAMES)} conv layers, got "
                         f"{type(model).__name__} with {len(convs)} conv layers")
    return model


@dataclass
class Activations:
    """``features[l]``: (N, C_l, H_l, W_l) float32 post-ReLU maps of layer l; ``labels`` (N,);
    ``inputs`` (N, 3, 32, 32) the normalised images the network saw; ``indices`` into the
    training split; ``widths`` channels per layer; ``model`` the fingerprint of the network."""

    features: list[torch.Tensor]
    labels: torch.Tensor
    inputs: torch.Tensor
    indices: torch.Tensor
    widths: list[int]
    model: str

    @property
    def n(self) -> int:
        return len(self.labels)

    def check_model(self, model: VGG16) -> None:
        widths = [c.out_channels for c in check_vgg(model).convs()]
        if widths != self.widths:
            raise ValueError(f"activations are of a model with layer widths {self.widths}, "
                             f"but this model has {widths}")
        if model_fingerprint(model) != self.model:
            raise ValueError(f"activations were captured from model {self.model}, not from this one "
                             f"({model_fingerprint(model)}); capture them again for this model")

    def to_dict(self) -> dict:
        return {"features": self.features, "labels": self.labels, "inputs": self.inputs,
                "indices": self.indices, "widths": self.widths, "model": self.model}

    def save(self, path: Path) -> None:
        save_torch(self.to_dict(), path)

    @classmethod
    def load(cls, path: Path) -> "Activations":
        return cls(**load_torch(path, what="activations file"))


@torch.no_grad()
def capture(model: VGG16, ds: Dataset, n: int = 256, seed: int = 0, device="cpu") -> Activations:
    """Activations of every conv layer for ``n`` training images drawn with ``seed``, one pass on
    ``device``; the model is returned to its own device and mode afterwards."""
    check_vgg(model)
    if not 2 <= n <= len(ds.train_y):
        raise ValueError(f"cannot draw n={n} images from {len(ds.train_y)} training images")
    idx = seeded_indices(len(ds.train_y), n, seed)
    x = ds.normalize(ds.train_x[idx])
    store: list[torch.Tensor] = []
    hooks = [r.register_forward_hook(lambda m, i, o: store.append(o.detach().float().cpu().clone()))
             for r in model.relus()]
    was_training, where = model.training, next(model.parameters()).device
    model.eval()
    try:
        model.to(device)(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.to(where).train(was_training)          # the caller's model stays where it was
    return Activations(features=store, labels=ds.train_y[idx].clone(), inputs=x.float().cpu(), indices=idx,
                       widths=[c.out_channels for c in model.convs()], model=model_fingerprint(model))
