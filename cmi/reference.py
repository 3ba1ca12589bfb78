"""The authors' cost structure, as a reference for benchmarks and tests: a greedy CMI ranking in numpy that
rebuilds the Gram matrices of the whole selected and conditioning set from the features for every
candidate and calls the general eigensolver ``numpy.linalg.eigvals`` (docs/method.md §9). Slow on purpose;
:func:`cmi.ranking.rank_channels` must return the same order."""
from __future__ import annotations

import numpy as np
import torch


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
    matrices rebuilt from the features for every candidate, general eigensolver, MI terms recomputed.

    CPU tensors: ``features`` (N, C, H, W), one variable per channel; ``labels`` (N,) integer, one-hot
    over 0..max; ``inputs`` (N, C0, H0, W0) images (their MI terms are computed for the cost only);
    ``condition``: (N, k, h, w) maps, one variable per channel, σ from each one's h·w. The paper's σ
    rule throughout. Returns the C-1 picked channel indices in order."""
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
        # the curves the authors' code recomputes after every pick (their cost; the values are not used here)
        _entropy_np(gy + gz + sel, alpha) + _entropy_np(rem + gz + sel, alpha)
        _entropy_np(gy + rem + gz + sel, alpha) + _entropy_np(gz + sel, alpha)
        mi(gx, sel), mi(gy, sel)
    return selected
