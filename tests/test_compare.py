"""The demo's models: whole-model gradients through normkit layers, and a tiny end-to-end run."""

import json

import numpy as np
import pytest
from checks import numeric_grad
from normkit import compare


def _loss_and_grads(model, x, labels):
    logits = model(x)
    loss, grad = compare.softmax_cross_entropy(logits, labels)
    dx = model.backward(grad)
    return loss, dx, {name: g.copy() for name, _, g in model.params_and_grads()}


def _check_gradients(model, x, labels, rng, n_checks=12, h=1e-6):
    model.train()
    _, dx, grads = _loss_and_grads(model, x, labels)

    def loss_at():
        return compare.softmax_cross_entropy(model(x), labels)[0]

    # Running statistics move on every training-mode forward but do not enter the loss.
    for name, param, _ in model.params_and_grads():
        picks = rng.choice(param.size, size=min(n_checks, param.size), replace=False)
        numeric = numeric_grad(loss_at, param, h, picks).reshape(-1)[picks]
        np.testing.assert_allclose(
            grads[name].reshape(-1)[picks], numeric, rtol=1e-5, atol=1e-8, err_msg=name
        )
    picks = rng.choice(x.size, size=n_checks, replace=False)
    numeric = numeric_grad(loss_at, x, h, picks).reshape(-1)[picks]
    np.testing.assert_allclose(
        dx.reshape(-1)[picks], numeric, rtol=1e-5, atol=1e-8, err_msg="input"
    )


@pytest.mark.parametrize("variant", compare.VARIANTS)
def test_mlp_gradients(variant):
    rng = np.random.default_rng(0)
    model = compare.make_mlp(variant, rng, dtype=np.float64, sizes=(12, 9, 7, 5))
    x = rng.standard_normal((6, 12))
    _check_gradients(model, x, rng.integers(0, 5, 6), rng)


@pytest.mark.parametrize("variant", compare.VARIANTS)
def test_cnn_gradients(variant):
    rng = np.random.default_rng(1)
    model = compare.make_cnn(variant, rng, dtype=np.float64, channels=3, side=4, classes=4)
    x = rng.standard_normal((3, 1, 4, 4))
    _check_gradients(model, x, rng.integers(0, 4, 3), rng)


@pytest.mark.parametrize("variant", ["batchnorm", "layernorm"])
def test_numpy_backend_computes_the_same(variant):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 8)
    fast = compare.make_cnn(variant, np.random.default_rng(3))
    slow = compare.make_cnn(variant, np.random.default_rng(3), backend="numpy")
    loss_fast, dx_fast, g_fast = _loss_and_grads(fast, x, labels)
    loss_slow, dx_slow, g_slow = _loss_and_grads(slow, x, labels)
    assert abs(loss_fast - loss_slow) < 1e-5
    np.testing.assert_allclose(dx_fast, dx_slow, rtol=1e-3, atol=1e-6)
    for name in g_fast:
        np.testing.assert_allclose(g_fast[name], g_slow[name], rtol=1e-3, atol=1e-5)


def test_compare_end_to_end(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    from normkit.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "compare",
                "--quick",
                "--epochs",
                "1",
                "--batch-sizes",
                "4,32",
                "--models",
                "mlp",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    record = json.loads((out / "compare.json").read_text())
    assert len(record["runs"]) == 2 * len(compare.VARIANTS)
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in record["runs"])
    assert (out / "compare.png").stat().st_size > 10_000
