"""The NumPy reference itself, checked against numbers worked out by hand and PyTorch."""

import numpy as np
import pytest
from normkit import reference

X = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])


def test_worked_example_per_row():
    # Each row [a, a + 0.1]: deviations +-0.05, biased variance 0.0025.
    y, mean, rstd = reference.layer_norm_forward(X, eps=1e-5)
    np.testing.assert_allclose(mean, [0.15, 0.35, 0.55])
    np.testing.assert_allclose(np.abs(y), 0.05 / np.sqrt(0.0025 + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(y[:, 0], -0.998006, atol=5e-7)


def test_against_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((6, 10))
    gamma, beta, dy = rng.standard_normal(10), rng.standard_normal(10), rng.standard_normal((6, 10))
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = torch.nn.functional.layer_norm(xt, (10,), gt, bt, eps=1e-5)
    yt.backward(torch.tensor(dy))
    y, mean, rstd = reference.layer_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = reference.layer_norm_backward(dy, x, mean, rstd, gamma)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-10, atol=1e-12)
