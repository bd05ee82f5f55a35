"""Every gradient path against jax.grad, on many random architectures.

Each random problem runs every path inside one `jax.jit` (the public functions are
jitted themselves and inline into it), so a problem costs one compilation, not one per
path.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import COMBOS, assert_tree_close, combo_id, options, random_problem

import functional_bp as fbp

SEEDS_PER_COMBO = 4


@functools.partial(jax.jit, static_argnames="combo")
def every_path(params, xs, ys, combo):
    opts = options(combo)
    loss = lambda p: fbp.loss(p, xs, ys, **opts)
    one_loss = lambda p, x, y: fbp.loss(p, x[None], y[None], **opts)
    value, grads = fbp.value_and_grad(params, xs, ys, **opts)
    return dict(
        grad=fbp.grad(params, xs, ys, **opts),
        value=value,
        value_and_grad=grads,
        loss=loss(params),
        per_example=fbp.per_example_grads(params, xs, ys, **opts),
        backprop=fbp.backprop(params, xs[0], ys[0], **opts),
        autodiff=jax.grad(loss)(params),
        autodiff_per_example=jax.vmap(jax.grad(one_loss), in_axes=(None, 0, 0))(params, xs, ys),
    )


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_float64_every_path_equals_jax_grad(combo):
    for seed in range(SEEDS_PER_COMBO):
        params, xs, ys = random_problem(seed + 100 * COMBOS.index(combo))
        got = every_path(params, xs, ys, combo)
        assert_tree_close(got["grad"], got["autodiff"], 1e-10)
        assert_tree_close(got["value_and_grad"], got["autodiff"], 1e-10)
        np.testing.assert_allclose(got["value"], got["loss"], rtol=1e-12)

        per_example = got["per_example"]
        for g, p in zip(jax.tree.leaves(per_example), jax.tree.leaves(params)):
            assert g.shape == (xs.shape[0],) + p.shape
        assert_tree_close(per_example, got["autodiff_per_example"], 1e-10)
        mean = jax.tree.map(lambda g: np.mean(g, axis=0), jax.device_get(per_example))
        assert_tree_close(mean, got["grad"], 1e-10)
        first = jax.tree.map(lambda g: g[0], jax.device_get(got["autodiff_per_example"]))
        assert_tree_close(got["backprop"], first, 1e-10)


@functools.partial(jax.jit, static_argnames="combo")
def float32_paths(params, xs, ys, combo):
    opts = options(combo)
    return dict(
        grad=fbp.grad(params, xs, ys, **opts),
        autodiff=jax.grad(lambda p: fbp.loss(p, xs, ys, **opts))(params),
        backprop=fbp.backprop(params, xs[0], ys[0], **opts),
        autodiff_one=jax.grad(lambda p: fbp.loss(p, xs[:1], ys[:1], **opts))(params),
    )


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_float32_equals_jax_grad_at_dtype_tolerance(combo):
    rtol = fbp.gradcheck.tolerances(np.float32)[0]
    for seed in range(2):
        params, xs, ys = random_problem(seed, dtype=np.float32)
        got = float32_paths(params, xs, ys, combo)
        assert got["grad"][0].w.dtype == jnp.float32
        assert_tree_close(got["grad"], got["autodiff"], rtol)
        assert_tree_close(got["backprop"], got["autodiff_one"], rtol)


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_finite_differences_agree(combo):
    """Chapter 10 eq 78, centrally: the check passes at rtol 1e-6 in float64."""
    for seed in range(2):
        params, xs, ys = random_problem(seed + 7 + 100 * COMBOS.index(combo))
        result = fbp.check_gradients(params, xs, ys, **options(combo), fd_entries=8)
        assert result.rtol_fd == 1e-6 and result.rtol_autodiff == 1e-10
        assert result.ok, str(result)


def test_eager_equals_jitted():
    params, xs, ys = random_problem(3, sizes=[6, 5, 4, 3])
    jitted = fbp.grad(params, xs, ys)
    with jax.disable_jit():
        eager = fbp.grad(params, xs, ys)
        eager_one = fbp.backprop(params, xs[0], ys[0])
    assert_tree_close(eager, jitted, 1e-12)
    assert_tree_close(eager_one, fbp.backprop(params, xs[0], ys[0]), 1e-12)


class InsideCallersTransformsTest(chex.TestCase):
    """The public functions inside the caller's jax.jit and without it (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_sgd_step_written_by_the_caller(self):
        params, xs, ys = random_problem(4, sizes=[5, 7, 3], batch=6)

        @self.variant
        def user_step(p, x, y):
            grads = fbp.grad(p, x, y, activation="tanh", output_activation="softmax")
            return jax.tree.map(lambda w, g: w - 0.1 * g, p, grads)

        opts = dict(activation="tanh", output_activation="softmax")
        expected = jax.grad(lambda p: fbp.loss(p, xs, ys, **opts))(params)
        assert_tree_close(
            user_step(params, xs, ys),
            jax.tree.map(lambda w, g: w - 0.1 * g, params, expected),
            1e-10,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_vmap_of_backprop_is_per_example_grads(self):
        params, xs, ys = random_problem(5, sizes=[5, 4, 3], batch=6)
        vmapped = self.variant(jax.vmap(lambda x, y: fbp.backprop(params, x, y)))(xs, ys)
        assert_tree_close(vmapped, fbp.per_example_grads(params, xs, ys), 1e-12)


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


def test_the_three_equations_compose_into_backprop():
    """output_error (eqs 90-91), hidden_error (eq 96) and layer_gradient (eq 99), called
    by hand for one example, give `backprop`."""
    params, xs, ys = random_problem(9, sizes=[4, 6, 5, 3])
    x, y = xs[0], ys[0]
    _, cache = fbp.forward(params, x, activation="tanh", output_activation="softmax")
    delta = fbp.output_error(
        cache.zs[-1], cache.activations[-1], y, output_activation="softmax", cost="log_likelihood"
    )
    deltas = [delta]
    for l in (2, 1):
        delta = fbp.hidden_error(
            params[l].w, delta, cache.zs[l - 1], cache.activations[l], activation="tanh"
        )
        deltas.insert(0, delta)
    by_hand = [fbp.layer_gradient(d, a) for d, a in zip(deltas, cache.activations)]
    opts = dict(activation="tanh", output_activation="softmax", cost="log_likelihood")
    assert_tree_close(by_hand, fbp.backprop(params, x, y, **opts), 1e-12)


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
