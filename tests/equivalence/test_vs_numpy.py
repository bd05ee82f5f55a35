"""The library against independent plain-NumPy references (tests/references.py):
network.py's backprop and mini-batch gradient, network2.py's update_mini_batch with L2,
and the learning rules on random architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_tree_close, random_problem
from references import network_py_mean_gradient, numpy_rule_grad, numpy_update_mini_batch

import functional_bp as fbp
from functional_bp import feedback


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
@pytest.mark.parametrize("seed", range(4))
def test_backprop_and_grad_equal_numpy_network_py(cost, seed):
    sizes = [[784, 30, 10], [5, 1, 3], [7, 6, 5, 4, 3], [2, 2]][seed]
    params, xs, ys = random_problem(seed, sizes=sizes, batch=5)
    mean, per_example = network_py_mean_gradient(params, xs, ys, cost)
    net = fbp.Network(cost=cost)

    for i, (delta_b, delta_w) in enumerate(per_example):
        manual = fbp.backprop(params, xs[i], ys[i], net=net)
        for layer, nb, nw in zip(manual, delta_b, delta_w):
            np.testing.assert_allclose(layer.w, nw, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(layer.b, nb.ravel(), rtol=1e-10, atol=1e-14)

    for layer, (w, b) in zip(fbp.grad(params, xs, ys, net=net), mean):
        np.testing.assert_allclose(layer.w, w, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(layer.b, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cost,lmbda", [("quadratic", 0.0), ("cross_entropy", 5.0)])
def test_sgd_steps_equal_numpy_update_mini_batch(cost, lmbda):
    """weight_decay = lmbda / n is network2.py's (1 - eta lmbda / n) w - eta nabla_w."""
    params, xs, ys = random_problem(0, sizes=[12, 7, 5], batch=40)
    expected = params
    for step in range(4):  # the same mini-batch order on both sides
        xb, yb = xs[10 * step : 10 * step + 10], ys[10 * step : 10 * step + 10]
        params = fbp.sgd_step(
            params, xb, yb, 0.5, weight_decay=lmbda / 40, net=fbp.Network(cost=cost)
        )
        expected = numpy_update_mini_batch(expected, xb, yb, 0.5, lmbda, 40, cost)
    assert_tree_close(params, jax.tree.map(jnp.asarray, expected), 1e-10)


def random_architecture(seed):
    """Depth 2 to 5 (layers), widths 1 to 12."""
    rng = np.random.default_rng(seed)
    return [int(n) for n in rng.integers(1, 13, size=2 + seed % 4 + 1)]


@pytest.mark.parametrize(
    "seed", [pytest.param(seed, marks=() if seed < 2 else pytest.mark.slow) for seed in range(8)]
)
@pytest.mark.parametrize("rule", ["fa", "dfa", "sign", "kp"])
def test_each_rule_equals_numpy(rule, seed):
    params, xs, ys = random_problem(900 + seed, batch=7, sizes=random_architecture(seed))
    matrices = feedback.init_feedback(jax.random.key(seed), params, rule)
    got = feedback.feedback_grad(params, matrices, xs, ys, rule=rule)
    assert_tree_close(got, numpy_rule_grad(params, matrices, xs, ys, rule), rtol=1e-10)
