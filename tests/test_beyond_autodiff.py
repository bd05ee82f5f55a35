"""Per-example norms, clipping, DP-SGD, the custom VJP, data parallelism, diagnostics."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close, random_problem

import functional_bp as fbp
from functional_bp import (
    clipped_grad,
    dp_sgd_step,
    layer_gradient_norms,
    mlp,
    per_example_grad_norms,
    private_grad,
)
from functional_bp.cli import main

CASES = [("sigmoid", "quadratic"), ("tanh", "squared_error"), ("relu", "cross_entropy")]
OUTPUT = {"quadratic": None, "squared_error": "softmax", "cross_entropy": "sigmoid"}


def _options(activation, cost):
    return dict(activation=activation, output_activation=OUTPUT[cost], cost=cost)


def _autodiff_per_example(params, xs, ys, options):
    one = lambda p, x, y: fbp.loss(p, x[None], y[None], **options)
    return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, xs, ys)


def _norms_of(per_example, batch):
    """Per-layer (w, b) norms and the total, from materialised per-example gradients."""
    layers = [
        [jnp.linalg.norm(leaf.reshape(batch, -1), axis=1) for leaf in layer]
        for layer in per_example
    ]
    total = jnp.sqrt(sum(w**2 + b**2 for w, b in layers))
    return layers, total


@pytest.mark.parametrize("activation,cost", CASES)
def test_per_example_norms_equal_materialised_norms(activation, cost):
    options = _options(activation, cost)
    for seed in range(3):
        params, xs, ys = random_problem(seed + 20)
        batch = xs.shape[0]
        got = per_example_grad_norms(params, xs, ys, **options)
        assert got.total.shape == (batch,)
        for per_example in (
            fbp.per_example_grads(params, xs, ys, **options),
            _autodiff_per_example(params, xs, ys, options),
        ):
            layers, total = _norms_of(per_example, batch)
            np.testing.assert_allclose(got.total, total, rtol=1e-10, atol=1e-300)
            for layer, (w, b) in zip(got.layers, layers):
                np.testing.assert_allclose(layer.w, w, rtol=1e-10, atol=1e-300)
                np.testing.assert_allclose(layer.b, b, rtol=1e-10, atol=1e-300)


def _clip_materialised(per_example, clip_norm, batch):
    _, total = _norms_of(per_example, batch)
    scale = jnp.minimum(1.0, clip_norm / total)
    return jax.tree.map(
        lambda g: jnp.mean(g * scale.reshape((batch,) + (1,) * (g.ndim - 1)), axis=0), per_example
    )


@pytest.mark.parametrize("activation,cost", CASES)
def test_clipped_grad_equals_clipping_materialised_gradients(activation, cost):
    options = _options(activation, cost)
    params, xs, ys = random_problem(30, sizes=[6, 8, 5, 3], batch=7)
    per_example = fbp.per_example_grads(params, xs, ys, **options)
    norms = per_example_grad_norms(params, xs, ys, **options).total
    for clip_norm in (
        0.5 * float(jnp.min(norms)),
        float(jnp.median(norms)),
        2 * float(jnp.max(norms)),
    ):
        expected = _clip_materialised(per_example, clip_norm, 7)
        assert_tree_close(clipped_grad(params, xs, ys, clip_norm, **options), expected, 1e-10)
    # A clip above every norm clips nothing.
    assert_tree_close(
        clipped_grad(params, xs, ys, 2 * float(jnp.max(norms)), **options),
        fbp.grad(params, xs, ys, **options),
        1e-10,
    )


def test_private_grad_noise_and_dp_sgd_step():
    params, xs, ys = random_problem(31, sizes=[40, 50, 3], batch=8)
    key = jax.random.key(5)
    clipped = clipped_grad(params, xs, ys, 0.1)
    assert_tree_close(private_grad(key, params, xs, ys, 0.1, 0.0), clipped, 1e-12)
    noisy = private_grad(key, params, xs, ys, 0.1, 1.5)
    assert_tree_close(noisy, private_grad(key, params, xs, ys, 0.1, 1.5), 0.0)
    noise = np.asarray(noisy[0].w - clipped[0].w).ravel()  # 2,000 draws
    assert noise.std() == pytest.approx(1.5 * 0.1 / 8, rel=0.1)
    assert abs(noise.mean()) < 4 * 1.5 * 0.1 / 8 / np.sqrt(noise.size)

    stepped = dp_sgd_step(key, params, xs, ys, 0.5, 0.1, 1.5)
    assert_tree_close(stepped, jax.tree.map(lambda p, g: p - 0.5 * g, params, noisy), 1e-12)
    optimizer = optax.sgd(0.5)  # composes with optax
    updates, _ = optimizer.update(noisy, optimizer.init(params), params)
    assert_tree_close(optax.apply_updates(params, updates), stepped, 1e-12)


def _reference_mlp(params, x, activation):
    a = x
    for l, layer in enumerate(params, start=1):
        z = layer.w @ a + layer.b if a.ndim == 1 else a @ layer.w.T + layer.b[None, :]
        a = activation(z) if l < len(params) else jax.nn.sigmoid(z)
    return a


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

    manual = program(lambda p, x: mlp(p, x, activation="tanh", output_activation="sigmoid"))
    reference = program(lambda p, x: _reference_mlp(p, x, jnp.tanh))
    np.testing.assert_allclose(manual(params, xs), reference(params, xs), rtol=1e-12)
    expected = jax.grad(reference, argnums=(0, 1))(params, xs)
    assert_tree_close(jax.grad(manual, argnums=(0, 1))(params, xs), expected, 1e-10)
    assert_tree_close(jax.jit(jax.grad(manual, argnums=(0, 1)))(params, xs), expected, 1e-10)
    per_example = jax.vmap(jax.grad(manual), in_axes=(None, 0))(params, xs)
    assert_tree_close(
        per_example, jax.vmap(jax.grad(reference), in_axes=(None, 0))(params, xs), 1e-10
    )


def test_custom_vjp_runs_the_hand_written_derivative():
    """A deliberately wrong sigma' changes mlp's gradient: jax.grad really runs our VJP."""
    params, xs, _ = random_problem(41, sizes=[3, 4, 2], batch=2)
    wrong = fbp.Activation(jnp.tanh, lambda z: 2.0 * (1 - jnp.tanh(z) ** 2))
    right = fbp.Activation(jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2)

    def grads(act):
        return jax.grad(lambda p: jnp.sum(mlp(p, xs, activation=act, output_activation="sigmoid")))(
            params
        )

    assert_tree_close(
        grads(right), jax.grad(lambda p: jnp.sum(_reference_mlp(p, xs, jnp.tanh)))(params), 1e-10
    )
    assert not np.allclose(grads(wrong)[0].w, grads(right)[0].w)


def test_forward_mode_raises_jax_error():
    params, xs, _ = random_problem(42, sizes=[3, 2], batch=2)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(lambda x: mlp(params, x), (xs,), (jnp.ones_like(xs),))


def test_layer_gradient_norms_show_vanishing_sigmoid_gradients():
    sizes = [64, 30, 30, 30, 30, 10]
    params = fbp.init_mlp(jax.random.key(0), sizes, init="scaled_normal", dtype=jnp.float64)
    xs = jax.random.uniform(jax.random.key(1), (100, 64), jnp.float64)
    ys = jax.nn.one_hot(jnp.arange(100) % 10, 10, dtype=jnp.float64)
    norms = layer_gradient_norms(params, xs, ys)
    grads = fbp.grad(params, xs, ys)
    np.testing.assert_allclose(norms.delta, [jnp.linalg.norm(g.b) for g in grads], rtol=1e-12)
    np.testing.assert_allclose(norms.weight_grad, [jnp.linalg.norm(g.w) for g in grads], rtol=1e-12)
    # Eq 85: each sigmoid layer multiplies by sigma' <= 1/4; layer 1 learns slowest.
    assert np.all(np.diff(np.asarray(norms.delta[:-1])) > 0)
    relu = layer_gradient_norms(params, xs, ys, activation="relu", output_activation="sigmoid")
    assert relu.delta[0] / relu.delta[-2] > 10 * norms.delta[0] / norms.delta[-2]


def test_diagnose_command_writes_plot(tmp_path, capsys):
    plot = tmp_path / "norms.png"
    args = ["diagnose", "--epochs", "1", "--hidden", "10,10,10", "--probe", "100"]
    assert main([*args, "--no-progress", "--plot", str(plot)]) == 0
    assert "layer 1 learns" in capsys.readouterr().out
    assert plot.read_bytes()[:4] == b"\x89PNG"


PARALLEL_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import functional_bp as fbp
    from functional_bp import data_mesh, data_parallel_grad, data_parallel_sgd_step, sgd_step
    assert len(jax.devices()) == 8, jax.devices()
    params = fbp.init_mlp(jax.random.key(0), [9, 7, 3], dtype=jnp.float64)
    xs = jax.random.uniform(jax.random.key(1), (16, 9), jnp.float64)
    ys = jax.random.uniform(jax.random.key(2), (16, 3), jnp.float64)
    for n in (1, 4, 8):
        mesh = data_mesh(n)
        got = data_parallel_sgd_step(mesh, params, xs, ys, 0.5, lmbda=0.1, n=100,
                                     activation="tanh")
        want = sgd_step(params, xs, ys, 0.5, lmbda=0.1, n=100, activation="tanh")
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        grads = data_parallel_grad(mesh, params, xs, ys)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(fbp.grad(params, xs, ys))):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        # A whole epoch from the shared shuffle; with 12 examples, a last mini-batch of 4.
        for count in (16, 12) if n < 8 else (16,):
            x, y = xs[:count], ys[:count]
            got = fbp.data_parallel_epoch(mesh, jax.random.key(3), params, np.asarray(x),
                                          np.asarray(y), 0.5, batch_size=8)
            want = fbp.train_epoch(jax.random.key(3), params, x, y, 0.5, batch_size=8)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        print("devices", n, "equal")
    try:
        data_parallel_grad(data_mesh(8), params, xs[:12], ys[:12])
    except ValueError as error:
        print("error:", error)
""")


def test_data_parallel_on_4_and_8_cpu_devices_equals_one_device():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
    )
    out = subprocess.run(
        [sys.executable, "-c", PARALLEL_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for n in (1, 4, 8):
        assert f"devices {n} equal" in out.stdout
    assert (
        "error: A mini-batch of 12 examples does not divide across the 8 devices of mesh "
        "axis 'data'"
    ) in out.stdout
