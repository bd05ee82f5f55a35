"""Per-example gradients, their norms from the error terms, clipping and DP-SGD
(functional_bp.per_example), as functions and as training gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close, random_problem

import functional_bp as fbp
from functional_bp import per_example, training
from functional_bp.per_example import (
    ClippedGradient,
    PrivateGradient,
    clipped_grad,
    per_example_grad_norms,
    private_grad,
)

CASES = [("sigmoid", "quadratic"), ("tanh", "squared_error"), ("relu", "cross_entropy")]
OUTPUT = {"quadratic": None, "squared_error": "softmax", "cross_entropy": "sigmoid"}


def _network(activation, cost):
    return fbp.Network(activation, OUTPUT[cost], cost)


def _autodiff_per_example(params, xs, ys, net):
    one = lambda p, x, y: fbp.loss(p, x[None], y[None], net=net)
    return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, xs, ys)


def _norms_of(per_example_grads, batch):
    """Per-layer (w, b) norms and the total, from materialised per-example gradients."""
    layers = [
        [jnp.linalg.norm(leaf.reshape(batch, -1), axis=1) for leaf in layer]
        for layer in per_example_grads
    ]
    total = jnp.sqrt(sum(w**2 + b**2 for w, b in layers))
    return layers, total


@functools.partial(jax.jit, static_argnames="net")
def norms_and_references(problems, net):
    """The library's norms, and the norms of materialised per-example gradients (the
    library's and jax.grad's), for each problem, in one program."""
    results = []
    for params, xs, ys in problems:
        got = per_example_grad_norms(params, xs, ys, net=net)
        references = [
            _norms_of(grads, xs.shape[0])
            for grads in (
                per_example.per_example_grads(params, xs, ys, net=net),
                _autodiff_per_example(params, xs, ys, net),
            )
        ]
        results.append((got, references))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("activation,cost", CASES)
def test_per_example_norms_equal_materialised_norms(activation, cost):
    problems = [random_problem(seed + 20) for seed in range(3)]
    results = norms_and_references(problems, _network(activation, cost))
    for (_, xs, _), (got, references) in zip(problems, results):
        assert got.total.shape == (xs.shape[0],)
        for layers, total in references:
            np.testing.assert_allclose(got.total, total, rtol=1e-10, atol=1e-300)
            for layer, (w, b) in zip(got.layers, layers):
                np.testing.assert_allclose(layer.w, w, rtol=1e-10, atol=1e-300)
                np.testing.assert_allclose(layer.b, b, rtol=1e-10, atol=1e-300)


def _clip_materialised(per_example_grads, clip_norm, batch):
    _, total = _norms_of(per_example_grads, batch)
    scale = jnp.minimum(1.0, clip_norm / total)
    return jax.tree.map(
        lambda g: jnp.mean(g * scale.reshape((batch,) + (1,) * (g.ndim - 1)), axis=0),
        per_example_grads,
    )


@pytest.mark.parametrize("activation,cost", CASES)
def test_clipped_grad_equals_clipping_materialised_gradients(activation, cost):
    net = _network(activation, cost)
    params, xs, ys = random_problem(30, sizes=[6, 8, 5, 3], batch=7)
    grads = per_example.per_example_grads(params, xs, ys, net=net)
    norms = per_example_grad_norms(params, xs, ys, net=net).total
    clip_materialised = jax.jit(_clip_materialised, static_argnames="batch")
    for clip_norm in (
        0.5 * float(jnp.min(norms)),
        float(jnp.median(norms)),
        2 * float(jnp.max(norms)),
    ):
        expected = clip_materialised(grads, clip_norm, 7)
        assert_tree_close(clipped_grad(params, xs, ys, clip_norm, net=net), expected, 1e-10)
    # A clip above every norm clips nothing.
    assert_tree_close(
        clipped_grad(params, xs, ys, 2 * float(jnp.max(norms)), net=net),
        fbp.grad(params, xs, ys, net=net),
        1e-10,
    )


@pytest.mark.slow
def test_private_grad_noise_and_the_dp_sgd_step():
    params, xs, ys = random_problem(31, sizes=[40, 50, 3], batch=8)
    key = jax.random.key(5)
    clipped = clipped_grad(params, xs, ys, 0.1)
    assert_tree_close(private_grad(key, params, xs, ys, 0.1, 0.0), clipped, 1e-12)
    noisy = private_grad(key, params, xs, ys, 0.1, 1.5)
    assert_tree_close(noisy, private_grad(key, params, xs, ys, 0.1, 1.5), 0.0)
    noise = np.asarray(noisy[0].w - clipped[0].w).ravel()  # 2,000 draws
    assert noise.std() == pytest.approx(1.5 * 0.1 / 8, rel=0.1)
    assert abs(noise.mean()) < 4 * 1.5 * 0.1 / 8 / np.sqrt(noise.size)

    # DP-SGD: a training step with PrivateGradient draws the same noise from its key.
    optimizer = optax.sgd(0.5)
    stepped, _ = training.train_step(
        key,
        optimizer,
        params,
        optimizer.init(params),
        xs,
        ys,
        gradient=PrivateGradient(0.1, 1.5),
    )
    assert_tree_close(stepped, jax.tree.map(lambda p, g: p - 0.5 * g, params, noisy), 1e-12)
    updates, _ = optimizer.update(noisy, optimizer.init(params), params)  # composes with optax
    assert_tree_close(optax.apply_updates(params, updates), stepped, 1e-12)


def test_clipped_gradient_trains_as_clipped_grad():
    params, xs, ys = random_problem(32, sizes=[5, 4, 3], batch=6)
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    optimizer = optax.sgd(0.3)
    got, _ = training.train_step(
        None,
        optimizer,
        params,
        optimizer.init(params),
        xs,
        ys,
        gradient=ClippedGradient(0.05),
        net=net,
    )
    clipped = clipped_grad(params, xs, ys, 0.05, net=net)
    assert_tree_close(got, jax.tree.map(lambda p, g: p - 0.3 * g, params, clipped), 1e-12)
    assert not np.allclose(clipped[0].w, fbp.grad(params, xs, ys, net=net)[0].w)


def test_private_gradient_needs_a_key():
    params, xs, ys = random_problem(33, sizes=[3, 2], batch=2)
    optimizer = optax.sgd(0.1)
    with pytest.raises(ValueError, match="PrivateGradient draws noise: give the step a jax"):
        training.train_step(
            None,
            optimizer,
            params,
            optimizer.init(params),
            xs,
            ys,
            gradient=PrivateGradient(1.0, 1.0),
        )


# Norms of every factor scaled, so no square overflows or goes NaN.

KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [4, 3, 2], dtype=jnp.float64)
XS = jnp.asarray(np.random.default_rng(0).random((6, 4)))
YS = jnp.asarray(np.eye(2)[[0, 1, 0, 1, 1, 0]])


def test_float16_norms_of_large_activations_do_not_overflow():
    w = jnp.full((1, 3), 1e-4, jnp.float16)
    params = [
        fbp.Layer(jnp.eye(3, dtype=jnp.float16), jnp.zeros(3, jnp.float16)),
        fbp.Layer(w, jnp.zeros(1, jnp.float16)),
    ]
    xs = jnp.full((2, 3), 300.0, jnp.float16)  # identity layer 1: a^1 = 300, sum a^2 > 65504
    ys = jnp.zeros((2, 1), jnp.float16)
    identity = fbp.Network("identity")
    norms = per_example_grad_norms(params, xs, ys, net=identity)
    reference = per_example.per_example_grads(
        jax.tree.map(lambda a: a.astype(jnp.float64), params),
        xs.astype(jnp.float64),
        ys.astype(jnp.float64),
        net=identity,
    )
    expected = np.sqrt(
        sum(np.sum(np.asarray(g).reshape(2, -1) ** 2, axis=1) for g in jax.tree.leaves(reference))
    )
    assert np.all(np.isfinite(np.asarray(norms.total)))
    np.testing.assert_allclose(np.asarray(norms.total, np.float64), expected, rtol=1e-2)
    clipped = clipped_grad(params, xs, ys, 1.0, net=identity)
    assert all(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(clipped[1]))


def test_saturated_float32_sigmoid_network_has_finite_norms():
    params = fbp.init_mlp(KEY, [4, 8, 2])
    params = [fbp.Layer(layer.w * 1e4, layer.b * 1e4) for layer in params]
    xs, ys = XS.astype(jnp.float32), YS.astype(jnp.float32)
    norms = per_example_grad_norms(params, xs, ys)
    assert np.all(np.isfinite(np.asarray(norms.total)))
    assert all(
        np.all(np.isfinite(np.asarray(g)))
        for g in jax.tree.leaves(clipped_grad(params, xs, ys, 1.0))
    )


def test_a_nan_example_is_not_passed_unclipped():
    xs = XS.at[0, 0].set(jnp.nan)
    norms = per_example_grad_norms(PARAMS, xs, YS)
    assert np.isnan(norms.total[0]) and np.all(np.isfinite(norms.total[1:]))
    assert np.all(np.isnan(np.asarray(clipped_grad(PARAMS, xs, YS, 1.0)[0].w)))


# Bad input: a negative norm would reverse the gradient, zero would zero it.

SGD = optax.sgd(0.1)


def _dp_step(key=KEY, optimizer=SGD, clip_norm=1.0, noise_multiplier=1.0):
    gradient = PrivateGradient(clip_norm, noise_multiplier)
    return lambda: training.train_step(
        key, optimizer, PARAMS, SGD.init(PARAMS), XS, YS, gradient=gradient
    )


BAD_CASES = [
    *[
        (
            f"clip_norm {value}",
            lambda v=value: clipped_grad(PARAMS, XS, YS, v),
            ValueError,
            r"clip_norm to be a finite number > 0",
        )
        for value in (-1.0, 0, 0.0, float("nan"), float("inf"))
    ],
    (
        "private clip 0",
        lambda: private_grad(KEY, PARAMS, XS, YS, 0.0, 1.0),
        ValueError,
        r"clip_norm .*> 0",
    ),
    (
        "private noise -1",
        lambda: private_grad(KEY, PARAMS, XS, YS, 1.0, -1.0),
        ValueError,
        r"noise_multiplier to be a finite number >= 0, got -1",
    ),
    (
        "private noise nan",
        lambda: private_grad(KEY, PARAMS, XS, YS, 1.0, float("nan")),
        ValueError,
        r"noise_multiplier .* got nan",
    ),
    (
        "private key int",
        lambda: private_grad(3, PARAMS, XS, YS, 1.0, 1.0),
        TypeError,
        r"key to be a jax.random key",
    ),
    # DP-SGD as a training step (the old dp_sgd_step's arguments, each named).
    (
        "dp learning rate 0",
        lambda: _dp_step(optimizer=training.sgd(0.0))(),
        ValueError,
        r"learning_rate .*> 0",
    ),
    ("dp clip -1", _dp_step(clip_norm=-1.0), ValueError, r"clip_norm"),
    ("dp noise -0.5", _dp_step(noise_multiplier=-0.5), ValueError, r"noise_multiplier"),
    (
        "dp key str",
        _dp_step(key="key"),
        TypeError,
        r"key to be a jax.random key .*got str",
    ),
    (
        "clipped gradient 0",
        lambda: training.train_step(
            None, SGD, PARAMS, SGD.init(PARAMS), XS, YS, gradient=ClippedGradient(0.0)
        ),
        ValueError,
        r"clip_norm to be a finite number > 0, got 0",
    ),
    (
        "clipped gradient str",
        lambda: training.train_step(
            None, SGD, PARAMS, SGD.init(PARAMS), XS, YS, gradient=ClippedGradient("1")
        ),
        TypeError,
        r"clip_norm to be a number > 0, got str",
    ),
]


@pytest.mark.parametrize(
    "call,error,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
