import math

import numpy as np
import pytest
import scipy.linalg
import torch

from cmi.entropy import (conditional_mutual_information, entropy_from_eigenvalues, gaussian_gram, hadamard,
                         joint_entropy, kernel_width, mutual_information, normalize, renyi_entropy, sq_dists)

ALPHAS = [0.5, 1.0, 1.01, 2.0, 3.0]


def random_gram(n=24, d=5, seed=0, sigma=1.5):
    g = torch.Generator().manual_seed(seed)
    return gaussian_gram(torch.randn(n, d, generator=g, dtype=torch.float64), sigma)


def test_sq_dists_matches_direct_differences():
    x = torch.randn(3, 10, 4, dtype=torch.float64)
    direct = ((x[:, :, None, :] - x[:, None, :, :]) ** 2).sum(-1)
    d = sq_dists(x)
    assert torch.allclose(d, direct, atol=1e-12) and torch.equal(d, d.mT)
    assert (d.diagonal(dim1=-2, dim2=-1) == 0).all() and (d >= 0).all()


def test_kernel_width_rules():
    assert kernel_width("paper", 256, 16) == pytest.approx(5 * 256 ** (-1 / 20))
    assert kernel_width(0.7, 10, 3) == 0.7
    x = torch.tensor([[0.0], [1.0], [3.0]])
    assert kernel_width("median", 3, 1, x) == pytest.approx(2.0)  # distances 1, 2, 3
    s = x.double().std(0).mean().item()
    assert kernel_width("silverman", 3, 1, x) == pytest.approx(s * (4 / 3) ** (1 / 5) * 3 ** (-1 / 5))
    assert kernel_width("median", 3, 1, torch.zeros(3, 1)) == 1.0
    with pytest.raises(ValueError, match="sigma must be"):
        kernel_width("magic", 3, 1)
    with pytest.raises(ValueError, match="needs the data"):
        kernel_width("median", 3, 1)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_closed_forms(alpha):
    n = 16
    eye = torch.eye(n, dtype=torch.float64) / n        # N distinct, independent-looking samples
    ones = torch.ones(n, n, dtype=torch.float64) / n   # all samples identical
    assert renyi_entropy(eye, alpha).item() == pytest.approx(math.log(n), abs=1e-12)
    assert renyi_entropy(ones, alpha).item() == pytest.approx(0.0, abs=1e-10)
    # two equal blocks: a fair coin, log 2 for every alpha
    block = torch.block_diag(torch.ones(8, 8), torch.ones(8, 8)).double() / n
    assert renyi_entropy(block, alpha).item() == pytest.approx(math.log(2), abs=1e-10)
    assert renyi_entropy(block, alpha, base=2).item() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_matches_scipy_matrix_functions(alpha):
    """Independent library: scipy's Schur-based logm / fractional_matrix_power, no eigvalsh.

    The issue asked for a cross-check against the PyPI package ``representation-itl``; its only
    release (1.0.7, an sdist) ships metadata but no modules (``src/`` holds only the egg-info), so
    there is nothing to import. scipy computes the same trace functionals by another route."""
    a = normalize(random_gram(seed=int(alpha * 100))).numpy()
    if alpha == 1:
        ref = -np.trace(a @ scipy.linalg.logm(a)).real
    else:
        ref = math.log(np.trace(scipy.linalg.fractional_matrix_power(a, alpha)).real) / (1 - alpha)
    assert renyi_entropy(torch.from_numpy(a), alpha).item() == pytest.approx(ref, abs=1e-8)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_properties(alpha):
    ka, kb, kc = random_gram(seed=1), random_gram(seed=2, sigma=0.8), random_gram(seed=3, d=2)
    n = ka.shape[0]
    sa, sb = renyi_entropy(normalize(ka), alpha), renyi_entropy(normalize(kb), alpha)
    assert 0 <= sa <= math.log(n) + 1e-12
    assert joint_entropy(ka, kb, alpha=alpha) >= max(sa, sb) - 1e-12
    # chain rule: I(X; Y | Z) = I(X; Y, Z) - I(X; Z)
    cmi = conditional_mutual_information(ka, kb, kc, alpha)
    chain = mutual_information(ka, kb * kc, alpha) - mutual_information(ka, kc, alpha)
    assert cmi.item() == pytest.approx(chain.item(), abs=1e-10)
    assert conditional_mutual_information(ka, kb, None, alpha).item() == pytest.approx(
        mutual_information(ka, kb, alpha).item())
    # relabelling the samples consistently changes nothing
    p = torch.randperm(n)
    perm = lambda k: k[p][:, p]  # noqa: E731
    assert conditional_mutual_information(perm(ka), perm(kb), perm(kc), alpha).item() == pytest.approx(
        cmi.item(), abs=1e-10)


def test_mutual_information_of_a_variable_with_itself():
    """I(X; X) = S(X) + S(X) - S(K∘K): it equals S(X) exactly when K∘K = K, i.e. a 0/1 (delta)
    kernel of a discrete variable. A Gaussian Gram matrix is not idempotent (K∘K is the kernel of
    width σ/√2), so for it the identity holds only in the σ -> 0 limit, where both sides -> log N."""
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0])
    k = (labels[:, None] == labels[None, :]).double()
    for alpha in ALPHAS:
        assert mutual_information(k, k, alpha).item() == pytest.approx(
            renyi_entropy(normalize(k), alpha).item(), abs=1e-10)
    x = torch.randn(16, 3, dtype=torch.float64)
    sharp = gaussian_gram(x, 0.05)
    assert mutual_information(sharp, sharp).item() == pytest.approx(renyi_entropy(normalize(sharp)).item(), abs=1e-6)
    wide = gaussian_gram(x, 2.0)
    assert mutual_information(wide, wide).item() < renyi_entropy(normalize(wide)).item() - 0.1


def test_alpha_one_is_the_continuous_limit():
    a = normalize(random_gram(seed=5))
    s1 = renyi_entropy(a, 1.0).item()
    for eps in (1e-3, 1e-5):
        assert renyi_entropy(a, 1 + eps).item() == pytest.approx(s1, abs=5 * eps)
        assert renyi_entropy(a, 1 - eps).item() == pytest.approx(s1, abs=5 * eps)


def test_alpha_two_frobenius_equals_eigenvalues():
    a = normalize(random_gram(seed=6))
    assert renyi_entropy(a, 2).item() == pytest.approx(
        entropy_from_eigenvalues(torch.linalg.eigvalsh(a), 2).item(), abs=1e-12)


def test_hadamard_of_many_factors_does_not_underflow():
    grams = [random_gram(n=64, seed=s) for s in range(300)]
    joint = hadamard(*grams)
    assert torch.isfinite(joint).all() and joint.trace().item() == pytest.approx(1.0)
    # many independent-ish factors: every pair of samples looks different, S -> log N
    assert renyi_entropy(joint, 1.01).item() == pytest.approx(math.log(64), abs=1e-3)


def test_batched_gram_and_entropy():
    x = torch.randn(4, 12, 3, dtype=torch.float64)
    k = gaussian_gram(x, 1.0)
    h = renyi_entropy(normalize(k), 1.01)
    assert h.shape == (4,)
    assert torch.allclose(h[2], renyi_entropy(normalize(gaussian_gram(x[2], 1.0)), 1.01))


def test_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be"):
        renyi_entropy(torch.eye(3).double() / 3, 0)


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_eigvalsh_on_threads_is_bit_identical_to_one_call(workers):
    from cmi.entropy import eigvalsh
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 40, 6, dtype=torch.float64, generator=g)
    a = gaussian_gram(x, 2.0) / 40                         # (5, 40, 40) symmetric PSD, 5 matrices over 2-7 threads
    one = torch.linalg.eigvalsh(a)
    assert torch.equal(eigvalsh(a, workers), one)
    assert torch.equal(eigvalsh(a[0], workers), one[0])    # a single matrix is not split



def test_single_thread_lets_one_thread_of_the_process_in_at_a_time():
    """The two halves of a bi-directional plan both solve eigenproblems: while one is inside, the
    other waits (else its leaving would give LAPACK two threads under the other's solve); each is
    solved on one thread, and the process gets its count back."""
    import threading

    from cmi.entropy import single_thread

    before, cpu = torch.get_num_threads(), torch.device("cpu")
    a_in, release, b_in = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with single_thread(cpu):
            with single_thread(cpu):              # nested in one thread: no deadlock
                a_in.set()
                release.wait(10)
                seen["a"] = torch.get_num_threads()

    def b():
        a_in.wait(10)
        with single_thread(cpu):
            b_in.set()
            seen["b"] = torch.get_num_threads()

    torch.set_num_threads(2)
    try:
        threads = [threading.Thread(target=f) for f in (a, b)]
        for t in threads:
            t.start()
        assert a_in.wait(10) and not b_in.wait(0.3)      # b waits while a is inside
        release.set()
        for t in threads:
            t.join(20)
        assert b_in.is_set() and seen == {"a": 1, "b": 1}
        assert torch.get_num_threads() == 2
    finally:
        release.set()
        torch.set_num_threads(before)
