"""Per-example curvature (functional_bp.curvature's batch_diag_ggn, batch_diag_ggn_mc),
sampled Kronecker factors (kfac_factors_mc) and per-layer Gram matrices
(statistics.batch_dot(per_layer=True)), against jax.jacobian, jax.hessian and
jax.vmap(jax.grad) in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NORM_COST, assert_tree_close, combo_params, network, random_problem

import functional_bp as fbp
from functional_bp import curvature, statistics


def _cross_entropy(z, y):
    return -jnp.sum(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z))


# combo -> (hidden activation, the output whose Jacobian J is taken from z^L, the cost
# in that output): H in z^L where the cost has a closed form there, else in a^L.
REFERENCES = {
    ("tanh", "softmax", "log_likelihood"): (
        jnp.tanh,
        lambda z: z,
        lambda z, y: -jnp.sum(y * jax.nn.log_softmax(z)),
    ),
    ("relu", "sigmoid", "cross_entropy"): (jax.nn.relu, lambda z: z, _cross_entropy),
    ("sigmoid", None, "quadratic"): (
        jax.nn.sigmoid,
        jax.nn.sigmoid,
        lambda a, y: 0.5 * jnp.sum((a - y) ** 2),
    ),
}
COMBOS = list(REFERENCES)


def one_example_ggn_diagonal(combo, params, x, y):
    """diag(J^T H J) of one example, per layer, from jax.jacobian and jax.hessian."""
    hidden, output, cost = REFERENCES[combo]

    def out(p):
        a = x
        for layer in p[:-1]:
            a = hidden(layer.w @ a + layer.b)
        return output(p[-1].w @ a + p[-1].b)

    jacobian = jax.jacobian(out)(params)  # leaves (n_L, *leaf shape)
    hessian = jax.hessian(cost)(out(params), y)
    return jax.tree.map(lambda j: jnp.einsum("k...,kl,l...->...", j, hessian, j), jacobian)


def reference_batch_diag_ggn(combo, params, xs, ys):
    one = lambda x, y: one_example_ggn_diagonal(combo, params, x, y)  # noqa: E731
    return jax.vmap(one)(jnp.asarray(xs), jnp.asarray(ys))


def problem(seed, combo, batch=5, sizes=(3, 5, 4, 3)):
    params, xs, ys = random_problem(seed, batch=batch, sizes=list(sizes))
    if combo[2] == "log_likelihood":  # one-hot: the sampler of log-likelihood assumes it
        ys = np.eye(sizes[-1])[np.arange(batch) % sizes[-1]]
    return params, xs, ys


@pytest.mark.parametrize("combo", combo_params(COMBOS, quick=COMBOS))
def test_batch_diag_ggn_is_every_examples_ggn_diagonal(combo):
    params, xs, ys = problem(900, combo)
    net = network(combo)
    batch = curvature.batch_diag_ggn(params, xs, ys, net=net)
    assert_tree_close(batch, reference_batch_diag_ggn(combo, params, xs, ys), rtol=1e-10)
    mean = jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), batch)
    assert_tree_close(mean, curvature.diag_ggn(params, xs, ys, net=net), rtol=1e-12)


def test_batch_diag_ggn_takes_integer_labels():
    combo = ("tanh", "softmax", "log_likelihood")
    params, xs, ys = problem(901, combo)
    labels = jnp.argmax(jnp.asarray(ys), axis=1)
    net = network(combo)
    assert_tree_close(
        curvature.batch_diag_ggn(params, xs, labels, net=net),
        curvature.batch_diag_ggn(params, xs, ys, net=net),
        rtol=1e-12,
    )


@pytest.mark.parametrize("combo", combo_params(COMBOS, quick=COMBOS))
def test_batch_diag_ggn_mc_converges_and_is_deterministic(combo):
    params, xs, ys = problem(902, combo, batch=4, sizes=(3, 4, 3))
    net = network(combo)
    exact = curvature.batch_diag_ggn(params, xs, ys, net=net)
    key = jax.random.key(3)
    many = curvature.batch_diag_ggn_mc(key, params, xs, ys, samples=20_000, net=net)
    # Every example's estimate (its own 20,000 samples), to 8% of the leaf's largest entry:
    # at most ~2% is seen, and the key is fixed.
    assert_tree_close(many, exact, rtol=0.08)
    one = curvature.batch_diag_ggn_mc(key, params, xs, ys, net=net)
    again = curvature.batch_diag_ggn_mc(key, params, xs, ys, net=net)
    assert_tree_close(one, again, rtol=0.0)
    other = curvature.batch_diag_ggn_mc(jax.random.key(4), params, xs, ys, net=net)
    assert not np.allclose(one[0].w, other[0].w)
    # The same samples, averaged over the batch: diag_ggn_mc.
    mean = jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), one)
    assert_tree_close(mean, curvature.diag_ggn_mc(key, params, xs, ys, net=net), rtol=1e-12)


@pytest.mark.parametrize("combo", combo_params(COMBOS, quick=COMBOS))
def test_kfac_factors_mc_converges_to_kfac_factors(combo):
    params, xs, ys = problem(903, combo, batch=4, sizes=(3, 4, 3))
    net = network(combo)
    exact = curvature.kfac_factors(params, xs, ys, net=net)
    key = jax.random.key(5)
    many = curvature.kfac_factors_mc(key, params, xs, ys, samples=20_000, net=net)
    for m, e in zip(many, exact):
        assert_tree_close(m.A, e.A, rtol=1e-12)  # A is exact
        assert_tree_close(m.G, e.G, rtol=0.08)  # ~2% seen, the key fixed
    one = curvature.kfac_factors_mc(key, params, xs, ys, net=net)
    assert_tree_close(one, curvature.kfac_factors_mc(key, params, xs, ys, net=net), rtol=0.0)
    other = curvature.kfac_factors_mc(jax.random.key(6), params, xs, ys, net=net)
    assert not np.allclose(one[0].G, other[0].G)


def test_kfac_factors_mc_of_one_sample_is_its_outer_product():
    """With one example and one sample, G is g g^T with g the sampled error backpropagated:
    rank one, and its diagonal is the MC diagonal's bias entry."""
    combo = ("relu", "sigmoid", "cross_entropy")
    params, xs, ys = problem(904, combo, batch=1)
    net = network(combo)
    key = jax.random.key(7)
    factors = curvature.kfac_factors_mc(key, params, xs, ys, net=net)
    diagonal = curvature.batch_diag_ggn_mc(key, params, xs, ys, net=net)
    for f, d in zip(factors, diagonal):
        assert_tree_close(jnp.diag(f.G), d.b[0], rtol=1e-12)
        assert np.linalg.matrix_rank(np.asarray(f.G), tol=1e-10) <= 1


@pytest.mark.parametrize("fn", [curvature.batch_diag_ggn_mc, curvature.kfac_factors_mc])
def test_sampled_curvature_without_a_sampler_says_so(fn):
    params, xs, ys = random_problem(905, batch=3, sizes=[3, 2])
    with pytest.raises(ValueError, match=f"{fn.__name__} needs targets sampled"):
        fn(jax.random.key(0), params, xs, ys, net=fbp.Network(cost=NORM_COST))


@pytest.mark.parametrize("combo", combo_params(COMBOS, quick=COMBOS))
def test_per_layer_gram_matrices(combo):
    params, xs, ys = problem(906, combo)
    net = network(combo)
    grams = statistics.batch_dot(params, xs, ys, per_layer=True, net=net)
    per_example = jax.vmap(
        jax.grad(lambda p, x, y: fbp.loss(p, x[None], y[None], net=net)), in_axes=(None, 0, 0)
    )(params, jnp.asarray(xs), jnp.asarray(ys))
    n = xs.shape[0]
    expected = []
    for layer in per_example:
        flat = jnp.concatenate([layer.w.reshape(n, -1), layer.b.reshape(n, -1)], axis=1)
        expected.append(flat @ flat.T)
    assert_tree_close(grams, jnp.stack(expected), rtol=1e-10)
    assert grams.shape == (len(params), n, n)
    total = statistics.batch_dot(params, xs, ys, net=net)
    assert_tree_close(jnp.sum(grams, axis=0), total, rtol=1e-12)
    assert_tree_close(statistics.batch_dot(params, xs, ys, per_layer=False, net=net), total, 0.0)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_comes_back_in_the_input_dtype(dtype):
    combo = ("tanh", "softmax", "log_likelihood")
    params, xs, ys = problem(907, combo)
    net = network(combo)
    half = jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), (params, xs, ys))
    single = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), half)
    key = jax.random.key(8)
    results = {
        "batch_diag_ggn": lambda p, x, y: curvature.batch_diag_ggn(p, x, y, net=net),
        "batch_diag_ggn_mc": lambda p, x, y: curvature.batch_diag_ggn_mc(key, p, x, y, net=net),
        "kfac_factors_mc": lambda p, x, y: curvature.kfac_factors_mc(key, p, x, y, net=net),
        "batch_dot": lambda p, x, y: statistics.batch_dot(p, x, y, per_layer=True, net=net),
    }
    for name, fn in results.items():
        out, reference = fn(*half), fn(*single)
        assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(out)), name
        expected = jax.tree.map(lambda leaf: leaf.astype(dtype), reference)
        # Computed in float32 from the same (half) inputs: only the final rounding differs.
        assert_tree_close(out, expected, rtol=0.0, atol=0.0)
