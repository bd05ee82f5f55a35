"""Every gradient path against jax.grad, on many random architectures, for every
activation and cost (softmax and the user's own objects among them).

Each random problem runs every path inside one `jax.jit` (the public functions are
jitted themselves and inline into it), so a problem costs one compilation, not one per
path.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
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

import functional_bp as fbp
from functional_bp import diagnostics, gradcheck, parallel, per_example, training

SEEDS_PER_COMBO = 3  # 57 random architectures: 17 width-1 chains, 13 of depth 1


@functools.partial(jax.jit, static_argnames="net")
def every_path(params, xs, ys, net):
    loss = lambda p: fbp.loss(p, xs, ys, net=net)
    one_loss = lambda p, x, y: fbp.loss(p, x[None], y[None], net=net)
    value, grads = fbp.value_and_grad(params, xs, ys, net=net)
    return dict(
        grad=fbp.grad(params, xs, ys, net=net),
        value=value,
        value_and_grad=grads,
        loss=loss(params),
        per_example=per_example.per_example_grads(params, xs, ys, net=net),
        backprop=fbp.backprop(params, xs[0], ys[0], net=net),
        autodiff=jax.grad(loss)(params),
        autodiff_per_example=jax.vmap(jax.grad(one_loss), in_axes=(None, 0, 0))(params, xs, ys),
    )


@pytest.mark.slow
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_float64_every_path_equals_jax_grad(combo):
    for seed in range(SEEDS_PER_COMBO):
        params, xs, ys = random_problem(seed + 100 * COMBOS.index(combo))
        got = every_path(params, xs, ys, network(combo))
        assert_tree_close(got["grad"], got["autodiff"], 1e-10)
        assert_tree_close(got["value_and_grad"], got["autodiff"], 1e-10)
        np.testing.assert_allclose(got["value"], got["loss"], rtol=1e-12)

        per_example_grads = got["per_example"]
        for g, p in zip(jax.tree.leaves(per_example_grads), jax.tree.leaves(params)):
            assert g.shape == (xs.shape[0],) + p.shape
        assert_tree_close(per_example_grads, got["autodiff_per_example"], 1e-10)
        mean = jax.tree.map(lambda g: np.mean(g, axis=0), jax.device_get(per_example_grads))
        assert_tree_close(mean, got["grad"], 1e-10)
        first = jax.tree.map(lambda g: g[0], jax.device_get(got["autodiff_per_example"]))
        assert_tree_close(got["backprop"], first, 1e-10)


@functools.partial(jax.jit, static_argnames="net")
def float32_paths(params, xs, ys, net):
    return dict(
        grad=fbp.grad(params, xs, ys, net=net),
        autodiff=jax.grad(lambda p: fbp.loss(p, xs, ys, net=net))(params),
        backprop=fbp.backprop(params, xs[0], ys[0], net=net),
        autodiff_one=jax.grad(lambda p: fbp.loss(p, xs[:1], ys[:1], net=net))(params),
    )


@pytest.mark.parametrize("combo", combo_params(COMBOS))
def test_float32_equals_jax_grad_at_dtype_tolerance(combo):
    """One random architecture per combo, another for each combo."""
    rtol = gradcheck.tolerances(np.float32)[0]
    params, xs, ys = random_problem(50 + COMBOS.index(combo), dtype=np.float32)
    got = float32_paths(params, xs, ys, network(combo))
    assert got["grad"][0].w.dtype == jnp.float32
    assert_tree_close(got["grad"], got["autodiff"], rtol)
    assert_tree_close(got["backprop"], got["autodiff_one"], rtol)


@pytest.mark.parametrize("combo", combo_params(COMBOS))
def test_finite_differences_agree(combo):
    """Chapter 10 eq 78, centrally: the check passes at rtol 1e-6 in float64."""
    params, xs, ys = random_problem(7 + 100 * COMBOS.index(combo))
    result = fbp.check_gradients(params, xs, ys, net=network(combo), fd_entries=8)
    assert result.rtol_fd == 1e-6 and result.rtol_autodiff == 1e-10
    assert result.ok, str(result)


# The user's own objects, whose derivatives reduce over the neurons of one example (a
# norm, a log-sum-exp, a normalising activation with its own VJP), through every public
# gradient path, against jax.grad of a loss written here.

# (hidden, output, cost) as passed to the library, and sigma as the reference uses them.
USER_CASES = {
    "tanh-sigmoid-norm": (("tanh", "sigmoid", NORM_COST), (jnp.tanh, jax.nn.sigmoid)),
    "normalise-identity-logsumexp": (
        (NORMALISE, "identity", LOGSUMEXP_COST),
        (NORMALISE.fn, lambda z: z),
    ),
    "normalise-normalise-norm": ((NORMALISE, NORMALISE, NORM_COST), (NORMALISE.fn, NORMALISE.fn)),
    "sigmoid-softmax-logsumexp": (
        ("sigmoid", "softmax", LOGSUMEXP_COST),
        (jax.nn.sigmoid, jax.nn.softmax),
    ),
}
ETA = 0.7


def _user_problem(name):
    combo, (hidden_fn, output_fn) = USER_CASES[name]
    params, xs, ys = random_problem(sorted(USER_CASES).index(name), sizes=[5, 7, 6, 4], batch=6)
    cost = combo[2]

    def reference(p, x, y):
        a = x
        for l, layer in enumerate(p, start=1):
            a = (output_fn if l == len(p) else hidden_fn)(layer.w @ a + layer.b)
        return cost.fn(a, y)

    return params, xs, ys, network(combo), reference


@functools.partial(jax.jit, static_argnames="reference")
def _reference_grads(params, xs, ys, reference):
    mean_loss = lambda p: jnp.mean(jax.vmap(reference, in_axes=(None, 0, 0))(p, xs, ys))
    per_example_grads = jax.vmap(jax.grad(reference), in_axes=(None, 0, 0))(params, xs, ys)
    return mean_loss(params), jax.grad(mean_loss)(params), per_example_grads


def _step(params, grads):
    return jax.tree.map(lambda p, g: p - ETA * g, params, grads)


def _every_user_path(params, xs, ys, net, clip):
    """Every public gradient path on one problem, in one jax.jit: one compilation."""
    batch, key, sgd = xs.shape[0], jax.random.key(1), optax.sgd(ETA)
    mesh = parallel.data_mesh(1)
    sharded = parallel.ShardedGradient(mesh)
    private = per_example.PrivateGradient(clip, 0.0)
    value, grads = fbp.value_and_grad(params, xs, ys, net=net)
    state = sgd.init(params)
    return dict(
        grad=fbp.grad(params, xs, ys, net=net),
        value_and_grad=grads,
        value=value,
        loss=fbp.loss(params, xs, ys, net=net),
        per_example=per_example.per_example_grads(params, xs, ys, net=net),
        first=fbp.backprop(params, xs[0], ys[0], net=net),
        last=fbp.backprop(params, xs[-1], ys[-1], net=net),
        sgd_step=fbp.sgd_step(params, xs, ys, ETA, net=net),
        # One mini-batch of the whole batch: the shuffle does not matter.
        train_epoch=fbp.train_epoch(
            jax.random.key(0), params, xs, ys, ETA, batch_size=batch, net=net
        ),
        train_step=training.train_step(None, sgd, params, state, xs, ys, net=net)[0],
        epoch=training.epoch(key, sgd, params, state, xs, ys, batch_size=batch, net=net)[0],
        data_parallel_grad=parallel.data_parallel_grad(mesh, params, xs, ys, net=net),
        data_parallel_step=training.train_step(
            None, sgd, params, state, xs, ys, gradient=sharded, net=net
        )[0],
        norms=per_example.per_example_grad_norms(params, xs, ys, net=net),
        clipped=per_example.clipped_grad(params, xs, ys, clip, net=net),
        private=per_example.private_grad(key, params, xs, ys, clip, 0.0, net=net),
        dp_step=training.train_step(key, sgd, params, state, xs, ys, gradient=private, net=net),
        layer_norms=diagnostics.layer_gradient_norms(params, xs, ys, net=net),
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(USER_CASES))
def test_every_gradient_path_equals_jax_grad_of_the_users_loss(name):
    params, xs, ys, net, reference = _user_problem(name)
    value, expected, per_example_grads = _reference_grads(params, xs, ys, reference)
    batch = xs.shape[0]
    flat = [np.asarray(leaf).reshape(batch, -1) for leaf in jax.tree.leaves(per_example_grads)]
    per_leaf = [np.linalg.norm(f, axis=1) for f in flat]
    total = np.sqrt(sum(n**2 for n in per_leaf))
    clip = float(np.median(total))
    got = jax.jit(lambda p, x, y: _every_user_path(p, x, y, net, clip))(params, xs, ys)

    for path in ("grad", "value_and_grad", "data_parallel_grad"):
        assert_tree_close(got[path], expected, 1e-10)
    for path in ("value", "loss"):
        np.testing.assert_allclose(got[path], value, rtol=1e-12)
    np.testing.assert_allclose(diagnostics.total_cost(params, xs, ys, net=net), value, rtol=1e-12)
    assert_tree_close(got["per_example"], per_example_grads, 1e-10)
    # The one-example path agrees with the batched one.
    assert_tree_close(got["first"], jax.tree.map(lambda g: g[0], per_example_grads), 1e-10)
    assert_tree_close(got["last"], jax.tree.map(lambda g: g[-1], per_example_grads), 1e-10)
    assert fbp.check_gradients(params, xs, ys, net=net, fd_entries=4).ok

    # Training: every step is params - eta * the reference gradient.
    for path in ("sgd_step", "train_epoch", "train_step", "epoch", "data_parallel_step"):
        assert_tree_close(got[path], _step(params, expected), 1e-10)

    # Norms, clipping and DP from the error terms, against materialised gradients.
    np.testing.assert_allclose(got["norms"].total, total, rtol=1e-10)
    np.testing.assert_allclose(jax.tree.leaves(got["norms"].layers), per_leaf, rtol=1e-10)
    weights = np.minimum(1, clip / total)
    clipped = jax.tree.map(
        lambda g: np.tensordot(weights, np.asarray(g), axes=1) / batch, per_example_grads
    )
    assert_tree_close(got["clipped"], clipped, 1e-10)
    assert_tree_close(got["private"], clipped, 1e-10)
    assert_tree_close(got["dp_step"][0], _step(params, clipped), 1e-10)
    np.testing.assert_allclose(
        got["layer_norms"].weight_grad, [np.linalg.norm(g.w) for g in expected], rtol=1e-10
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(USER_CASES))
def test_mlp_runs_the_users_backward_pass(name):
    params, xs, ys, net, reference = _user_problem(name)

    def user_loss(p, x):
        return jnp.mean(jax.vmap(net.cost.fn)(fbp.mlp(p, x, net=net), ys))

    expected = jax.grad(
        lambda p, x: jnp.mean(jax.vmap(reference, in_axes=(None, 0, 0))(p, x, ys)), argnums=(0, 1)
    )
    assert_tree_close(jax.grad(user_loss, argnums=(0, 1))(params, xs), expected(params, xs), 1e-10)
