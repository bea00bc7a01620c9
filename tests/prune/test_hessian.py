import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelzip.errors import ConfigError, DataError
from modelzip.prune import exact_diagonal, fisher_diagonal, hutchinson_diagonal

# Symmetric positive definite, non-diagonal: eigenvalues of a diagonally dominant symmetric matrix are > 0.
A = torch.tensor([[4.0, 1.0, 0.5, 0.0],
                  [1.0, 3.0, 0.2, 0.1],
                  [0.5, 0.2, 2.0, -0.3],
                  [0.0, 0.1, -0.3, 1.5]], dtype=torch.float64)
W0 = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)


def quadratic(matrix: torch.Tensor, parts: list[torch.Tensor]):
    """loss = 1/2 (w - w0)^T A (w - w0), with w split over several tensors of any shape: Hessian = A."""
    def loss() -> torch.Tensor:
        d = torch.cat([p.flatten() for p in parts]) - W0
        return 0.5 * d @ matrix @ d
    return loss


def split_weights() -> list[torch.Tensor]:
    return [torch.tensor([1.0], dtype=torch.float64, requires_grad=True),
            torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)]


def test_exact_diagonal_of_a_quadratic_is_diag_a():
    parts = split_weights()
    diag = exact_diagonal(quadratic(A, parts), parts)
    assert diag[0].shape == (1,) and diag[1].shape == (1, 3)
    assert torch.allclose(torch.cat([d.flatten() for d in diag]), A.diagonal(), atol=1e-6)
    assert parts[0].grad is None and parts[1].grad is None  # autograd.grad only: nothing accumulated


def test_exact_diagonal_zero_where_the_loss_is_linear_or_unused():
    w, b, unused = (torch.tensor([1.0, 2.0], requires_grad=True) for _ in range(3))
    diag = exact_diagonal(lambda: (w ** 3).sum() + 5 * b.sum(), [w, b, unused])
    assert diag[0].tolist() == [6.0, 12.0]  # d2/dw2 w^3 = 6w
    assert diag[1].tolist() == [0.0, 0.0] and diag[2].tolist() == [0.0, 0.0]


def test_exact_diagonal_refuses_big_tensors_by_name():
    w = torch.zeros(5, 3, requires_grad=True)
    with pytest.raises(ConfigError, match="fc1.weight has 15 weights.*max_elements=10"):
        exact_diagonal(lambda: (w ** 2).sum(), [w], max_elements=10, names=["fc1.weight"])


def test_hutchinson_is_exact_for_a_diagonal_hessian_with_one_probe():
    parts = split_weights()
    diagonal = torch.diag(torch.tensor([4.0, 0.5, 2.0, 7.0], dtype=torch.float64))
    est = hutchinson_diagonal(quadratic(diagonal, parts), parts, samples=1)
    assert torch.cat([e.flatten() for e in est]).tolist() == [4.0, 0.5, 2.0, 7.0]  # z_k * h_kk z_k, z_k^2 = 1


def test_hutchinson_converges_to_diag_a_with_many_probes():
    parts = split_weights()
    generator = torch.Generator().manual_seed(0)
    est = torch.cat([e.flatten() for e in hutchinson_diagonal(quadratic(A, parts), parts, 4000, generator)])
    # one probe's error at k is sum_{j != k} A_kj z_j, std sqrt(sum A_kj^2) <= 1.2; / sqrt(4000) -> < 0.02
    assert torch.allclose(est, A.diagonal(), rtol=0.03)
    assert not torch.equal(est, A.diagonal())  # an estimate, not a copy: the off-diagonal terms add noise
    with pytest.raises(ConfigError, match="samples >= 1"):
        hutchinson_diagonal(quadratic(A, parts), parts, samples=0)


def test_fisher_diagonal_is_the_mean_squared_per_example_gradient():
    model = nn.Linear(5, 3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    params = dict(model.named_parameters())
    fisher = fisher_diagonal(model, params, [(x[:6], y[:6]), (x[6:], y[6:])])  # uneven batches: a mean over all 10
    loop = {name: torch.zeros_like(p) for name, p in params.items()}
    for i in range(10):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), list(params.values()))
        for name, g in zip(params, grads):
            loop[name] += g.square() / 10
    for name in params:
        assert torch.allclose(fisher[name], loop[name], atol=1e-6)
    assert (fisher["weight"] > 0).all() and model.weight.grad is None


def test_fisher_diagonal_at_given_values_not_the_models_own():
    model = nn.Linear(2, 1, bias=False)
    x, y = torch.tensor([[1.0, 2.0], [3.0, -1.0]]), torch.tensor([[1.0], [0.0]])

    def mse(m: nn.Module, batch) -> torch.Tensor:
        return 0.5 * (m(batch[0]) - batch[1]).square().mean()
    fisher = fisher_diagonal(model, {"weight": torch.tensor([[1.0, 0.0]])}, [(x, y)], mse)
    # per example g = (w.x - y) x: residuals 0 and 3, so g = 0 and (9, -3): mean of squares (81/2, 9/2)
    assert fisher["weight"].tolist() == [[40.5, 4.5]]
    with pytest.raises(DataError, match="at least one example"):
        fisher_diagonal(model, {"weight": model.weight}, [], mse)
