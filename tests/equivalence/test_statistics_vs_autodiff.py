"""Gradient statistics and curvature against references written here from
`jax.vmap(jax.grad)`, `jax.jacobian` and `jax.hessian`, in float64 to 1e-10, for every
activation and cost and the user's own objects.

Each problem runs the library and the references inside one `jax.jit`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    COMBOS,
    LOGSUMEXP_COST,
    NORM_COST,
    NORMALISE,
    assert_tree_close,
    combo_id,
    combo_params,
    network,
    random_problem,
)
from jax.flatten_util import ravel_pytree

import functional_bp as fbp
from functional_bp import curvature, statistics

USER_COMBOS = [
    ("tanh", "sigmoid", NORM_COST),
    (NORMALISE, "identity", LOGSUMEXP_COST),
    ("relu", NORMALISE, "quadratic"),
]
ALL_COMBOS = COMBOS + USER_COMBOS
# Depth 1 to 4, a width-1 layer among them.
ARCHITECTURES = [[5, 4, 3], [3, 7, 2], [6, 5, 4, 3], [2, 3, 3, 3, 2], [8, 1, 4], [4, 6]]


def _output_and_cost(net):
    """The GGN's split: (network output, cost of it), in z^L where a closed form exists."""
    form = net.cost.closed_form(net.output_activation)

    def output(params, x):
        cache = fbp.forward(params, x, net=net)[1]
        return cache.zs[-1] if form is not None else cache.activations[-1]

    return output, (net.cost.fn if form is None else form.fn)


def reference_ggn_blocks(params, xs, ys, net):
    """(1/N) sum_i J_i^T H_i J_i over all params, flattened as `ravel_pytree` orders them."""
    output, cost = _output_and_cost(net)
    flat, unravel = ravel_pytree(params)

    def one(x, y):
        jac = jax.jacobian(lambda f: output(unravel(f), x))(flat)
        hess = jax.hessian(cost)(output(params, x), y)
        return jac.T @ hess @ jac

    return jnp.mean(jax.vmap(one)(xs, ys), axis=0), unravel


@functools.partial(jax.jit, static_argnames="net")
def library_and_reference(params, xs, ys, net):
    n = xs.shape[0]
    per_example = jax.vmap(
        jax.grad(lambda p, x, y: fbp.loss(p, x[None], y[None], net=net)), in_axes=(None, 0, 0)
    )(params, xs, ys)
    flat = jax.vmap(lambda g: ravel_pytree(g)[0])(per_example)  # (N, P)
    _, unravel = ravel_pytree(params)
    mean = jnp.mean(flat, axis=0)
    trace = jnp.sum((flat - mean[None]) ** 2) / (n - 1)
    ggn, _ = reference_ggn_blocks(params, xs, ys, net)
    library = dict(
        sgs=statistics.sum_grad_squared(params, xs, ys, net=net),
        var=statistics.grad_variance(params, xs, ys, net=net),
        dot=statistics.batch_dot(params, xs, ys, net=net),
        noise=statistics.gradient_noise_scale(params, xs, ys, net=net)[1:],
        ggn=curvature.diag_ggn(params, xs, ys, net=net),
    )
    grad_norm_sq = jnp.sum(mean**2) - trace / n
    reference = dict(
        sgs=unravel(jnp.sum(flat**2, axis=0)),
        var=unravel(jnp.var(flat, axis=0)),
        dot=flat @ flat.T,
        noise=(trace, grad_norm_sq),
        ggn=unravel(jnp.diag(ggn)),
    )
    return library, reference


@pytest.mark.parametrize("combo", combo_params(ALL_COMBOS))
def test_float64_statistics_and_diag_ggn_equal_references(combo):
    seed = ALL_COMBOS.index(combo)
    sizes = ARCHITECTURES[seed % len(ARCHITECTURES)]
    params, xs, ys = random_problem(100 + seed, batch=int(3 + seed % 5), sizes=sizes)
    library, reference = library_and_reference(params, xs, ys, network(combo))
    assert_tree_close(library, reference, rtol=1e-10)


@pytest.mark.slow
def test_float32_statistics_at_dtype_tolerance():
    params, xs, ys = random_problem(500, batch=8, sizes=[6, 5, 4])
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    exact, _ = library_and_reference(params, xs, ys, net)
    low = jax.tree.map(lambda a: a.astype(jnp.float32), (params, xs, ys))
    fast, _ = library_and_reference(*low, net)
    fast = {k: v for k, v in fast.items() if k != "noise"}  # a ratio of differences
    exact = jax.tree.map(
        lambda a: a.astype(jnp.float32), {k: v for k, v in exact.items() if k != "noise"}
    )
    assert_tree_close(fast, exact, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("combo", ALL_COMBOS[::3], ids=combo_id)
def test_kronecker_factors_are_the_ggn_block_of_one_example(combo):
    """kron(G, A) with params ordered as the row-major [w | b] of each layer."""
    params, xs, ys = random_problem(200 + ALL_COMBOS.index(combo), batch=1, sizes=[4, 5, 3, 2])
    net = network(combo)
    factors = curvature.kfac_factors(params, xs, ys, net=net)
    output, cost = _output_and_cost(net)
    x, y = xs[0], ys[0]
    hess = jax.hessian(cost)(output(params, x), y)
    for l, (layer, factor) in enumerate(zip(params, factors)):

        def out_of_augmented(wb, l=l):
            layer_l = fbp.Layer(wb[:, :-1], wb[:, -1])
            return output([*params[:l], layer_l, *params[l + 1 :]], x)

        augmented = jnp.concatenate([layer.w, layer.b[:, None]], axis=1)
        jac = jax.jacobian(out_of_augmented)(augmented).reshape(hess.shape[0], -1)
        np.testing.assert_allclose(
            np.kron(factor.G, factor.A), jac.T @ hess @ jac, rtol=1e-10, atol=1e-12
        )
