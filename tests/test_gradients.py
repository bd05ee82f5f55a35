"""The book's functions (functional_bp.gradients): forward, mlp and its custom VJP, grad,
value_and_grad, backprop, error_terms; under the caller's transforms, compiled once,
finite at extreme pre-activations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_tree_close, random_problem

import functional_bp as fbp
from functional_bp import per_example


@pytest.mark.slow
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
        net = fbp.Network("tanh", "softmax")

        @self.variant
        def user_step(p, x, y):
            grads = fbp.grad(p, x, y, net=net)
            return jax.tree.map(lambda w, g: w - 0.1 * g, p, grads)

        expected = jax.grad(lambda p: fbp.loss(p, xs, ys, net=net))(params)
        assert_tree_close(
            user_step(params, xs, ys),
            jax.tree.map(lambda w, g: w - 0.1 * g, params, expected),
            1e-10,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_vmap_of_backprop_is_per_example_grads(self):
        params, xs, ys = random_problem(5, sizes=[5, 4, 3], batch=6)
        vmapped = self.variant(jax.vmap(lambda x, y: fbp.backprop(params, x, y)))(xs, ys)
        assert_tree_close(vmapped, per_example.per_example_grads(params, xs, ys), 1e-12)


def test_mlp_and_forward_cache():
    """mlp is network.py's feedforward; forward returns it with the cache."""
    params, xs, _ = random_problem(8, sizes=[3, 4, 2], batch=5)
    a = xs
    for layer in params:
        a = jax.nn.sigmoid(a @ layer.w.T + layer.b[None, :])
    np.testing.assert_allclose(fbp.mlp(params, xs), a, rtol=1e-12)
    np.testing.assert_allclose(fbp.mlp(params, xs[0]), a[0], rtol=1e-12)
    out, cache = fbp.forward(params, xs)
    assert [z.shape for z in cache.zs] == [(5, 4), (5, 2)]
    assert [act.shape for act in cache.activations] == [(5, 3), (5, 4), (5, 2)]
    np.testing.assert_allclose(cache.activations[0], xs)
    np.testing.assert_allclose(out, a, rtol=1e-12)
    one, one_cache = fbp.forward(params, xs[0])
    np.testing.assert_allclose(one, a[0], rtol=1e-12)
    assert [z.shape for z in one_cache.zs] == [(4,), (2,)]


GOOD = [fbp.Layer(jnp.ones(s, jnp.float32), jnp.ones(s[0], jnp.float32)) for s in [(4, 3), (2, 4)]]
X, Y = jnp.ones((5, 3)), jnp.ones((5, 2))


def test_single_example_functions_check_shapes():
    with pytest.raises(ValueError, match=r"x to have shape \(3,\)"):
        fbp.backprop(GOOD, X, Y)
    with pytest.raises(ValueError, match=r"y to have shape \(2,\)"):
        fbp.error_terms(GOOD, X[0], jnp.ones(3))
    with pytest.raises(ValueError, match=r"x to have shape \(3,\) or \(batch, 3\)"):
        fbp.mlp(GOOD, jnp.ones((2, 2, 3)))
    with pytest.raises(ValueError, match=r"x to have shape \(3,\) or \(batch, 3\)"):
        fbp.forward(GOOD, jnp.ones((2, 2, 3)))


def test_second_call_does_not_compile_again():
    params, xs, ys = random_problem(0, sizes=[6, 5, 3], batch=4)
    cross_entropy, tanh = fbp.Network(cost="cross_entropy"), fbp.Network("tanh")
    hot_paths = [
        (fbp.grad, lambda p, x, y: fbp.grad(p, x, y, net=cross_entropy)),
        (fbp.backprop, lambda p, x, y: fbp.backprop(p, x[0], y[0], net=tanh)),
        (per_example.per_example_grads, per_example.per_example_grads),
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


@pytest.mark.slow
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
            net = fbp.Network(activation, out, cost)
            value, grads = fbp.value_and_grad(params, xs, ys, net=net)
            assert np.isfinite(value), (activation, cost)
            assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), (activation, cost)
            assert np.all(np.isfinite(fbp.mlp(params, xs, net=net)))


def test_softmax_log_likelihood_finite_at_1000_in_float32():
    w = jnp.array([[1000.0, 0.0], [0.0, -1000.0], [500.0, 500.0]], jnp.float32)
    params = [fbp.Layer(w, jnp.zeros(3, jnp.float32))]
    xs = jnp.array([[1.0, 1.0], [-1.0, -1.0]], jnp.float32)
    ys = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], jnp.float32)  # the wrong classes
    for output in ("softmax", "sigmoid"):
        net = fbp.Network(output_activation=output, cost="log_likelihood")
        value, grads = fbp.value_and_grad(params, xs, ys, net=net)
        assert np.isfinite(value) and value > 100, output
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), output
        autodiff = jax.grad(lambda p: fbp.loss(p, xs, ys, net=net))(params)
        for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(autodiff)):
            np.testing.assert_allclose(g, a, rtol=1e-5, atol=1e-3)


# mlp: the network as a JAX function whose VJP is the hand-written backward pass.


def _reference_mlp(params, x, activation):
    a = x
    for l, layer in enumerate(params, start=1):
        z = layer.w @ a + layer.b if a.ndim == 1 else a @ layer.w.T + layer.b[None, :]
        a = activation(z) if l < len(params) else jax.nn.sigmoid(z)
    return a


@pytest.mark.slow
def test_custom_vjp_mlp_equals_autodiff_of_the_same_program():
    params, xs, ys = random_problem(40, sizes=[5, 7, 6, 4], batch=6)
    head = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)))

    def program(net):
        def user_loss(p, x):  # another head, a regulariser, a sum with other terms
            out = net(p, x)
            return (
                jnp.sum(jnp.tanh(out @ head) ** 2)
                + 0.01 * sum(jnp.sum(l.w**2) for l in p)
                + jnp.sum(jnp.sin(x))
            )

        return user_loss

    tanh_sigmoid = fbp.Network("tanh", "sigmoid")
    manual = program(lambda p, x: fbp.mlp(p, x, net=tanh_sigmoid))
    reference = program(lambda p, x: _reference_mlp(p, x, jnp.tanh))

    @jax.jit  # the reference: one compilation rather than one per operation
    def references(params, xs):
        return (
            reference(params, xs),
            jax.grad(reference, argnums=(0, 1))(params, xs),
            jax.vmap(jax.grad(reference), in_axes=(None, 0))(params, xs),
        )

    value, expected, expected_per_example = references(params, xs)
    np.testing.assert_allclose(manual(params, xs), value, rtol=1e-12)
    assert_tree_close(jax.grad(manual, argnums=(0, 1))(params, xs), expected, 1e-10)
    assert_tree_close(jax.jit(jax.grad(manual, argnums=(0, 1)))(params, xs), expected, 1e-10)
    per_example_grads = jax.vmap(jax.grad(manual), in_axes=(None, 0))(params, xs)
    assert_tree_close(per_example_grads, expected_per_example, 1e-10)


def test_custom_vjp_runs_the_hand_written_derivative():
    """A deliberately wrong sigma' changes mlp's gradient: jax.grad really runs our VJP."""
    params, xs, _ = random_problem(41, sizes=[3, 4, 2], batch=2)
    wrong = fbp.Activation(jnp.tanh, lambda z: 2.0 * (1 - jnp.tanh(z) ** 2))
    right = fbp.Activation(jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2)

    def grads(act):
        net = fbp.Network(act, "sigmoid")
        return jax.grad(lambda p: jnp.sum(fbp.mlp(p, xs, net=net)))(params)

    assert_tree_close(
        grads(right), jax.grad(lambda p: jnp.sum(_reference_mlp(p, xs, jnp.tanh)))(params), 1e-10
    )
    assert not np.allclose(grads(wrong)[0].w, grads(right)[0].w)


def test_forward_mode_raises_jax_error():
    params, xs, _ = random_problem(42, sizes=[3, 2], batch=2)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(lambda x: fbp.mlp(params, x), (xs,), (jnp.ones_like(xs),))
