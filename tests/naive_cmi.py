"""A deliberately naive reference for the CMI ranking: numpy, loops, everything recomputed.

Written straight from docs/method.md §2-§3 with no shortcut: every joint entropy multiplies the
normalised Gram matrices of all its member variables from scratch, every CMI_t is evaluated by
the four-entropy formula, and every candidate of every step is its own eigendecomposition.
"""
import numpy as np
import torch


def gram(x, sigma):
    """x (N, d) -> normalised Gaussian Gram matrix (N, N), distances by explicit loops."""
    n = x.shape[0]
    k = np.empty((n, n))
    for a in range(n):
        for b in range(n):
            k[a, b] = np.exp(-np.sum((x[a] - x[b]) ** 2) / (2 * sigma ** 2))
    return k / np.trace(k)


def entropy(a, alpha):
    lam = np.clip(np.linalg.eigvalsh(a), 0, None)
    if alpha == 1:
        lam = lam[lam > 0]
        return float(-np.sum(lam * np.log(lam)))
    return float(np.log(np.sum(lam ** alpha)) / (1 - alpha))


def joint(grams, alpha):
    out = np.ones_like(grams[0])
    for g in grams:
        out = out * g
    return entropy(out / np.trace(out), alpha)


def cmi(x, y, z, alpha):
    """I(X; Y | Z) for lists of Gram matrices x, y, z (z may be empty)."""
    if not z:
        return joint(x, alpha) + joint(y, alpha) - joint(x + y, alpha)
    return joint(x + z, alpha) + joint(y + z, alpha) - joint(x + y + z, alpha) - joint(z, alpha)


def width(x, d, rule):
    """σ of one variable observed as x (N, d'): the paper's 5·N^(-1/(4+d)) from its dimension d, or
    "median": the lower median of its N(N-1)/2 pairwise distances (torch.median's convention for an
    even count), 1 when all samples coincide."""
    n = x.shape[0]
    if rule == "paper":
        return 5.0 * n ** (-1.0 / (4 + d))
    assert rule == "median", rule
    dists = sorted(np.sqrt(np.sum((x[a] - x[b]) ** 2)) for a in range(n) for b in range(a + 1, n))
    s = dists[(len(dists) - 1) // 2]
    return s if s > 0 else 1.0


def _grams(features, labels, inputs, condition, num_classes, sigma="paper"):
    f = features.double().numpy()
    n, c = f.shape[:2]

    def var(x, d):
        x = x.reshape(n, -1)
        return gram(x, width(x, d, sigma))

    k = int(labels.max()) + 1 if num_classes is None else num_classes
    gy = [var(np.eye(k)[labels.numpy()], k)]
    d = f.shape[2] * f.shape[3]
    chans = [var(f[:, j], d) for j in range(c)]
    gz = []
    for z in condition:
        z = z.double().numpy()
        gz += [var(z[:, j], z.shape[2] * z.shape[3]) for j in range(z.shape[1])]
    gx = None
    if inputs is not None:
        x = inputs.double().numpy()
        gx = [var(x, x.shape[2] * x.shape[3])]
    return n, c, gy, chans, gz, gx


def naive_rank(features, labels, inputs=None, condition=(), alpha=1.01, num_classes=None,
               permutation=None, seed=0, permute_condition=True, sigma="paper"):
    """Same contract as cmi.ranking.rank_channels (sigma "paper" or "median", saturation_tol=0), as a dict.
    ``permute_condition=False``: the shuffled CMIs leave Z out (the authors' permutation test)."""
    n, c, gy, chans, gz, gx = _grams(features, labels, inputs, condition, num_classes, sigma)
    gen = torch.Generator().manual_seed(seed)
    selected, remaining = [], list(range(c))
    out = {"order": [], "cmi": [], "objective": [], "mi_labels": [], "mi_input": [], "p_values": []}
    for _ in range(c - 1):
        scores = [cmi(gy, gz + [chans[s] for s in selected] + [chans[j]], [], alpha) for j in remaining]
        best = int(np.argmax(scores))
        j = remaining.pop(best)
        selected.append(j)
        out["order"].append(j)
        out["objective"].append(scores[best])
        sel = [chans[s] for s in selected]
        rem = [chans[r] for r in remaining]
        observed = cmi(gy, rem, gz + sel, alpha)
        out["cmi"].append(observed)
        out["mi_labels"].append(cmi(sel, gy, [], alpha))
        if gx is not None:
            out["mi_input"].append(cmi(gx, sel, [], alpha))
        if permutation is not None:
            count = 0
            for _p in range(permutation[0]):
                perm = torch.randperm(n, generator=gen).numpy()
                shuffled = sel[:-1] + [chans[j][np.ix_(perm, perm)]]
                count += cmi(gy, rem, (gz if permute_condition else []) + shuffled, alpha) <= observed
            p = count / permutation[0]
            out["p_values"].append(p)
            if p >= permutation[1]:
                break
    return out


def naive_curves(features, labels, order, inputs=None, condition=(), alpha=1.01, num_classes=None):
    """The curves of rank_channels along a *given* order, each value from the four-entropy formula."""
    n, c, gy, chans, gz, gx = _grams(features, labels, inputs, condition, num_classes)
    out = {"cmi": [], "objective": [], "mi_labels": [], "mi_input": []}
    for t in range(1, len(order) + 1):
        sel = [chans[j] for j in order[:t]]
        rem = [chans[j] for j in range(c) if j not in order[:t]]
        out["cmi"].append(cmi(gy, rem, gz + sel, alpha))
        out["objective"].append(cmi(gy, gz + sel, [], alpha))
        out["mi_labels"].append(cmi(sel, gy, [], alpha))
        if gx is not None:
            out["mi_input"].append(cmi(gx, sel, [], alpha))
    return out


def naive_single_mi(features, labels, alpha=1.01, num_classes=None):
    """I(Y; channel) of every channel alone."""
    _n, _c, gy, chans, _gz, _gx = _grams(features, labels, None, (), num_classes)
    return [cmi([g], gy, [], alpha) for g in chans]
