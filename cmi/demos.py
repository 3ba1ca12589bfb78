"""Small experiments on the estimator with known answers (notebook 02)."""
from __future__ import annotations

import math

import torch

from .entropy import gaussian_gram, kernel_width, mutual_information, normalize, renyi_entropy


def correlated_gaussians(n: int, rho: float, d: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples of (X, Y), each d-dimensional standard normal, corr(X_i, Y_i) = rho."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, rho * x + math.sqrt(max(0.0, 1 - rho * rho)) * e


def mi_vs_correlation(rhos, n: int = 256, alpha: float = 1.01, sigma: str | float = "paper", d: int = 1,
                      seed: int = 0) -> list[dict]:
    """Matrix-based I(X; Y) for Gaussian pairs of set correlation, next to Shannon's -d/2 log(1-rho^2)."""
    rows = []
    for rho in rhos:
        x, y = correlated_gaussians(n, rho, d, seed)
        sx, sy = (kernel_width(sigma, n, d, v) for v in (x, y))
        mi = mutual_information(gaussian_gram(x, sx), gaussian_gram(y, sy), alpha).item()
        shannon = -0.5 * d * math.log(1 - rho * rho) if abs(rho) < 1 else float("inf")
        rows.append({"rho": rho, "matrix_mi": mi, "shannon_mi": shannon})
    return rows


def known_cases(n: int = 128, alpha: float = 1.01, seed: int = 0) -> dict[str, float]:
    """Entropies and MI with closed-form or limiting values, rounded for display.

    The last three lines show the estimator's saturation: for independent X and Z, I(X; Z) is near
    0 with the paper's kernel width but approaches log N as σ shrinks and every sample becomes
    unique to the kernel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    z = torch.randn(n, 1, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % 4
    k_lab = (labels[:, None] == labels[None, :]).double()
    paper = kernel_width("paper", n, 1)
    mi = lambda s: mutual_information(gaussian_gram(x, s), gaussian_gram(z, s), alpha).item()  # noqa: E731
    return {
        "log N": round(math.log(n), 6),
        "S(identity/N) = log N": round(renyi_entropy(torch.eye(n, dtype=torch.float64) / n, alpha).item(), 6),
        "S(all samples equal) = 0": round(abs(renyi_entropy(torch.ones(n, n, dtype=torch.float64) / n, alpha).item()), 6),
        "S(4 balanced classes) = log 4": round(renyi_entropy(normalize(k_lab), alpha).item(), 6),
        "log 4": round(math.log(4), 6),
        "I(labels; labels) = S(labels)": round(mutual_information(k_lab, k_lab, alpha).item(), 6),
        "I(X; Z) independent, paper sigma": round(mi(paper), 3),
        "I(X; Z) independent, sigma 0.3": round(mi(0.3), 3),
        "I(X; Z) independent, sigma 0.05": round(mi(0.05), 3),
    }


def sigma_sensitivity(factors, n: int = 256, rho: float = 0.8, alpha: float = 1.01, d: int = 1,
                      seed: int = 0) -> list[dict]:
    """I(X; Y) and S(X) for σ = factor x the paper's rule, for a correlated and an independent pair."""
    base = kernel_width("paper", n, d)
    rows = []
    for f in factors:
        for name, r in (("correlated", rho), ("independent", 0.0)):
            x, y = correlated_gaussians(n, r, d, seed)
            kx, ky = gaussian_gram(x, f * base), gaussian_gram(y, f * base)
            rows.append({"factor": f, "sigma": f * base, "pair": name, "mi": mutual_information(kx, ky, alpha).item(),
                         "entropy_x": renyi_entropy(normalize(kx), alpha).item()})
    return rows


def rank_agreement(order_a: list[int], order_b: list[int], channels: int) -> float:
    """Spearman rank correlation between two channel rankings (positions; unranked channels last)."""
    def positions(order):
        full = list(order) + [c for c in range(channels) if c not in order]
        pos = torch.empty(channels, dtype=torch.float64)
        pos[torch.tensor(full)] = torch.arange(channels, dtype=torch.float64)
        return pos
    a, b = positions(order_a), positions(order_b)
    a, b = a - a.mean(), b - b.mean()
    return (a @ b / (a.norm() * b.norm())).item()
