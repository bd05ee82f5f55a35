"""network.py's SGD as pure functions, against a NumPy update_mini_batch and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close, random_problem
from test_numpy_reference import network_py_mean_gradient

import functional_bp as fbp
from functional_bp import (
    accuracy,
    evaluate,
    optax_epoch,
    optax_step,
    sgd_step,
    total_cost,
    train_epoch,
)


def numpy_update_mini_batch(params, xs, ys, eta, lmbda, n, cost):
    """network.py's update_mini_batch (network2.py's with lmbda), looping over examples."""
    mean, _ = network_py_mean_gradient(params, xs, ys, cost)
    return [
        fbp.Layer(
            (1 - eta * lmbda / n) * np.asarray(layer.w) - eta * w, np.asarray(layer.b) - eta * b
        )
        for layer, (w, b) in zip(params, mean)
    ]


@pytest.mark.parametrize("cost,lmbda", [("quadratic", 0.0), ("cross_entropy", 5.0)])
def test_sgd_steps_equal_numpy_update_mini_batch(cost, lmbda):
    params, xs, ys = random_problem(0, sizes=[12, 7, 5], batch=40)
    expected = params
    for step in range(4):  # the same mini-batch order on both sides
        xb, yb = xs[10 * step : 10 * step + 10], ys[10 * step : 10 * step + 10]
        params = sgd_step(params, xb, yb, 0.5, lmbda=lmbda, n=40, cost=cost)
        expected = numpy_update_mini_batch(expected, xb, yb, 0.5, lmbda, 40, cost)
    assert_tree_close(params, jax.tree.map(jnp.asarray, expected), 1e-10)


def test_sgd_step_does_not_mutate_and_needs_n_for_l2():
    params, xs, ys = random_problem(1, sizes=[3, 2], batch=4)
    before = jax.tree.map(np.array, params)
    sgd_step(params, xs, ys, 1.0)
    assert_tree_close(params, jax.tree.map(jnp.asarray, before), 0.0)
    with pytest.raises(ValueError, match="n, the size of the training set"):
        sgd_step(params, xs, ys, 1.0, lmbda=0.1)


def test_optax_sgd_with_manual_gradients_equals_sgd_step():
    params, xs, ys = random_problem(2, sizes=[6, 5, 3], batch=8)
    optimizer = optax.sgd(0.7)
    opt_state = optimizer.init(params)
    reference = params
    for _ in range(3):
        params, opt_state = optax_step(optimizer, params, opt_state, xs, ys, activation="tanh")
        reference = sgd_step(reference, xs, ys, 0.7, activation="tanh")
    assert_tree_close(params, reference, 1e-12)


def test_train_epoch_is_the_loop_it_documents_partial_batch_included():
    """23 examples, batch 5: four full mini-batches in the scan, then one of 3."""
    params, xs, ys = random_problem(3, sizes=[4, 6, 2], batch=23)
    key = jax.random.key(7)
    got = train_epoch(key, params, xs, ys, 0.9, batch_size=5, lmbda=0.3, cost="cross_entropy")

    order = np.asarray(jax.random.permutation(key, 23))
    expected = params
    for start in range(0, 23, 5):
        batch = order[start : start + 5]
        expected = sgd_step(
            expected, xs[batch], ys[batch], 0.9, lmbda=0.3, n=23, cost="cross_entropy"
        )
    assert_tree_close(got, expected, 1e-10)
    # Without the partial batch the result differs: the test can tell.
    dropped = params
    for start in range(0, 20, 5):
        batch = order[start : start + 5]
        dropped = sgd_step(
            dropped, xs[batch], ys[batch], 0.9, lmbda=0.3, n=23, cost="cross_entropy"
        )
    assert not np.allclose(got[0].w, dropped[0].w)


def test_train_epoch_shuffle_depends_on_key_only():
    params, xs, ys = random_problem(4, sizes=[4, 3], batch=20)
    a = train_epoch(jax.random.key(1), params, xs, ys, 1.0, batch_size=4)
    b = train_epoch(jax.random.key(1), params, xs, ys, 1.0, batch_size=4)
    c = train_epoch(jax.random.key(2), params, xs, ys, 1.0, batch_size=4)
    assert_tree_close(a, b, 0.0)
    assert not np.allclose(a[0].w, c[0].w)


def test_optax_epoch_equals_loop_of_optax_steps():
    params, xs, ys = random_problem(5, sizes=[5, 4, 3], batch=12)
    optimizer = optax.adam(1e-2)
    key = jax.random.key(3)
    got, _ = optax_epoch(key, optimizer, params, optimizer.init(params), xs, ys, batch_size=4)
    order = np.asarray(jax.random.permutation(key, 12))
    expected, state = params, optimizer.init(params)
    for start in range(0, 12, 4):
        batch = order[start : start + 4]
        expected, state = optax_step(optimizer, expected, state, xs[batch], ys[batch])
    assert_tree_close(got, expected, 1e-10)


def test_epoch_rejects_bad_batch_size():
    params, xs, ys = random_problem(6, sizes=[3, 2], batch=4)
    with pytest.raises(ValueError, match="batch_size to be an int >= 1, got 0"):
        train_epoch(jax.random.key(0), params, xs, ys, 1.0, batch_size=0)
    with pytest.raises(ValueError, match=r"y to have shape \(4, 2\)"):
        train_epoch(jax.random.key(0), params, xs, ys[:, :1], 1.0, batch_size=2)


def test_evaluate_accuracy_and_total_cost():
    params, xs, _ = random_problem(7, sizes=[5, 4, 3], batch=25)
    labels = np.random.default_rng(0).integers(0, 3, 25)
    predicted = np.argmax(np.asarray(fbp.feedforward(params, xs)), axis=1)
    expected = int(np.sum(predicted == labels))
    assert evaluate(params, xs, labels, batch_size=7) == expected
    assert accuracy(params, xs, labels) == pytest.approx(expected / 25)

    ys = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    plain = float(fbp.loss(params, xs, ys))
    assert total_cost(params, xs, ys, batch_size=6) == pytest.approx(plain, rel=1e-12)
    l2 = 0.5 * 2.0 / 25 * sum(float(jnp.sum(layer.w**2)) for layer in params)
    assert total_cost(params, xs, ys, lmbda=2.0) == pytest.approx(plain + l2, rel=1e-12)
