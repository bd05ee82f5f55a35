"""Second order (`curvature.ggn_vector_product`, `hessian_vector_product`, `diag_hessian`)
against JAX autodiff in float64: G v against
jax.jvp and jax.vjp of the network's output with the cost's Hessian in it, H v against
jax.jvp(jax.grad(loss)), diag_hessian against the diagonal of jax.hessian, the
diagonal of G against curvature.diag_ggn; under jax.jit and jax.vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    LOGSUMEXP_COST,
    NORMALISE,
    assert_tree_close,
    combo_params,
    network,
    random_problem,
)
from jax.flatten_util import ravel_pytree

import functional_bp as fbp
from functional_bp import curvature
from functional_bp.curvature import diag_hessian, ggn_vector_product, hessian_vector_product

SIZES = [3, 5, 4, 3]
COMBOS = combo_params(
    [
        ("sigmoid", None, "quadratic"),
        ("tanh", "softmax", "log_likelihood"),
        ("relu", "sigmoid", "cross_entropy"),
        ("tanh", None, "squared_error"),
        ("sigmoid", "softmax", "quadratic"),
        ("softmax", "sigmoid", "cross_entropy"),
        ("tanh", "sigmoid", "log_likelihood"),
        (NORMALISE, None, LOGSUMEXP_COST),
    ]
)


def tangent(params, seed):
    rng = np.random.default_rng(seed)
    return jax.device_put([fbp.Layer(*(rng.normal(size=np.shape(x)) for x in p)) for p in params])


def reference_ggn_product(net, params, v, xs, ys):
    """(1/N) sum_i J_i^T H_i J_i v, written with jax.jvp, jax.hessian and jax.vjp: the output
    is z^L where the cost has a closed form there, else a^L (diag_ggn's split)."""
    form = net.cost.closed_form(net.output_activation)
    ys = fbp.core.targets(jnp.asarray(ys), jnp.zeros((1, np.shape(params[-1].w)[0])))

    def output(p, x):
        cache = fbp.core.forward_pass(net, p, x[None])
        return (cache.zs if form is not None else cache.activations)[-1][0]

    def cost(u, y):
        return form.fn(u, y) if form is not None else net.cost.fn(u, y)

    def one(x, y):
        u, ju = jax.jvp(lambda p: output(p, x), (params,), (v,))
        h = jax.hessian(cost)(u, y) @ ju
        return jax.vjp(lambda p: output(p, x), params)[1](h)[0]

    total = jax.vmap(one)(xs, ys)
    return jax.tree.map(lambda g: jnp.mean(g, axis=0), total)


@pytest.mark.parametrize("combo", COMBOS)
def test_ggn_vector_product_matches_jvp_hessian_vjp(combo):
    net = network(combo)
    params, xs, ys = random_problem(10, batch=4, sizes=SIZES)
    v = tangent(params, 11)
    actual = ggn_vector_product(params, v, xs, ys, net=net)
    assert_tree_close(actual, reference_ggn_product(net, params, v, xs, ys), rtol=1e-10)


@pytest.mark.parametrize("combo", COMBOS)
def test_hessian_vector_product_matches_jvp_of_jax_grad(combo):
    net = network(combo)
    params, xs, ys = random_problem(20, batch=4, sizes=SIZES)
    v = tangent(params, 21)

    def loss(p):
        return fbp.loss(p, xs, ys, net=net)

    expected = jax.jvp(jax.grad(loss), (params,), (v,))[1]
    actual = hessian_vector_product(params, v, xs, ys, net=net)
    assert_tree_close(actual, expected, rtol=1e-10)


@pytest.mark.parametrize("combo", COMBOS)
def test_diag_hessian_matches_jax_hessian(combo):
    net = network(combo)
    params, xs, ys = random_problem(30, batch=4, sizes=[3, 5, 4, 4, 3])  # 3 hidden layers
    flat, unravel = ravel_pytree(params)
    hessian = jax.hessian(lambda f: fbp.loss(unravel(f), xs, ys, net=net))(flat)
    expected = unravel(jnp.diag(hessian))
    assert_tree_close(diag_hessian(params, xs, ys, net=net), expected, rtol=1e-10)


@pytest.mark.parametrize("combo", COMBOS)
def test_diagonal_of_ggn_products_is_diag_ggn(combo):
    net = network(combo)
    params, xs, ys = random_problem(40, batch=3, sizes=[3, 4, 2])
    flat, unravel = ravel_pytree(params)

    def column(e):
        return ravel_pytree(ggn_vector_product(params, unravel(e), xs, ys, net=net))[0]

    matrix = jax.vmap(column)(jnp.eye(flat.size))
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)  # G is symmetric
    expected = curvature.diag_ggn(params, xs, ys, net=net)
    assert_tree_close(unravel(jnp.diag(matrix)), expected, rtol=1e-10)


def test_hessian_of_a_single_layer_is_the_ggn():
    """Without a hidden layer z^L is linear in the params, and log-likelihood is closed in
    z^L: H = G, so H v = G v (a hidden layer adds terms between layers, even for relu)."""
    net = fbp.Network("relu", "softmax", "log_likelihood")
    params, xs, ys = random_problem(50, batch=5, sizes=[3, 4])
    v = tangent(params, 51)
    assert_tree_close(
        hessian_vector_product(params, v, xs, ys, net=net),
        ggn_vector_product(params, v, xs, ys, net=net),
        rtol=1e-10,
    )


def test_integer_labels_stand_for_one_hot_targets():
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    params, xs, _ = random_problem(60, batch=4, sizes=[3, 4, 3])
    labels = jnp.array([0, 2, 1, 2])
    one_hot = jax.nn.one_hot(labels, 3, dtype=xs.dtype)
    v = tangent(params, 61)
    for fn in (ggn_vector_product, hessian_vector_product):
        assert_tree_close(
            fn(params, v, xs, labels, net=net), fn(params, v, xs, one_hot, net=net), rtol=1e-12
        )
    assert_tree_close(
        diag_hessian(params, xs, labels, net=net),
        diag_hessian(params, xs, one_hot, net=net),
        rtol=1e-12,
    )


def test_float32_in_float32_out():
    params, xs, ys = random_problem(70, batch=3, sizes=[3, 4, 2], dtype=np.float32)
    v = jax.tree.map(jnp.ones_like, params)
    for out in (
        ggn_vector_product(params, v, xs, ys),
        hessian_vector_product(params, v, xs, ys),
        diag_hessian(params, xs, ys),
    ):
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(out))


@pytest.mark.slow
def test_under_the_callers_jit_and_vmap():
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    params, xs, ys = random_problem(80, batch=4, sizes=[3, 4, 3])
    vs = [tangent(params, seed) for seed in (81, 82, 83)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *vs)
    for fn in (ggn_vector_product, hessian_vector_product):
        one_by_one = [fn(params, v, xs, ys, net=net) for v in vs]
        expected = jax.tree.map(lambda *leaves: jnp.stack(leaves), *one_by_one)
        batched = jax.jit(jax.vmap(lambda v, fn=fn: fn(params, v, xs, ys, net=net)))(stacked)
        assert_tree_close(batched, expected, rtol=1e-12)
    # diag_hessian vmapped over mini-batches, under jit
    groups = xs.reshape(2, 2, 3), ys.reshape(2, 2, 3)
    batched = jax.jit(jax.vmap(lambda x, y: diag_hessian(params, x, y, net=net)))(*groups)
    for i in range(2):
        assert_tree_close(
            jax.tree.map(lambda leaf, i=i: leaf[i], batched),
            diag_hessian(params, groups[0][i], groups[1][i], net=net),
            rtol=1e-12,
        )


def test_an_activations_own_second_derivative_is_used():
    """softplus with sigma'' given: diag_hessian equals jax.hessian's diagonal; with a wrong
    sigma'' it does not (the given one is used, not JAX's)."""
    params, xs, ys = random_problem(31, batch=4, sizes=[3, 5, 4, 3])
    flat, unravel = ravel_pytree(params)

    def softplus(second):
        return fbp.Activation(
            jax.nn.softplus, jax.nn.sigmoid, name="softplus", second_derivative=second
        )

    exact = softplus(lambda z: jax.nn.sigmoid(z) * (1 - jax.nn.sigmoid(z)))
    net = fbp.Network(activation=exact, output_activation="sigmoid", cost="quadratic")
    hessian = jax.hessian(lambda f: fbp.loss(unravel(f), xs, ys, net=net))(flat)
    got = diag_hessian(params, xs, ys, net=net)
    assert_tree_close(got, unravel(jnp.diag(hessian)), rtol=1e-10)
    wrong = fbp.Network(
        activation=softplus(jnp.zeros_like), output_activation="sigmoid", cost="quadratic"
    )
    assert not np.allclose(diag_hessian(params, xs, ys, net=wrong)[0].w, got[0].w)
