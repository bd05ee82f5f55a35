"""Bad input fails early and clearly; hot paths compile once; extremes stay finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_problem

import functional_bp as fbp
from functional_bp import backward


def _chain(*shapes, dtype=jnp.float32):
    return [fbp.Layer(jnp.ones(s, dtype), jnp.ones(s[0], dtype)) for s in shapes]


GOOD = _chain((4, 3), (2, 4))
X, Y = jnp.ones((5, 3)), jnp.ones((5, 2))


@pytest.mark.parametrize(
    "params,xs,ys,error,match",
    [
        (
            _chain((4, 3), (2, 5)),
            X,
            Y,
            ValueError,
            r"layer 2 \(params\[1\]\) w has shape \(2, 5\).*layer 1 has 4 neurons",
        ),
        (
            [fbp.Layer(jnp.ones((4, 3)), jnp.ones(3))],
            X,
            jnp.ones((5, 4)),
            ValueError,
            r"layer 1 \(params\[0\]\) b to have shape \(4,\).*got \(3,\)",
        ),
        ([fbp.Layer(jnp.ones(4), jnp.ones(4))], X, Y, ValueError, r"layer 1.*rank 2"),
        (
            GOOD,
            jnp.ones((5, 7)),
            Y,
            ValueError,
            r"x to have shape \(batch, 3\).*sizes \[3, 4, 2\].*\(5, 7\)",
        ),
        (GOOD, X, jnp.ones((5, 3)), ValueError, r"y to have shape \(5, 2\).*got \(5, 3\)"),
        (GOOD, X, jnp.ones((4, 2)), ValueError, r"y to have shape \(5, 2\)"),
        (GOOD, jnp.ones(3), jnp.ones(2), ValueError, r"x to have shape \(batch, 3\)"),
        (
            _chain((4, 3), (2, 4), dtype=jnp.int32),
            X,
            Y,
            TypeError,
            r"layer 1 \(params\[0\]\) w.*int32",
        ),
        (_chain((4, 3), (2, 4), dtype=jnp.complex64), X, Y, TypeError, r"layer 1.*complex64"),
        (GOOD, X.astype(jnp.int32), Y, TypeError, r"x to have a real floating dtype.*int32"),
        (GOOD, X, Y.astype(jnp.complex64), TypeError, r"y to have a real floating dtype"),
        ([], X, Y, TypeError, r"non-empty list of Layer"),
        (
            [GOOD[0], fbp.Layer(jnp.ones((2, 4), jnp.float64), jnp.ones(2, jnp.float64))],
            X,
            Y,
            TypeError,
            r"share one dtype: layer 2",
        ),
    ],
)
def test_bad_input_raises_before_computation(params, xs, ys, error, match, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("computation started before validation")

    monkeypatch.setattr(backward, "forward_pass", must_not_run)
    with pytest.raises(error, match=match):
        fbp.grad(params, xs, ys)


def test_single_example_functions_check_shapes():
    with pytest.raises(ValueError, match=r"x to have shape \(3,\)"):
        fbp.backprop(GOOD, X, Y)
    with pytest.raises(ValueError, match=r"y to have shape \(2,\)"):
        fbp.error_terms(GOOD, X[0], jnp.ones(3))
    with pytest.raises(ValueError, match=r"x to have shape \(3,\) or \(batch, 3\)"):
        fbp.feedforward(GOOD, jnp.ones((2, 2, 3)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(activation="swish"), r"Unknown activation 'swish'.*softmax"),
        (dict(output_activation="gelu"), r"Unknown activation 'gelu'"),
        (dict(cost="hinge"), r"Unknown cost 'hinge'.*cross_entropy"),
        (dict(activation="relu", cost="cross_entropy"), r"cross_entropy.*\(0, 1\).*'relu'"),
    ],
)
def test_unknown_or_incompatible_names(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fbp.grad(GOOD, X, Y, **kwargs)


def test_init_mlp_checks_and_shapes(key):
    with pytest.raises(TypeError, match="floating"):
        fbp.init_mlp(key, [3, 2], dtype=jnp.int32)
    params = fbp.init_mlp(key, [784, 30, 10])
    assert [(l.w.shape, l.b.shape) for l in params] == [((30, 784), (30,)), ((10, 30), (10,))]
    assert params[0].w.dtype == jnp.float32
    assert fbp.layer_sizes(params) == [784, 30, 10]
    # N(0, 1) vs N(0, 1/n_in): the scaled weights have std near 1/sqrt(784).
    assert 0.9 < float(jnp.std(params[0].w)) < 1.1
    scaled = fbp.init_mlp(key, [784, 30, 10], init="scaled_normal", dtype=jnp.float64)
    assert scaled[0].w.dtype == jnp.float64
    assert 0.9 < float(jnp.std(scaled[0].w)) * np.sqrt(784) < 1.1
    assert 0.6 < float(jnp.std(scaled[0].b)) < 1.4


def test_second_call_does_not_compile_again():
    params, xs, ys = random_problem(0, sizes=[6, 5, 3], batch=4)
    hot_paths = [
        (fbp.grad, lambda p, x, y: fbp.grad(p, x, y, cost="cross_entropy")),
        (fbp.backprop, lambda p, x, y: fbp.backprop(p, x[0], y[0], activation="tanh")),
        (fbp.per_example_grads, fbp.per_example_grads),
        (fbp.value_and_grad, fbp.value_and_grad),
    ]
    for jitted, call in hot_paths:
        call(params, xs, ys)
        compiled = jitted._cache_size()
        call(params, xs, ys)
        # New arrays of the same shapes are no new compilation either.
        call(jax.tree.map(lambda a: a + 1, params), xs + 1, ys / 2)
        assert jitted._cache_size() == compiled
        # A new architecture is, which shows the count can move.
        call(*random_problem(1, sizes=[6, 4, 3], batch=4))
        assert jitted._cache_size() == compiled + 1


def test_extreme_pre_activations_stay_finite():
    """Pre-activations of +-1000 in float32: finite outputs and gradients, every cost."""
    w = jnp.array([[1000.0, 0.0], [0.0, -1000.0]], jnp.float32)
    params = [fbp.Layer(w, jnp.zeros(2, jnp.float32)), fbp.Layer(w, jnp.zeros(2, jnp.float32))]
    xs = jnp.array([[1.0, 1.0], [-1.0, -1.0]], jnp.float32)
    ys = jnp.array([[0.0, 1.0], [1.0, 0.0]], jnp.float32)
    _, cache = fbp.forward(params, xs)
    assert float(jnp.max(jnp.abs(cache.zs[0]))) == 1000.0
    for activation in ["sigmoid", "tanh", "relu", "identity", "softmax"]:
        for cost in ["quadratic", "squared_error", "cross_entropy"]:
            out = "sigmoid" if cost == "cross_entropy" else None
            opts = dict(activation=activation, output_activation=out, cost=cost)
            value, grads = fbp.value_and_grad(params, xs, ys, **opts)
            assert np.isfinite(value), (activation, cost)
            assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), (activation, cost)
            out_act = dict(activation=activation, output_activation=out)
            assert np.all(np.isfinite(fbp.feedforward(params, xs, **out_act)))


SCALAR_DERIVATIVE = fbp.Activation(jnp.tanh, lambda z: jnp.sum(1 - jnp.tanh(z) ** 2), name="bad")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(activation=SCALAR_DERIVATIVE),
            r"Activation 'bad' of layer 1: derivative returned shape \(\) for one example "
            r"\(shapes \(4,\)\); expected \(4,\)",
        ),
        (
            dict(activation=fbp.Activation(lambda z: jnp.concatenate([z, z]), jnp.ones_like)),
            r"Activation 'custom' of layer 1: fn returned shape \(8,\).*expected \(4,\)",
        ),
        (
            dict(output_activation=fbp.Activation(jnp.tanh, vjp=lambda z, a, g: jnp.dot(g, a))),
            r"Activation 'custom' of layer 2: vjp\(z, a, g\) returned shape \(\).*expected \(2,\)",
        ),
        (
            dict(cost=fbp.Cost(lambda a, y: (a - y) ** 2, lambda a, y: 2 * (a - y), "sq")),
            r"Cost 'sq': fn returned shape \(2,\) for one example \(shapes \(2,\), \(2,\)\); "
            r"expected \(\)",
        ),
        (
            dict(cost=fbp.Cost(lambda a, y: jnp.sum(a - y), lambda a, y: jnp.sum(a - y), "s")),
            r"Cost 's': derivative returned shape \(\).*expected \(2,\)",
        ),
        (
            dict(cost=fbp.Cost(lambda a, y: jnp.sum(a @ jnp.ones((3, 3))), lambda a, y: a, "m")),
            r"Cost 'm': fn failed on one example \(shapes \(2,\), \(2,\)\)",
        ),
        (
            dict(activation=fbp.Activation(jnp.tanh)),
            r"Activation 'custom' to have a callable derivative.*or vjp",
        ),
    ],
)
def test_user_objects_are_checked_against_their_contract(kwargs, match, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("computation started before validation")

    monkeypatch.setattr(backward, "forward_pass", must_not_run)
    error = TypeError if "callable" in match else ValueError
    with pytest.raises(error, match=match):
        fbp.grad(GOOD, X, Y, **kwargs)


def test_softmax_log_likelihood_finite_at_1000_in_float32():
    w = jnp.array([[1000.0, 0.0], [0.0, -1000.0], [500.0, 500.0]], jnp.float32)
    params = [fbp.Layer(w, jnp.zeros(3, jnp.float32))]
    xs = jnp.array([[1.0, 1.0], [-1.0, -1.0]], jnp.float32)
    ys = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], jnp.float32)  # the wrong classes
    for output in ("softmax", "sigmoid"):
        opts = dict(output_activation=output, cost="log_likelihood")
        value, grads = fbp.value_and_grad(params, xs, ys, **opts)
        assert np.isfinite(value) and value > 100, output
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), output
        autodiff = jax.grad(lambda p: fbp.loss(p, xs, ys, **opts))(params)
        for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(autodiff)):
            np.testing.assert_allclose(g, a, rtol=1e-5, atol=1e-3)


def test_log_likelihood_refuses_outputs_outside_0_1():
    with pytest.raises(ValueError, match=r"'log_likelihood' needs outputs in \(0, 1\).*'softmax'"):
        fbp.grad(GOOD, X, Y, activation="tanh", cost="log_likelihood")


def test_new_eta_lmbda_or_n_does_not_compile_again():
    params, xs, ys = random_problem(2, sizes=[4, 3, 2], batch=6)
    fbp.sgd_step(params, xs, ys, 0.5, lmbda=1.0, n=100)
    compiled = fbp.sgd_step._cache_size()
    for eta, lmbda, n in [(0.1, 2.0, 50), (3.0, 0.5, 60_000)]:
        fbp.sgd_step(params, xs, ys, eta, lmbda=lmbda, n=n)
    assert fbp.sgd_step._cache_size() == compiled
    key = jax.random.key(0)
    fbp.train_epoch(key, params, xs, ys, 0.5, batch_size=2, lmbda=1.0, n=2000)
    compiled = fbp.train_epoch._cache_size()
    fbp.train_epoch(key, params, xs, ys, 0.7, batch_size=2, lmbda=3.0, n=1000)
    assert fbp.train_epoch._cache_size() == compiled


def test_evaluate_refuses_one_hot_labels():
    params, xs, ys = random_problem(3, sizes=[4, 10], batch=10)
    with pytest.raises(ValueError, match=r"labels to be class indices.*\(10,\).*one-hot"):
        fbp.evaluate(params, xs, ys, batch_size=10)
