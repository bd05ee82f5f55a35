"""Eq 85's explicit product against backprop and jax.grad on width-1 chains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp

# Chapter 10: sigmoid neurons, C = (yhat - y)^2.
SQUARED_ERROR = fbp.Network("sigmoid", cost="squared_error")


@pytest.mark.parametrize("num_layers", [1, 2, 3, 5, 8])
def test_chain_rule_equals_backprop_and_jax_grad(num_layers):
    rng = np.random.default_rng(num_layers)
    for _ in range(3):
        ws = jnp.asarray(rng.normal(size=num_layers) * 2)
        x, y = jnp.asarray(rng.normal()), jnp.asarray(rng.uniform())
        got = fbp.chain_rule_gradients(ws, x, y)
        assert got.shape == (num_layers,) and got.dtype == jnp.float64

        params = [fbp.Layer(w.reshape(1, 1), jnp.zeros(1)) for w in ws]
        manual = fbp.backprop(params, x[None], y[None], net=SQUARED_ERROR)
        np.testing.assert_allclose(got, [g.w[0, 0] for g in manual], rtol=1e-12, atol=1e-300)

        def cost(ws):
            a = x
            for w in ws:  # eqs 75-77 with b = 0
                a = jax.nn.sigmoid(w * a)
            return (a - y) ** 2

        np.testing.assert_allclose(got, jax.grad(cost)(ws), rtol=1e-10, atol=1e-300)


def test_eq_85_three_layers_by_hand():
    """N = 3: x sigma'(h1) w2 sigma'(h2) w3 sigma'(h3) dC/dy, typed out as in eq 85."""
    w1, w2, w3, x, y = 0.7, -1.3, 2.1, 0.4, 0.25
    s = lambda h: 1 / (1 + np.exp(-h))  # noqa: E731
    ds = lambda h: s(h) * (1 - s(h))  # noqa: E731
    h1 = w1 * x
    h2 = w2 * s(h1)
    h3 = w3 * s(h2)
    dC_dy = 2 * (s(h3) - y)
    expected_w1 = x * ds(h1) * w2 * ds(h2) * w3 * ds(h3) * dC_dy
    expected_w3 = s(h2) * ds(h3) * dC_dy
    got = fbp.chain_rule_gradients(jnp.array([w1, w2, w3]), x, y)
    np.testing.assert_allclose(got[0], expected_w1, rtol=1e-12)
    np.testing.assert_allclose(got[2], expected_w3, rtol=1e-12)


def test_chain_rule_float32():
    ws = jnp.array([0.5, -1.0, 2.0], jnp.float32)
    got = fbp.chain_rule_gradients(ws, jnp.float32(0.3), jnp.float32(0.9))
    assert got.dtype == jnp.float32
    params = [fbp.Layer(w.reshape(1, 1), jnp.zeros(1, jnp.float32)) for w in ws]
    manual = fbp.backprop(
        params, jnp.array([0.3], jnp.float32), jnp.array([0.9], jnp.float32), net=SQUARED_ERROR
    )
    np.testing.assert_allclose(got, [g.w[0, 0] for g in manual], rtol=1e-5)


@pytest.mark.parametrize(
    "ws,x,y,error,match",
    [
        (jnp.ones((2, 2)), 0.1, 0.2, ValueError, "ws to have shape"),
        (jnp.ones(0), 0.1, 0.2, ValueError, "ws to have shape"),
        (jnp.ones(3, jnp.int32), 0.1, 0.2, TypeError, "ws"),
        (jnp.ones(3), jnp.ones(2), 0.2, ValueError, "x to be a scalar"),
    ],
)
def test_chain_rule_bad_input(ws, x, y, error, match):
    with pytest.raises(error, match=match):
        fbp.chain_rule_gradients(ws, x, y)
