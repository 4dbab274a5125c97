"""The LayerNorm layer: PyTorch-like construction, training-loop use, state."""

import normkit
import numpy as np
import pytest
from normkit import LayerNorm


def test_defaults_match_torch():
    layer = LayerNorm(8)
    assert layer.normalized_shape == (8,)
    assert layer.gamma.dtype == np.float32 and layer.gamma.shape == (8,)
    np.testing.assert_array_equal(layer.gamma, 1)
    np.testing.assert_array_equal(layer.beta, 0)
    assert layer.eps == 1e-5


def test_forward_backward_match_functional(rng):
    layer = LayerNorm((3, 4), dtype=np.float64)
    layer.gamma[...] = rng.standard_normal((3, 4))
    layer.beta[...] = rng.standard_normal((3, 4))
    x, dy = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 4))
    y = layer(x)
    y2, mean, rstd = normkit.layer_norm_forward(x, layer.gamma, layer.beta, axis=(-2, -1))
    np.testing.assert_array_equal(y, y2)
    dx = layer.backward(dy)
    dx2, dg, db = normkit.layer_norm_backward(dy, x, mean, rstd, layer.gamma, axis=(1, 2))
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(layer.grad_gamma, dg)
    np.testing.assert_array_equal(layer.grad_beta, db)


def test_params_and_grads_drive_an_optimizer(rng):
    layer = LayerNorm(6, dtype=np.float64)
    x = rng.standard_normal((16, 6))
    true_gamma, true_beta = rng.standard_normal(6), rng.standard_normal(6)
    target = normkit.layer_norm(x, true_gamma, true_beta)
    losses = []
    for _ in range(200):
        y = layer(x)
        losses.append(float(np.mean((y - target) ** 2)))
        layer.backward(2 * (y - target) / y.size)
        for _, param, grad in layer.params_and_grads():
            param -= 0.5 * grad
    assert [name for name, _, _ in layer.params_and_grads()] == ["gamma", "beta"]
    assert losses[-1] < 1e-3 * losses[0]
    np.testing.assert_allclose(layer.gamma, true_gamma, atol=1e-2)


def test_no_affine_and_no_bias():
    assert list(LayerNorm(4, elementwise_affine=False).params_and_grads()) == []
    layer = LayerNorm(4, bias=False)
    assert layer.beta is None
    layer(np.ones((2, 4), np.float32))
    layer.backward(np.ones((2, 4), np.float32))
    assert [n for n, _, _ in layer.params_and_grads()] == ["gamma"]
    assert layer.grad_beta is None


def test_state_dict_round_trip(rng):
    a, b = LayerNorm(5), LayerNorm(5)
    a.gamma[...] = rng.standard_normal(5)
    state = a.state_dict()
    state_gamma = state["gamma"]
    a.gamma[0] = 99.0  # state_dict holds copies
    assert state_gamma[0] != 99.0
    gamma_ref = b.gamma
    b.load_state_dict(state)
    assert b.gamma is gamma_ref  # loaded in place
    np.testing.assert_array_equal(b.gamma, state_gamma)


def test_load_state_dict_errors():
    layer = LayerNorm(5)
    with pytest.raises(KeyError, match="missing"):
        layer.load_state_dict({"gamma": np.ones(5)})
    with pytest.raises(ValueError, match=r"expected shape \(5,\), got \(4,\)"):
        layer.load_state_dict({"gamma": np.ones(4), "beta": np.zeros(5)})


def test_layer_errors():
    with pytest.raises(ValueError, match="trailing shape"):
        LayerNorm(4)(np.ones((2, 5), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        LayerNorm(4).backward(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError):
        LayerNorm(4, dtype=np.int32)
    with pytest.raises(ValueError):
        LayerNorm(0)
    with pytest.raises(TypeError, match="dtype float32"):
        LayerNorm(4)(np.ones((2, 4)))  # float64 input to a float32 layer


def test_train_eval_do_not_change_layer_norm(rng):
    layer = LayerNorm(7)
    x = rng.standard_normal((3, 7)).astype(np.float32)
    y_train = layer(x)
    layer.eval()
    assert layer.training is False
    np.testing.assert_array_equal(layer(x), y_train)
