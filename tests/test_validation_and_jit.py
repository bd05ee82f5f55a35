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
    with pytest.raises(ValueError, match="at least two layer sizes"):
        fbp.init_mlp(key, [784])
    with pytest.raises(ValueError, match=r"sizes\[1\] to be a positive int"):
        fbp.init_mlp(key, [3, 0, 2])
    with pytest.raises(ValueError, match="Unknown init"):
        fbp.init_mlp(key, [3, 2], init="xavier")
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
    for activation in ["sigmoid", "tanh", "relu", "identity"]:
        for cost in ["quadratic", "squared_error", "cross_entropy"]:
            out = "sigmoid" if cost == "cross_entropy" else None
            opts = dict(activation=activation, output_activation=out, cost=cost)
            value, grads = fbp.value_and_grad(params, xs, ys, **opts)
            assert np.isfinite(value), (activation, cost)
            assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), (activation, cost)
            out_act = dict(activation=activation, output_activation=out)
            assert np.all(np.isfinite(fbp.feedforward(params, xs, **out_act)))
