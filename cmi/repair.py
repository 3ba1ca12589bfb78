"""Repairs of a pruned network that need no gradient step.

Removing a channel takes its output away from the layer that reads it (the next conv layer, or the
head's first linear layer after conv5_3). Three closed-form repairs put back what the reader lost; the
first two fit it on calibration images drawn from the training split (never test images), the third
needs no images:

- :func:`compensate`: each removed channel's mean post-ReLU output over the calibration images, times
  the reader's weights, is folded into the reader's bias. Exact where the removed channel is constant
  (the constant channels of :mod:`cmi.census`): into the head's linear layer everywhere, into a conv
  layer at every position whose 3x3 window lies inside the map; at the border, zero padding makes the
  contribution position-dependent and the bias gets its mean over positions.
- :func:`reconstruct`: the reader's weights on the kept input channels are re-fit by ridge least squares
  (closed form, Cholesky) to reproduce the reader's pre-BN output in the unpruned network, layer by
  layer in network order on the already repaired network (He et al. 2017; ThiNet, Luo et al. 2017).
  Exact where the removed channels are linear combinations of kept ones.
- :func:`merge`: Neuron Merging (Kim et al., NeurIPS 2020), BN-aware: each removed filter is matched to the
  kept filter of the same layer whose weights are most similar (cosine), and its outgoing weights are
  added to that filter's, scaled by the ratio of their BN-scaled projections, where that ratio is
  positive (ReLU passes a positive multiple of the kept channel). It needs no images.

None re-estimates BatchNorm statistics afterwards: each restores (exactly where its case above holds,
else approximately) the reader's pre-BN output the stored statistics were estimated on, and
re-estimating a BN's mean after a bias fold undoes the fold (BN(x + b) with its mean re-estimated is
BN(x)), so "fold, then recalibrate" is the ``recalibrated`` mode everywhere but the head. All three
work on a copy (the caller's model is left as it is, in its mode and on its device) and return a
physically smaller network on the CPU in eval mode (:func:`cmi.surgery.remove_channels`).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .models import VGG16, Kept
from .surgery import kept_per_layer, remove_channels

#: Ridge penalty of the re-fit, relative to the mean diagonal of the inputs' Gram matrix.
RIDGE = 1e-6
#: Positions per calibration image in the re-fit's least squares (a seeded draw; all when fewer).
POSITIONS = 64


def _readers(model: VGG16) -> list[nn.Module]:
    """For each conv layer, the layer that reads its output: the next conv, or the head's first linear."""
    convs = model.convs()
    return convs[1:] + [next(m for m in model.classifier if isinstance(m, nn.Linear))]


@torch.no_grad()
def _reader_inputs(model: VGG16, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """What each reader of :func:`_readers` sees on normalised images ``x``, layer by layer: the post-ReLU
    maps of the conv layer before it, max-pooled where a pool sits between (N, C, H, W), or as the head
    sees them, (N, C). Lazy: layer l + 1 is computed only when asked for, so a reader re-fit in between
    is the one used."""
    seen, convs = x, [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    for l, start in enumerate(convs):
        stop = convs[l + 1] if l + 1 < len(convs) else len(model.features)
        seen = model.features[start:stop](seen)           # conv, BN, ReLU, then any pool before the next conv
        yield seen if l + 1 < len(convs) else torch.flatten(model.pool(seen), 1)


def _layer_inputs(model: VGG16, x: torch.Tensor) -> list[torch.Tensor]:
    """Every reader's input of :func:`_reader_inputs` at once."""
    return list(_reader_inputs(model, x))


def _pruned(kept: Kept, widths: list[int]) -> dict[int, list[int]]:
    return {l: sorted(set(range(widths[l])) - set(k)) for l, k in kept.items() if len(k) < widths[l]}


@torch.no_grad()
def compensate(model: VGG16, kept: Kept, images: torch.Tensor) -> VGG16:
    """``model`` with the channels outside ``kept`` removed and their mean output on ``images`` (normalised,
    (B, 3, 32, 32), training images) folded into the bias of the layer that reads them. The caller's
    model is left as it is."""
    kept, widths = kept_per_layer(model, kept)
    out = copy.deepcopy(model).cpu().eval()
    inputs = _layer_inputs(out, images.float())
    readers = _readers(out)
    for l, gone in _pruned(kept, widths).items():
        seen, reader = inputs[l], readers[l]
        mean = seen[:, gone].double().mean(0)                       # (|gone|, H, W) or (|gone|,)
        if isinstance(reader, nn.Conv2d):
            level = mean.mean((1, 2))[None, :, None, None].expand(1, len(gone), *seen.shape[2:])
            delta = F.conv2d(level, reader.weight[:, gone].double(), padding=reader.padding).mean((0, 2, 3))
        else:
            delta = reader.weight[:, gone].double() @ mean
        reader.bias += delta.to(reader.bias.dtype)
    return remove_channels(out, kept)


def _columns(seen: torch.Tensor, reader: nn.Module, rows: torch.Generator) -> torch.Tensor:
    """The reader's input as least-squares rows: the 3x3 patches (im2col order: channel, then tap) at a
    seeded draw of POSITIONS positions per image (every position of a smaller map), gathered only there
    (conv); or the pooled vector (linear)."""
    if isinstance(reader, nn.Linear):
        return seen.double()
    n, c, h, w = seen.shape
    if h * w <= POSITIONS:                                                     # every position, in order
        pick = torch.arange(h * w).expand(n, -1)
    else:
        pick = torch.stack([torch.randperm(h * w, generator=rows)[:POSITIONS] for _ in range(n)])   # (n, P)
    pad = reader.padding[0]
    taps = torch.arange(3)
    ys = (pick // w)[:, :, None] + taps.repeat_interleave(3)                  # (n, P, 9), row of each tap
    xs = (pick % w)[:, :, None] + taps.repeat(3)
    padded = F.pad(seen, (pad, pad, pad, pad))
    patches = padded[torch.arange(n)[:, None, None], :, ys, xs]              # (n, P, 9, C)
    return patches.permute(0, 1, 3, 2).reshape(n * pick.shape[1], c * 9).double()


def _refit(reader: nn.Module, original: nn.Module, have: torch.Tensor, want: torch.Tensor, keep: list[int],
           seed: int, chunk: int = 64) -> None:
    """Re-fit ``reader`` in place on its kept input channels ``keep``: ridge least squares from what it sees
    now (``have``, kept channels only) to what ``original`` computed before its bias from ``want``; the
    same seeded positions of each image on both sides. Gram matrices are accumulated over image chunks."""
    k = 9 if isinstance(reader, nn.Conv2d) else 1
    w_old = original.weight.double().reshape(len(original.weight), -1)      # (out, C*k)
    gram, cross = 0.0, 0.0
    for i in range(0, len(have), chunk):
        g_have, g_want = (torch.Generator().manual_seed(seed + i) for _ in range(2))
        a = _columns(have[i:i + chunk], reader, g_have)
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
        gram = gram + a.T @ a
        cross = cross + a.T @ (_columns(want[i:i + chunk], original, g_want) @ w_old.T)
    lam = RIDGE * gram.diagonal().mean().clamp_min(1e-12)
    chol = torch.linalg.cholesky(gram + lam * torch.eye(len(gram), dtype=gram.dtype))
    fit = torch.cholesky_solve(cross, chol)                                  # (|keep|*k + 1, out)
    new = torch.zeros_like(w_old)
    new[:, torch.tensor([c * k + j for c in keep for j in range(k)])] = fit[:-1].T
    reader.weight.copy_(new.reshape(reader.weight.shape).to(reader.weight.dtype))
    reader.bias.copy_((original.bias.double() + fit[-1]).to(reader.bias.dtype))


@torch.no_grad()
def reconstruct(model: VGG16, kept: Kept, images: torch.Tensor, seed: int = 0) -> VGG16:
    """``model`` with the channels outside ``kept`` removed and, for each layer that lost input channels, its
    weights on the kept ones re-fit by ridge least squares to reproduce its pre-BN output in ``model`` on
    ``images`` (normalised training images). Layers are re-fit in network order on the network repaired
    so far. The caller's model is left as it is."""
    kept, widths = kept_per_layer(model, kept)
    model = copy.deepcopy(model).cpu().eval()     # the unpruned reference: a copy, so the caller's stays as it is
    out = copy.deepcopy(model)
    x = images.float()
    targets, pruned = _layer_inputs(model, x), _pruned(kept, widths)
    readers, originals = _readers(out), _readers(model)
    for l, seen in enumerate(_reader_inputs(out, x)):      # one pass: each layer after its re-fit
        if l in pruned:
            _refit(readers[l], originals[l], seen[:, kept[l]], targets[l], kept[l], seed + 1000 * l)
    return remove_channels(out, kept)


@torch.no_grad()
def merge(model: VGG16, kept: Kept) -> VGG16:
    """``model`` with the channels outside ``kept`` removed, each merged into its most similar kept filter:
    with W_j ≈ t W_k (t = <W_j, W_k> / |W_k|², k the kept filter of largest cosine similarity to j) and BN
    scales a = gamma / sqrt(var + eps), ReLU(z_j) ≈ s ReLU(z_k) for s = t a_j / a_k > 0 (bias terms
    ignored), so the reader's weights on k gain s times its weights on j. A removed filter without a
    kept filter of positive s is dropped as in plain removal. The caller's model is left as it is."""
    kept, widths = kept_per_layer(model, kept)
    out = copy.deepcopy(model).cpu().eval()
    convs, norms, readers = out.convs(), out.norms(), _readers(out)
    for l, gone in _pruned(kept, widths).items():
        w = convs[l].weight.double().flatten(1)                               # (C, k)
        bn = norms[l]
        a = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps))
        keep = torch.tensor(kept[l])
        wk = w[keep]
        cos = F.normalize(w[gone], dim=1) @ F.normalize(wk, dim=1).T          # (|gone|, |keep|)
        t = (w[gone] @ wk.T) / (wk * wk).sum(1).clamp_min(1e-30)
        s = t * a[gone][:, None] / a[keep][None, :]
        cos = torch.where(s > 0, cos, torch.full_like(cos, -2.0))
        best = cos.argmax(1)
        rw = readers[l].weight
        for i, j in enumerate(gone):
            if cos[i, best[i]] > -2:
                k = int(keep[best[i]])
                rw[:, k] += (s[i, best[i]] * rw[:, j].double()).to(rw.dtype)
    return remove_channels(out, kept)
