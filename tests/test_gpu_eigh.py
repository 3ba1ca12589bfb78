"""The GPU's batched eigensolver against the CPU: skipped without CUDA (run on a lent GPU)."""
import pytest
import torch

from cmi.ranking import rank_channels

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a lent GPU)")


@cuda
@pytest.mark.parametrize("n", [48, 256])
def test_batched_eigvalsh_matches_lapack(n):
    from cmi.gpu_eigh import batched_eigvalsh
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, n, 9, dtype=torch.float64, generator=g)
    a = torch.exp(-torch.cdist(x, x) ** 2 / 8) / n                     # unit-trace Gram matrices, PSD
    w = batched_eigvalsh(a.cuda())
    assert w is not None, "cusolverDnXsyevBatched unavailable: the GPU path falls back to torch"
    assert torch.allclose(w.cpu(), torch.linalg.eigvalsh(a), atol=1e-12, rtol=0)


@cuda
def test_ranking_on_the_gpu_matches_the_cpu():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(96) % 4
    feats = torch.relu(torch.randn(96, 24, 3, 3, generator=g) + y.view(-1, 1, 1, 1) * torch.rand(1, 24, 1, 1, generator=g))
    cpu = rank_channels(feats, y, alpha=1.01, saturation_tol=0, device="cpu")
    gpu = rank_channels(feats, y, alpha=1.01, saturation_tol=0, device="cuda")
    assert gpu.order == cpu.order
    assert max(abs(a - b) for a, b in zip(gpu.cmi, cpu.cmi)) < 1e-8
