"""Every gradient path against jax.grad, on many random architectures."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    ACTIVATION_NAMES,
    COST_NAMES,
    assert_tree_close,
    output_activation_for,
    random_problem,
)

import functional_bp as fbp

COMBOS = list(itertools.product(ACTIVATION_NAMES, COST_NAMES))
SEEDS_PER_COMBO = 4


def _options(activation, cost):
    return dict(
        activation=activation,
        output_activation=output_activation_for(activation, cost),
        cost=cost,
    )


def _autodiff_example_grad(params, x, y, opts):
    """jax.grad of the cost of one example (a batch of one, whose mean is that cost)."""
    return jax.grad(lambda p: fbp.loss(p, x[None], y[None], **opts))(params)


def _autodiff_per_example(params, xs, ys, opts):
    return jax.jit(jax.vmap(lambda x, y: _autodiff_example_grad(params, x, y, opts)))(xs, ys)


@pytest.mark.parametrize("activation,cost", COMBOS)
def test_float64_every_path_equals_jax_grad(activation, cost):
    opts = _options(activation, cost)
    for seed in range(SEEDS_PER_COMBO):
        params, xs, ys = random_problem(seed + 100 * COMBOS.index((activation, cost)))
        autodiff = jax.jit(jax.grad(lambda p: fbp.loss(p, xs, ys, **opts)))(params)

        assert_tree_close(fbp.grad(params, xs, ys, **opts), autodiff, 1e-10)
        value, grads = fbp.value_and_grad(params, xs, ys, **opts)
        assert_tree_close(grads, autodiff, 1e-10)
        np.testing.assert_allclose(value, fbp.loss(params, xs, ys, **opts), rtol=1e-12)

        per_example = fbp.per_example_grads(params, xs, ys, **opts)
        assert jax.tree.structure(per_example) == jax.tree.structure(params)
        for g, p in zip(jax.tree.leaves(per_example), jax.tree.leaves(params)):
            assert g.shape == (xs.shape[0],) + p.shape
        mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example)
        assert_tree_close(mean, fbp.grad(params, xs, ys, **opts), 1e-10)

        expected = _autodiff_per_example(params, xs, ys, opts)
        assert_tree_close(per_example, expected, 1e-10)
        assert_tree_close(
            fbp.backprop(params, xs[0], ys[0], **opts),
            jax.tree.map(lambda g: g[0], expected),
            1e-10,
        )


@pytest.mark.parametrize("activation,cost", COMBOS)
def test_float32_equals_jax_grad_at_dtype_tolerance(activation, cost):
    opts = _options(activation, cost)
    rtol = fbp.gradcheck.tolerances(np.float32)[0]
    for seed in range(2):
        params, xs, ys = random_problem(seed, dtype=np.float32)
        assert params[0].w.dtype == jnp.float32
        autodiff = jax.jit(jax.grad(lambda p: fbp.loss(p, xs, ys, **opts)))(params)
        grads = fbp.grad(params, xs, ys, **opts)
        assert grads[0].w.dtype == jnp.float32
        assert_tree_close(grads, autodiff, rtol)
        expected = _autodiff_example_grad(params, xs[0], ys[0], opts)
        assert_tree_close(fbp.backprop(params, xs[0], ys[0], **opts), expected, rtol)


@pytest.mark.parametrize("activation,cost", COMBOS)
def test_finite_differences_agree(activation, cost):
    """Chapter 10 eq 78, centrally: the check passes at rtol 1e-6 in float64."""
    opts = _options(activation, cost)
    for seed in range(2):
        params, xs, ys = random_problem(seed + 7 + 100 * COMBOS.index((activation, cost)))
        result = fbp.check_gradients(params, xs, ys, **opts, fd_entries=8)
        assert result.rtol_fd == 1e-6 and result.rtol_autodiff == 1e-10
        assert result.ok, str(result)


def test_without_jit_equals_jitted():
    params, xs, ys = random_problem(3, sizes=[6, 5, 4, 3])
    jitted = fbp.grad(params, xs, ys)
    with jax.disable_jit():
        eager = fbp.grad(params, xs, ys)
        eager_one = fbp.backprop(params, xs[0], ys[0])
    assert_tree_close(eager, jitted, 1e-12)
    assert_tree_close(eager_one, fbp.backprop(params, xs[0], ys[0]), 1e-12)


def test_inside_callers_jit_and_vmap():
    params, xs, ys = random_problem(4, sizes=[5, 7, 3], batch=6)

    @jax.jit
    def user_step(p, x, y):
        grads = fbp.grad(p, x, y, activation="tanh")
        return jax.tree.map(lambda w, g: w - 0.1 * g, p, grads)

    stepped = user_step(params, xs, ys)
    expected_grads = jax.grad(lambda p: fbp.loss(p, xs, ys, activation="tanh"))(params)
    assert_tree_close(
        stepped, jax.tree.map(lambda w, g: w - 0.1 * g, params, expected_grads), 1e-10
    )

    vmapped = jax.jit(jax.vmap(lambda x, y: fbp.backprop(params, x, y)))(xs, ys)
    assert_tree_close(vmapped, fbp.per_example_grads(params, xs, ys), 1e-12)


def test_custom_activation_and_cost():
    softplus = fbp.Activation(jax.nn.softplus, jax.nn.sigmoid, name="softplus")
    # A Huber-like cost with its own derivative with respect to a.
    smooth_l1 = fbp.Cost(
        lambda a, y: jnp.sum(jnp.sqrt(1 + (a - y) ** 2) - 1),
        lambda a, y: (a - y) / jnp.sqrt(1 + (a - y) ** 2),
    )
    params, xs, ys = random_problem(5, sizes=[4, 6, 6, 2])
    opts = dict(activation=softplus, cost=smooth_l1)
    autodiff = jax.grad(lambda p: fbp.loss(p, xs, ys, **opts))(params)
    assert_tree_close(fbp.grad(params, xs, ys, **opts), autodiff, 1e-10)


def test_error_terms_are_dC_dz():
    """delta^l = dC/dz^l: compared with jax.grad with respect to a shift of z^l."""
    params, xs, ys = random_problem(6, sizes=[3, 5, 4, 2])
    x, y = xs[0], ys[0]
    deltas = fbp.error_terms(params, x, y, activation="tanh")
    assert [d.shape for d in deltas] == [(5,), (4,), (2,)]

    def cost_with_shifts(shifts):
        a = x
        for layer, shift in zip(params, shifts):
            z = layer.w @ a + layer.b + shift
            a = jnp.tanh(z)
        return 0.5 * jnp.sum((a - y) ** 2)

    expected = jax.grad(cost_with_shifts)([jnp.zeros(n) for n in (5, 4, 2)])
    assert_tree_close(deltas, expected, 1e-10)


def test_feedforward_and_forward_cache():
    params, xs, _ = random_problem(8, sizes=[3, 4, 2], batch=5)
    a = xs
    for layer in params:
        a = jax.nn.sigmoid(a @ layer.w.T + layer.b[None, :])
    np.testing.assert_allclose(fbp.feedforward(params, xs), a, rtol=1e-12)
    np.testing.assert_allclose(fbp.feedforward(params, xs[0]), a[0], rtol=1e-12)
    out, cache = fbp.forward(params, xs)
    assert [z.shape for z in cache.zs] == [(5, 4), (5, 2)]
    assert [act.shape for act in cache.activations] == [(5, 3), (5, 4), (5, 2)]
    np.testing.assert_allclose(cache.activations[0], xs)
    np.testing.assert_allclose(out, a, rtol=1e-12)
