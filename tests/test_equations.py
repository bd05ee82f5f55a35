"""The documents' backward equations, each for one example: delta^L (eqs 90-91), eq 96,
eq 99, and their composition into backprop."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import assert_tree_close, random_problem

import functional_bp as fbp


def test_error_terms_are_dC_dz():
    """delta^l = dC/dz^l: compared with jax.grad with respect to a shift of z^l."""
    params, xs, ys = random_problem(6, sizes=[3, 5, 4, 2])
    x, y = xs[0], ys[0]
    deltas = fbp.error_terms(params, x, y, net=fbp.Network("tanh"))
    assert [d.shape for d in deltas] == [(5,), (4,), (2,)]

    def cost_with_shifts(shifts):
        a = x
        for layer, shift in zip(params, shifts):
            z = layer.w @ a + layer.b + shift
            a = jnp.tanh(z)
        return 0.5 * jnp.sum((a - y) ** 2)

    expected = jax.grad(cost_with_shifts)([jnp.zeros(n) for n in (5, 4, 2)])
    assert_tree_close(deltas, expected, 1e-10)


def test_the_three_equations_compose_into_backprop():
    """output_error (eqs 90-91), hidden_error (eq 96) and layer_gradient (eq 99), called
    by hand for one example, give `backprop`."""
    params, xs, ys = random_problem(9, sizes=[4, 6, 5, 3])
    x, y = xs[0], ys[0]
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    _, cache = fbp.forward(params, x, net=net)
    delta = fbp.output_error(cache.zs[-1], cache.activations[-1], y, net=net)
    deltas = [delta]
    for l in (2, 1):
        delta = fbp.hidden_error(params[l].w, delta, cache.zs[l - 1], cache.activations[l], net=net)
        deltas.insert(0, delta)
    by_hand = [fbp.layer_gradient(d, a) for d, a in zip(deltas, cache.activations)]
    assert_tree_close(by_hand, fbp.backprop(params, x, y, net=net), 1e-12)
    assert_tree_close(deltas, fbp.error_terms(params, x, y, net=net), 1e-12)


def test_output_error_uses_the_closed_form_where_there_is_one():
    """Cross-entropy after a sigmoid: delta^L = a - y (network2.py), also where sigma(z)
    rounds to 1 and dC/da ⊙ sigma'(z) would be 0/0."""
    z = jnp.array([40.0, -3.0, 0.5])
    a, y = jax.nn.sigmoid(z), jnp.array([0.2, 0.9, 0.5])
    net = fbp.Network("sigmoid", cost="cross_entropy")
    np.testing.assert_allclose(fbp.output_error(z, a, y, net=net), a - y, rtol=1e-15)
    quadratic = fbp.output_error(z, a, y)  # network.py: (a - y) sigma'(z)
    np.testing.assert_allclose(quadratic, (a - y) * a * (1 - a), rtol=1e-15)


def test_weighted_error_and_layer_gradient_sum_a_leading_batch_axis():
    rng = np.random.default_rng(0)
    w_next = jnp.asarray(rng.normal(size=(3, 4)))
    deltas_next = jnp.asarray(rng.normal(size=(5, 3)))
    deltas, a_prev = jnp.asarray(rng.normal(size=(5, 4))), jnp.asarray(rng.normal(size=(5, 2)))
    # Eq 8: (w^{l+1})^T delta^{l+1}, example by example and as one matrix product.
    one_by_one = jnp.stack([w_next.T @ d for d in deltas_next])
    np.testing.assert_allclose(fbp.weighted_error(w_next, deltas_next), one_by_one, rtol=1e-14)
    # Eq 99: sum_i delta_i a_i^T; the bias gradient sum_i delta_i.
    summed = fbp.layer_gradient(deltas, a_prev)
    outer = sum(jnp.outer(d, a) for d, a in zip(deltas, a_prev))
    np.testing.assert_allclose(summed.w, outer, rtol=1e-13)
    np.testing.assert_allclose(summed.b, deltas.sum(axis=0), rtol=1e-13)
    one = fbp.layer_gradient(deltas[0], a_prev[0])
    np.testing.assert_allclose(one.w, jnp.outer(deltas[0], a_prev[0]), rtol=1e-15)
