"""User-defined costs and activations whose derivatives reduce over the neurons of one
example (a norm, a log-sum-exp, a normalising activation with its own VJP), through
every public gradient path, against jax.grad of a loss written here, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import LOGSUMEXP_COST, NORM_COST, NORMALISE, assert_tree_close, random_problem

import functional_bp as fbp

# (hidden, output, cost) as passed to the library, and sigma/C as the reference uses them.
CASES = {
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


def _problem(name):
    (hidden, output, cost), (hidden_fn, output_fn) = CASES[name]
    params, xs, ys = random_problem(sorted(CASES).index(name), sizes=[5, 7, 6, 4], batch=6)
    opts = dict(activation=hidden, output_activation=output, cost=cost)

    def reference(p, x, y):
        a = x
        for l, layer in enumerate(p, start=1):
            a = (output_fn if l == len(p) else hidden_fn)(layer.w @ a + layer.b)
        return cost.fn(a, y)

    return params, xs, ys, opts, reference


def _reference_grads(params, xs, ys, reference):
    mean_loss = lambda p: jnp.mean(jax.vmap(reference, in_axes=(None, 0, 0))(p, xs, ys))
    per_example = jax.vmap(jax.grad(reference), in_axes=(None, 0, 0))(params, xs, ys)
    return mean_loss(params), jax.grad(mean_loss)(params), per_example


def _step(params, grads):
    return jax.tree.map(lambda p, g: p - ETA * g, params, grads)


def _every_path(params, xs, ys, opts, clip):
    """Every public gradient path on one problem, in one jax.jit: one compilation."""
    batch, key, sgd = xs.shape[0], jax.random.key(1), optax.sgd(ETA)
    whole = dict(batch_size=batch, **opts)  # one mini-batch: the shuffle does not matter
    mesh = fbp.data_mesh(1)
    value, grads = fbp.value_and_grad(params, xs, ys, **opts)
    return dict(
        grad=fbp.grad(params, xs, ys, **opts),
        value_and_grad=grads,
        value=value,
        loss=fbp.loss(params, xs, ys, **opts),
        per_example=fbp.per_example_grads(params, xs, ys, **opts),
        first=fbp.backprop(params, xs[0], ys[0], **opts),
        last=fbp.backprop(params, xs[-1], ys[-1], **opts),
        sgd_step=fbp.sgd_step(params, xs, ys, ETA, **opts),
        train_epoch=fbp.train_epoch(jax.random.key(0), params, xs, ys, ETA, **whole),
        optax_step=fbp.optax_step(sgd, params, sgd.init(params), xs, ys, **opts)[0],
        optax_epoch=fbp.optax_epoch(key, sgd, params, sgd.init(params), xs, ys, **whole)[0],
        data_parallel_grad=fbp.data_parallel_grad(mesh, params, xs, ys, **opts),
        data_parallel_step=fbp.data_parallel_sgd_step(mesh, params, xs, ys, ETA, **opts),
        norms=fbp.per_example_grad_norms(params, xs, ys, **opts),
        clipped=fbp.clipped_grad(params, xs, ys, clip, **opts),
        private=fbp.private_grad(key, params, xs, ys, clip, 0.0, **opts),
        dp_step=fbp.dp_sgd_step(key, params, xs, ys, ETA, clip, 0.0, **opts),
        layer_norms=fbp.layer_gradient_norms(params, xs, ys, **opts),
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_gradient_path_equals_jax_grad_of_the_users_loss(name):
    params, xs, ys, opts, reference = _problem(name)
    value, expected, per_example = _reference_grads(params, xs, ys, reference)
    batch = xs.shape[0]
    flat = [np.asarray(leaf).reshape(batch, -1) for leaf in jax.tree.leaves(per_example)]
    per_leaf = [np.linalg.norm(f, axis=1) for f in flat]
    total = np.sqrt(sum(n**2 for n in per_leaf))
    clip = float(np.median(total))
    got = jax.jit(lambda p, x, y: _every_path(p, x, y, opts, clip))(params, xs, ys)

    for path in ("grad", "value_and_grad", "data_parallel_grad"):
        assert_tree_close(got[path], expected, 1e-10)
    for path in ("value", "loss"):
        np.testing.assert_allclose(got[path], value, rtol=1e-12)
    np.testing.assert_allclose(fbp.total_cost(params, xs, ys, **opts), value, rtol=1e-12)
    assert_tree_close(got["per_example"], per_example, 1e-10)
    # The one-example path agrees with the batched one.
    assert_tree_close(got["first"], jax.tree.map(lambda g: g[0], per_example), 1e-10)
    assert_tree_close(got["last"], jax.tree.map(lambda g: g[-1], per_example), 1e-10)
    assert fbp.check_gradients(params, xs, ys, **opts, fd_entries=4).ok

    # Training: every step is params - eta * the reference gradient.
    for path in ("sgd_step", "train_epoch", "optax_step", "optax_epoch", "data_parallel_step"):
        assert_tree_close(got[path], _step(params, expected), 1e-10)

    # Norms, clipping and DP from the error terms, against materialised gradients.
    np.testing.assert_allclose(got["norms"].total, total, rtol=1e-10)
    np.testing.assert_allclose(jax.tree.leaves(got["norms"].layers), per_leaf, rtol=1e-10)
    weights = np.minimum(1, clip / total)
    clipped = jax.tree.map(
        lambda g: np.tensordot(weights, np.asarray(g), axes=1) / batch, per_example
    )
    assert_tree_close(got["clipped"], clipped, 1e-10)
    assert_tree_close(got["private"], clipped, 1e-10)
    assert_tree_close(got["dp_step"], _step(params, clipped), 1e-10)
    np.testing.assert_allclose(
        got["layer_norms"].weight_grad, [np.linalg.norm(g.w) for g in expected], rtol=1e-10
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_mlp_runs_the_users_backward_pass(name):
    params, xs, ys, opts, reference = _problem(name)
    cost = opts.pop("cost")

    def user_loss(p, x):
        return jnp.mean(jax.vmap(cost.fn)(fbp.mlp(p, x, **opts), ys))

    expected = jax.grad(
        lambda p, x: jnp.mean(jax.vmap(reference, in_axes=(None, 0, 0))(p, x, ys)), argnums=(0, 1)
    )
    assert_tree_close(jax.grad(user_loss, argnums=(0, 1))(params, xs), expected(params, xs), 1e-10)
