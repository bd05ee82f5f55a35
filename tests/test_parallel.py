"""Data parallelism (functional_bp.parallel) on the one-device CPU mesh of this process,
and on 4 and 8 CPU devices in a subprocess: each equals the single-device result."""

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
from functional_bp import parallel, training
from functional_bp.parallel import ShardedGradient, data_mesh


@pytest.mark.slow
def test_sharded_gradient_on_one_device_equals_grad():
    params, xs, ys = random_problem(50, sizes=[5, 4, 3], batch=6)
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    mesh = data_mesh(1)
    expected = fbp.grad(params, xs, ys, net=net)
    assert_tree_close(ShardedGradient(mesh)(None, net, params, xs, ys), expected, 1e-12)
    assert_tree_close(parallel.data_parallel_grad(mesh, params, xs, ys, net=net), expected, 1e-12)
    optimizer = optax.sgd(0.5)
    stepped, _ = training.train_step(
        None,
        optimizer,
        params,
        optimizer.init(params),
        xs,
        ys,
        gradient=ShardedGradient(mesh),
        net=net,
    )
    assert_tree_close(stepped, fbp.sgd_step(params, xs, ys, 0.5, net=net), 1e-12)


def test_sharded_gradient_on_a_named_axis():
    params, xs, ys = random_problem(51, sizes=[3, 2], batch=4)
    mesh = data_mesh(1, axis="batch")
    assert_tree_close(
        parallel.data_parallel_grad(mesh, params, xs, ys, axis="batch"),
        fbp.grad(params, xs, ys),
        1e-12,
    )
    with pytest.raises(ValueError, match=r"mesh to have an axis 'data', it has \('batch',\)"):
        parallel.data_parallel_grad(mesh, params, xs, ys)


@pytest.mark.parametrize("count", [16, 12], ids=["full batches", "a last partial batch"])
def test_data_parallel_epoch_equals_train_epoch(count):
    params, xs, ys = random_problem(52, sizes=[6, 5, 3], batch=count)
    net = fbp.Network("relu", "sigmoid", "cross_entropy")
    key = jax.random.key(3)
    got = parallel.data_parallel_epoch(
        key,
        data_mesh(1),
        params,
        np.asarray(xs),
        np.asarray(ys),
        0.5,
        batch_size=8,
        weight_decay=0.01,
        net=net,
    )
    want = fbp.train_epoch(key, params, xs, ys, 0.5, batch_size=8, weight_decay=0.01, net=net)
    assert_tree_close(got, want, 1e-12)


KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [4, 3, 2], dtype=jnp.float64)
XS = np.random.default_rng(0).random((6, 4))
YS = np.eye(2)[[0, 1, 0, 1, 1, 0]]
MESH = data_mesh(1)

BAD_CASES = [
    (
        "epoch learning rate nan",
        lambda: parallel.data_parallel_epoch(KEY, MESH, PARAMS, XS, YS, float("nan"), batch_size=2),
        ValueError,
        r"learning_rate .* got nan",
    ),
    (
        "epoch weight decay -1",
        lambda: parallel.data_parallel_epoch(
            KEY, MESH, PARAMS, XS, YS, 0.1, batch_size=2, weight_decay=-1.0
        ),
        ValueError,
        r"weight_decay",
    ),
    (
        "epoch key int",
        lambda: parallel.data_parallel_epoch(0, MESH, PARAMS, XS, YS, 0.1, batch_size=2),
        TypeError,
        r"key to be a jax.random key",
    ),
    (
        "epoch batch 0",
        lambda: parallel.data_parallel_epoch(KEY, MESH, PARAMS, XS, YS, 0.1, batch_size=0),
        ValueError,
        r"batch_size to be an int >= 1",
    ),
    (
        "not a mesh",
        lambda: parallel.data_parallel_grad(tuple(jax.devices()), PARAMS, XS, YS),
        TypeError,
        r"mesh to be a jax.sharding.Mesh, got tuple",
    ),
    ("mesh 0 devices", lambda: data_mesh(0), ValueError, r"num_devices to be an int >= 1"),
    ("mesh 2.0 devices", lambda: data_mesh(2.0), TypeError, r"num_devices"),
    ("mesh too many", lambda: data_mesh(10_000), ValueError, r"num_devices from 1 to"),
]


@pytest.mark.parametrize(
    "call,error,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


PARALLEL_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    import functional_bp as fbp
    from functional_bp import parallel, training
    assert len(jax.devices()) == 8, jax.devices()
    params = fbp.init_mlp(jax.random.key(0), [9, 7, 3], dtype=jnp.float64)
    xs = jax.random.uniform(jax.random.key(1), (16, 9), jnp.float64)
    ys = jax.random.uniform(jax.random.key(2), (16, 3), jnp.float64)
    tanh = fbp.Network("tanh")
    optimizer = training.sgd(0.5, 0.1 / 100)
    for n in (1, 4, 8):
        mesh = parallel.data_mesh(n)
        got, _ = training.train_step(None, optimizer, params, optimizer.init(params), xs, ys,
                                     gradient=parallel.ShardedGradient(mesh), net=tanh)
        want = fbp.sgd_step(params, xs, ys, 0.5, weight_decay=0.1 / 100, net=tanh)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        grads = parallel.data_parallel_grad(mesh, params, xs, ys)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(fbp.grad(params, xs, ys))):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        # A whole epoch from the shared shuffle; with 12 examples, a last mini-batch of 4.
        for count in (16, 12) if n < 8 else (16,):
            x, y = xs[:count], ys[:count]
            got = parallel.data_parallel_epoch(jax.random.key(3), mesh, params, np.asarray(x),
                                               np.asarray(y), 0.5, batch_size=8)
            want = fbp.train_epoch(jax.random.key(3), params, x, y, 0.5, batch_size=8)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        print("devices", n, "equal")
    try:
        parallel.data_parallel_grad(parallel.data_mesh(8), params, xs[:12], ys[:12])
    except ValueError as error:
        print("error:", error)
""")


@pytest.mark.slow
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
