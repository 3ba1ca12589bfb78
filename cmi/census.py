"""Channel census of a trained network: which channels carry nothing.

Weight decay on BN's gamma, with BN + ReLU, can leave channels whose output is a constant: with
gamma ≈ 0, BN emits beta whatever the conv computes (Mehta et al. 2019, "implicit filter
sparsification"; Network Slimming puts an L1 penalty on gamma to get exactly this). Removing such a
channel changes nothing but a constant input to the next layer, so any criterion that notices it
finds it. The census counts them per layer, from the activations the CMI is estimated from:

- |gamma| of each layer's BN: its quantiles, and the fraction below ``SMALL_GAMMA`` of the layer's
  largest (:func:`cmi.train.small_gamma_fractions`; recorded every epoch while training too);
- **constant** channels: post-ReLU output whose standard deviation over the captured images and all
  positions is at most ``CONSTANT_TOL`` times the layer's largest, split into **dead** (always 0) and
  **constant-positive** (a constant > 0, which the next layer adds to every image).
"""
from __future__ import annotations

import statistics

import torch

from .activations import Activations
from .models import LAYER_NAMES, VGG16, Kept
from .train import SMALL_GAMMA, small_gamma_fractions

#: A channel is constant when its output's sd is at most this fraction of its layer's largest sd.
CONSTANT_TOL = 1e-3


def constant_channels(maps: torch.Tensor, tol: float = CONSTANT_TOL) -> tuple[list[int], list[int]]:
    """(dead, constant-positive) channel indices of one layer's post-ReLU ``maps`` (N, C, H, W): sd over
    images and positions ≤ ``tol`` × the layer's largest sd; dead when the output is 0 everywhere."""
    flat = maps.detach().double().transpose(0, 1).reshape(maps.shape[1], -1)
    sd = flat.std(1, correction=0)
    constant = sd <= tol * sd.max()
    dead = constant & (flat.abs().amax(1) == 0)
    return torch.nonzero(dead).flatten().tolist(), torch.nonzero(constant & ~dead).flatten().tolist()


def constant_kept(acts: Activations, tol: float = CONSTANT_TOL) -> Kept:
    """{layer: every channel that is not constant} for the layers that have a constant channel (a
    layer made only of constant channels keeps its first one, so the network stays connected)."""
    kept = {}
    for l, maps in enumerate(acts.features):
        dead, positive = constant_channels(maps, tol)
        drop = set(dead) | set(positive)
        if drop:
            kept[l] = [j for j in range(maps.shape[1]) if j not in drop] or [0]
    return kept


def census(model: VGG16, acts: Activations, tol: float = CONSTANT_TOL) -> list[dict]:
    """One row per conv layer: channels, |gamma| quantiles, fraction of small gamma, dead and
    constant-positive channel counts (``acts`` must be of ``model``)."""
    acts.check_model(model)
    small = small_gamma_fractions(model)
    rows = []
    for l, (bn, maps) in enumerate(zip(model.norms(), acts.features)):
        g = bn.weight.detach().abs().double()
        q = torch.quantile(g, torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.double)).tolist()
        dead, positive = constant_channels(maps, tol)
        c = len(g)
        rows.append({"layer": LAYER_NAMES[l], "channels": c, "gamma_min": q[0], "gamma_p10": q[1],
                     "gamma_median": q[2], "gamma_max": q[3], "small_gamma": round(small[l] * c),
                     "dead": len(dead), "constant_positive": len(positive), "constant": len(dead) + len(positive)})
    return rows


def census_summary(rows: list[dict], accuracies: dict[str, float] | None = None) -> dict:
    """Totals over the layers, and the accuracy of the network with exactly the constant channels
    removed in each evaluation mode (``accuracies``: {"acc_<mode>": fraction}), when given."""
    total = sum(r["channels"] for r in rows)
    out = {"channels": total, **{k: sum(r[k] for r in rows) for k in ("small_gamma", "dead", "constant_positive",
                                                                       "constant")}}
    out["constant_pct"] = 100 * out["constant"] / total
    out["layers_with_constant"] = sum(r["constant"] > 0 for r in rows)
    out["gamma_median_of_medians"] = statistics.median(r["gamma_median"] for r in rows)
    out.update(accuracies or {})
    return out


TITLES = {"channels": "channels", "gamma_min": "|γ| min", "gamma_p10": "|γ| 10th pct", "gamma_median": "|γ| median",
          "gamma_max": "|γ| max", "small_gamma": f"|γ| < {SMALL_GAMMA:g}·max", "dead": "dead (always 0)",
          "constant_positive": "constant > 0", "constant": "constant (all)"}


def census_report(run, out=None) -> dict:
    """The census of ``run``'s baseline (a :class:`cmi.run.Run`): per-layer rows, the totals, and the test
    accuracy with exactly the constant channels removed (masked, removed, recalibrated; the sweep's
    budget: every test image). Written through ``out`` (an :class:`cmi.outputs.Outputs`) when given."""
    from .evaluation import evaluate, sweep_budget
    from .tables import titled

    rows = census(run.model, run.acts)
    budget = sweep_budget(run.cfg)
    acc = evaluate(run, constant_kept(run.acts), ("masked", "removed", "recalibrated"), budget)
    summary = census_summary(rows, {k: v for k, v in acc.items() if k.startswith("acc_")})
    summary["baseline"] = run.baseline.metrics["test_accuracy"]
    if out is not None:
        n = run.acts.n
        out.table(titled(rows, TITLES), "01_census",
                  f"Channel census of the baseline: |γ| of each layer's BatchNorm, and channels whose post-ReLU "
                  f"output is constant on the {n} captured training images (sd ≤ {CONSTANT_TOL:g} × the layer's "
                  "largest), dead (always 0) or a constant > 0")
        out.table([{"baseline": summary["baseline"], **{k: summary[k] for k in (
            "channels", "small_gamma", "dead", "constant_positive", "constant", "constant_pct", "layers_with_constant")},
            **{k: v for k, v in summary.items() if k.startswith("acc_")}}], "01_census_summary",
            "Census totals, and the test accuracy of the baseline with exactly its constant channels removed: "
            + "; ".join(budget.describe(m, len(run.ds.test_y)) for m in ("masked", "removed", "recalibrated")))
    return {"rows": rows, "summary": summary}
