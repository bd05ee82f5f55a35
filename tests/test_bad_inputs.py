"""Bad input, as a careless user gives it: every case gets a library error that names the
argument and what is expected, before any computation, and nothing is lost."""

import errno
import json
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp.cli import main

KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [4, 3, 2], dtype=jnp.float64)
XS = jnp.asarray(np.random.default_rng(0).random((6, 4)))
YS = jnp.asarray(np.eye(2)[[0, 1, 0, 1, 1, 0]])
NO_XS, NO_YS = XS[:0], YS[:0]
LABELS = np.array([0, 1, 0, 1, 1, 0])
MESH = fbp.data_mesh(1)
ADAM = __import__("optax").adam(1e-3)
STATE = ADAM.init(PARAMS)
BAD_SHAPE_ACT = fbp.Activation(lambda z: z.sum(), lambda z: z, name="summing")
BAD_COST = fbp.Cost(lambda a, y: a - y, lambda a, y: a - y, name="vector_cost")


def sgd(**kw):
    return lambda: fbp.sgd_step(PARAMS, XS, YS, kw.pop("eta", 1.0), **kw)


def epoch(key=KEY, eta=1.0, **kw):
    kw.setdefault("batch_size", 2)
    return lambda: fbp.train_epoch(key, PARAMS, XS, YS, eta, **kw)


# (id, call, exception, a regex the message must match: it names the argument).
API_CASES = [
    # Learning rate, L2 and the training-set size: numbers checked before the trace.
    ("sgd eta nan", sgd(eta=float("nan")), ValueError, r"eta to be a finite number > 0, got nan"),
    ("sgd eta inf", sgd(eta=float("inf")), ValueError, r"eta .* got inf"),
    ("sgd eta 0", sgd(eta=0.0), ValueError, r"eta to be a finite number > 0, got 0"),
    ("sgd eta -1", sgd(eta=-1), ValueError, r"eta .*> 0, got -1"),
    ("sgd eta str", sgd(eta="0.1"), TypeError, r"eta to be a number > 0, got str"),
    ("sgd eta bool", sgd(eta=True), TypeError, r"eta .* got bool"),
    ("sgd eta vector", sgd(eta=jnp.ones(2)), TypeError, r"eta to be a real scalar"),
    ("sgd lmbda -1", sgd(lmbda=-1.0, n=6), ValueError, r"lmbda .*>= 0, got -1"),
    ("sgd lmbda nan", sgd(lmbda=float("nan"), n=6), ValueError, r"lmbda .* got nan"),
    ("sgd lmbda no n", sgd(lmbda=0.1), ValueError, r"Expected n, the size of the training set"),
    ("sgd n 0", sgd(lmbda=0.1, n=0), ValueError, r"n to be a finite number >= 1, got 0"),
    ("sgd n -5", sgd(lmbda=0.1, n=-5), ValueError, r"n .*>= 1, got -5"),
    ("epoch eta -1", epoch(eta=-1.0), ValueError, r"eta .*> 0, got -1"),
    ("epoch eta nan np", epoch(eta=np.float32("nan")), ValueError, r"eta .* got nan"),
    ("epoch lmbda -1", epoch(lmbda=-1.0), ValueError, r"lmbda .*>= 0"),
    ("epoch n 0", epoch(lmbda=1.0, n=0), ValueError, r"\bn to be .*>= 1"),
    ("epoch batch 0", epoch(batch_size=0), ValueError, r"batch_size to be an int >= 1, got 0"),
    ("epoch batch -2", epoch(batch_size=-2), ValueError, r"batch_size .* got -2"),
    ("epoch batch 2.5", epoch(batch_size=2.5), TypeError, r"batch_size to be an int"),
    ("epoch batch str", epoch(batch_size="10"), TypeError, r"batch_size to be an int"),
    ("epoch batch bool", epoch(batch_size=True), TypeError, r"batch_size to be an int"),
    ("epoch key int", epoch(key=0), TypeError, r"key to be a jax.random key"),
    ("epoch key None", epoch(key=None), TypeError, r"key to be a jax.random key"),
    ("epoch key floats", epoch(key=jnp.zeros(2)), TypeError, r"key to be a jax.random key"),
    ("epoch key (3,)", epoch(key=jnp.zeros(3, jnp.uint32)), TypeError, r"key .*shape \(3,\)"),
    ("epoch keys (2,)", epoch(key=jax.random.split(KEY)), TypeError, r"key .*shape \(2,\)"),
    (
        "optax epoch batch 0",
        lambda: fbp.optax_epoch(KEY, ADAM, PARAMS, STATE, XS, YS, batch_size=0),
        ValueError,
        r"batch_size to be an int >= 1",
    ),
    (
        "optax epoch key int",
        lambda: fbp.optax_epoch(7, ADAM, PARAMS, STATE, XS, YS, batch_size=2),
        TypeError,
        r"key to be a jax.random key",
    ),
    (
        "scan epoch key",
        lambda: fbp.scan_epoch(1, 0, XS, YS, lambda c, x, y: c, batch_size=2),
        TypeError,
        r"key to be a jax.random key",
    ),
    (
        "scan epoch batch",
        lambda: fbp.scan_epoch(KEY, 0, XS, YS, lambda c, x, y: c, batch_size=0),
        ValueError,
        r"batch_size to be an int >= 1",
    ),
    # Clipping and noise: a negative norm would reverse the gradient, zero would zero it.
    *[
        (
            f"clip_norm {value}",
            lambda v=value: fbp.clipped_grad(PARAMS, XS, YS, v),
            ValueError,
            r"clip_norm to be a finite number > 0",
        )
        for value in (-1.0, 0, 0.0, float("nan"), float("inf"))
    ],
    (
        "private clip 0",
        lambda: fbp.private_grad(KEY, PARAMS, XS, YS, 0.0, 1.0),
        ValueError,
        r"clip_norm .*> 0",
    ),
    (
        "private noise -1",
        lambda: fbp.private_grad(KEY, PARAMS, XS, YS, 1.0, -1.0),
        ValueError,
        r"noise_multiplier to be a finite number >= 0, got -1",
    ),
    (
        "private noise nan",
        lambda: fbp.private_grad(KEY, PARAMS, XS, YS, 1.0, float("nan")),
        ValueError,
        r"noise_multiplier .* got nan",
    ),
    (
        "private key int",
        lambda: fbp.private_grad(3, PARAMS, XS, YS, 1.0, 1.0),
        TypeError,
        r"key to be a jax.random key",
    ),
    (
        "dp eta 0",
        lambda: fbp.dp_sgd_step(KEY, PARAMS, XS, YS, 0.0, 1.0, 1.0),
        ValueError,
        r"eta .*> 0",
    ),
    (
        "dp clip -1",
        lambda: fbp.dp_sgd_step(KEY, PARAMS, XS, YS, 0.1, -1.0, 1.0),
        ValueError,
        r"clip_norm",
    ),
    (
        "dp noise -0.5",
        lambda: fbp.dp_sgd_step(KEY, PARAMS, XS, YS, 0.1, 1.0, -0.5),
        ValueError,
        r"noise_multiplier",
    ),
    (
        "dp key str",
        lambda: fbp.dp_sgd_step("key", PARAMS, XS, YS, 0.1, 1.0, 1.0),
        TypeError,
        r"key to be a jax.random key .*got str",
    ),
    (
        "data parallel eta nan",
        lambda: fbp.data_parallel_sgd_step(MESH, PARAMS, XS, YS, float("nan")),
        ValueError,
        r"eta .* got nan",
    ),
    (
        "data parallel lmbda -1",
        lambda: fbp.data_parallel_sgd_step(MESH, PARAMS, XS, YS, 0.1, lmbda=-1.0, n=6),
        ValueError,
        r"lmbda",
    ),
    # Empty batches: a mean over no examples is undefined, never zeros or NaN.
    *[
        (f"empty {name}", call, ValueError, r"xs to hold at least one example, got shape \(0, 4\)")
        for name, call in [
            ("grad", lambda: fbp.grad(PARAMS, NO_XS, NO_YS)),
            ("loss", lambda: fbp.loss(PARAMS, NO_XS, NO_YS)),
            ("value_and_grad", lambda: fbp.value_and_grad(PARAMS, NO_XS, NO_YS)),
            ("per_example_grads", lambda: fbp.per_example_grads(PARAMS, NO_XS, NO_YS)),
            ("norms", lambda: fbp.per_example_grad_norms(PARAMS, NO_XS, NO_YS)),
            ("clipped_grad", lambda: fbp.clipped_grad(PARAMS, NO_XS, NO_YS, 1.0)),
            ("sgd_step", lambda: fbp.sgd_step(PARAMS, NO_XS, NO_YS, 1.0)),
            ("train_epoch", lambda: fbp.train_epoch(KEY, PARAMS, NO_XS, NO_YS, 1.0, batch_size=2)),
            ("optax_step", lambda: fbp.optax_step(ADAM, PARAMS, STATE, NO_XS, NO_YS)),
            ("total_cost", lambda: fbp.total_cost(PARAMS, NO_XS, NO_YS)),
            ("accuracy", lambda: fbp.accuracy(PARAMS, NO_XS, LABELS[:0])),
            ("layer norms", lambda: fbp.layer_gradient_norms(PARAMS, NO_XS, NO_YS)),
            ("check_gradients", lambda: fbp.check_gradients(PARAMS, NO_XS, NO_YS)),
            ("data parallel", lambda: fbp.data_parallel_grad(MESH, PARAMS, NO_XS, NO_YS)),
        ]
    ],
    # Labels for evaluate: class indices, one per example, in range.
    (
        "labels one-hot",
        lambda: fbp.evaluate(PARAMS, XS, YS.astype(jnp.int32)),
        ValueError,
        r"labels to be class indices.*one-hot",
    ),
    ("labels float", lambda: fbp.evaluate(PARAMS, XS, LABELS * 1.0), ValueError, r"labels"),
    ("labels short", lambda: fbp.evaluate(PARAMS, XS, LABELS[:5]), ValueError, r"shape \(6,\)"),
    (
        "labels 2-d",
        lambda: fbp.evaluate(PARAMS, XS, LABELS[:, None]),
        ValueError,
        r"labels .*shape \(6, 1\)",
    ),
    (
        "labels too big",
        lambda: fbp.evaluate(PARAMS, XS, LABELS + 1),
        ValueError,
        r"labels in \[0, 2\).*from 1 to 2",
    ),
    ("labels negative", lambda: fbp.evaluate(PARAMS, XS, LABELS - 1), ValueError, r"from -1 to 0"),
    (
        "evaluate batch 0",
        lambda: fbp.evaluate(PARAMS, XS, LABELS, batch_size=0),
        ValueError,
        r"batch_size",
    ),
    ("total_cost lmbda", lambda: fbp.total_cost(PARAMS, XS, YS, lmbda=-1), ValueError, r"lmbda"),
    (
        "total_cost batch",
        lambda: fbp.total_cost(PARAMS, XS, YS, batch_size=0),
        ValueError,
        r"batch_size",
    ),
    # init_mlp: keys and sizes.
    ("init key int", lambda: fbp.init_mlp(0, [3, 2]), TypeError, r"key to be a jax.random key"),
    ("init key None", lambda: fbp.init_mlp(None, [3, 2]), TypeError, r"key"),
    ("init one size", lambda: fbp.init_mlp(KEY, [784]), ValueError, r"at least two layer sizes"),
    ("init size 0", lambda: fbp.init_mlp(KEY, [3, 0, 2]), ValueError, r"sizes\[1\] .* got 0"),
    ("init size -1", lambda: fbp.init_mlp(KEY, [3, -1]), ValueError, r"sizes\[1\]"),
    ("init size float", lambda: fbp.init_mlp(KEY, [3, 2.5]), TypeError, r"sizes\[1\] to be an int"),
    ("init size str", lambda: fbp.init_mlp(KEY, ["3", 2]), TypeError, r"sizes\[0\]"),
    ("init size bool", lambda: fbp.init_mlp(KEY, [3, True]), TypeError, r"sizes\[1\]"),
    ("init unknown", lambda: fbp.init_mlp(KEY, [3, 2], init="xavier"), ValueError, r"init"),
    ("init int dtype", lambda: fbp.init_mlp(KEY, [3, 2], dtype=jnp.int32), TypeError, r"dtype"),
    # Gradient checking.
    (
        "fd_entries 0",
        lambda: fbp.check_gradients(PARAMS, XS, YS, fd_entries=0),
        ValueError,
        r"fd_entries to be an int >= 1",
    ),
    (
        "fd_entries 1.5",
        lambda: fbp.check_gradients(PARAMS, XS, YS, fd_entries=1.5),
        TypeError,
        r"fd_entries",
    ),
    (
        "fd_step -1e-3",
        lambda: fbp.check_gradients(PARAMS, XS, YS, fd_step=-1e-3),
        ValueError,
        r"fd_step to be a finite number > 0",
    ),
    ("fd_step 0", lambda: fbp.check_gradients(PARAMS, XS, YS, fd_step=0.0), ValueError, r"fd_step"),
    ("seed -1", lambda: fbp.check_gradients(PARAMS, XS, YS, seed=-1), ValueError, r"seed"),
    # Shapes and dtypes (the checks of earlier issues, kept).
    (
        "params dict",
        lambda: fbp.grad({"w": 1}, XS, YS),
        TypeError,
        r"params to be a non-empty list",
    ),
    (
        "x wrong width",
        lambda: fbp.grad(PARAMS, XS[:, :3], YS),
        ValueError,
        r"x to have shape \(batch, 4\)",
    ),
    ("y wrong width", lambda: fbp.grad(PARAMS, XS, YS[:, :1]), ValueError, r"y to have shape"),
    ("y fewer rows", lambda: fbp.grad(PARAMS, XS, YS[:5]), ValueError, r"y to have shape \(6, 2\)"),
    (
        "x int",
        lambda: fbp.grad(PARAMS, XS.astype(int), YS),
        TypeError,
        r"x to have a real floating",
    ),
    (
        "layers don't chain",
        lambda: fbp.grad([PARAMS[0], PARAMS[0]], XS, YS),
        ValueError,
        r"Layers don't chain: layer 2",
    ),
    (
        "b wrong shape",
        lambda: fbp.grad([fbp.Layer(PARAMS[0].w, PARAMS[0].b[:2]), PARAMS[1]], XS, YS),
        ValueError,
        r"layer 1 \(params\[0\]\) b to have shape \(3,\)",
    ),
    (
        "mixed dtypes",
        lambda: fbp.grad(
            [PARAMS[0], jax.tree.map(lambda a: a.astype(jnp.float32), PARAMS[1])], XS, YS
        ),
        TypeError,
        r"share one dtype: layer 2",
    ),
    # Options and user objects.
    (
        "unknown activation",
        lambda: fbp.grad(PARAMS, XS, YS, activation="gelu"),
        ValueError,
        r"gelu",
    ),
    ("unknown cost", lambda: fbp.grad(PARAMS, XS, YS, cost="hinge"), ValueError, r"hinge"),
    (
        "cross-entropy after relu",
        lambda: fbp.grad(PARAMS, XS, YS, activation="relu", cost="cross_entropy"),
        ValueError,
        r"output_activation",
    ),
    (
        "activation bad shape",
        lambda: fbp.grad(PARAMS, XS, YS, activation=BAD_SHAPE_ACT),
        ValueError,
        r"Activation 'summing' of layer 1: fn returned shape \(\)",
    ),
    (
        "cost not scalar",
        lambda: fbp.grad(PARAMS, XS, YS, cost=BAD_COST),
        ValueError,
        r"Cost 'vector_cost': fn returned shape \(2,\)",
    ),
    # Divergence, for research code.
    (
        "diverged nan cost",
        lambda: fbp.check_divergence(PARAMS, float("nan"), epoch=3),
        fbp.TrainingDiverged,
        r"training diverged at epoch 3 \(cost nan\)",
    ),
    (
        "diverged nan params",
        lambda: fbp.check_divergence(jax.tree.map(lambda a: a * jnp.nan, PARAMS), 0.5),
        fbp.TrainingDiverged,
        r"params not finite",
    ),
    (
        "diverged huge params",
        lambda: fbp.check_divergence(jax.tree.map(lambda a: a * 1e28, PARAMS), 0.45, epoch=2),
        fbp.TrainingDiverged,
        r"at epoch 2 \(cost 0.45, largest \|param\| .*e\+28 > 1e\+06\)",
    ),
    ("mesh 0 devices", lambda: fbp.data_mesh(0), ValueError, r"num_devices to be an int >= 1"),
    ("mesh 2.0 devices", lambda: fbp.data_mesh(2.0), TypeError, r"num_devices"),
    ("mesh too many", lambda: fbp.data_mesh(10_000), ValueError, r"num_devices from 1 to"),
    # Data.
    ("one_hot classes 0", lambda: fbp.one_hot(LABELS, 0), ValueError, r"num_classes"),
    ("one_hot floats", lambda: fbp.one_hot(LABELS * 1.0), ValueError, r"labels to be integers"),
    ("one_hot range", lambda: fbp.one_hot(LABELS + 9), ValueError, r"labels in \[0, 10\)"),
    (
        "digits fraction 0",
        lambda: fbp.load_digits(test_fraction=0.0),
        ValueError,
        r"test_fraction",
    ),
    (
        "digits fraction 1.5",
        lambda: fbp.load_digits(test_fraction=1.5),
        ValueError,
        r"test_fraction",
    ),
    (
        "digits fraction nan",
        lambda: fbp.load_digits(test_fraction=float("nan")),
        ValueError,
        r"test_fraction",
    ),
    (
        "digits fraction str",
        lambda: fbp.load_digits(test_fraction="a"),
        TypeError,
        r"test_fraction",
    ),
]


@pytest.mark.parametrize(
    "call,error,message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES]
)
def test_api_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_bad_input_is_refused_before_any_computation(monkeypatch):
    """The value checks run before the core: a core that fails would show otherwise."""

    def fail(*args, **kwargs):
        raise AssertionError("computed")

    monkeypatch.setattr(fbp.training, "_sgd_step", fail)
    with pytest.raises(ValueError, match="eta"):
        fbp.sgd_step(PARAMS, XS, YS, -1.0)
    with pytest.raises(ValueError, match="eta"):
        fbp.train_epoch(KEY, PARAMS, XS, YS, float("nan"), batch_size=2)


def test_numpy_integers_are_ints():
    params = fbp.init_mlp(KEY, np.array([4, 3, 2]))
    assert fbp.layer_sizes(params) == [4, 3, 2]
    same = fbp.train_epoch(
        KEY,
        params,
        XS.astype(jnp.float32),
        YS.astype(jnp.float32),
        1.0,
        batch_size=np.int64(2),
        lmbda=np.float32(0.1),
        n=np.int32(6),
    )
    assert fbp.layer_sizes(same) == [4, 3, 2]
    assert fbp.one_hot(LABELS, np.int64(2)).shape == (6, 2)
    assert fbp.check_gradients(PARAMS, XS, YS, fd_entries=np.int64(2), seed=np.int64(1)).ok


def test_traced_numbers_are_left_to_the_caller():
    """Under the caller's jit a number is a tracer: no value check can run, none fails."""
    step = jax.jit(lambda eta: fbp.sgd_step(PARAMS, XS, YS, eta))
    assert jnp.all(jnp.isfinite(step(0.5)[0].w))
    etas = jnp.array([0.1, 0.2])
    assert jax.vmap(step)(etas)[0].w.shape == (2, 3, 4)


def test_evaluate_with_one_hot_labels_of_batch_size_classes():
    """The issue's case: 10 classes, batch_size 10, one-hot labels broadcast silently."""
    params = fbp.init_mlp(KEY, [4, 10])
    xs = jnp.ones((100, 4))
    one_hot = jnp.asarray(np.eye(10, dtype=np.int32)[np.arange(100) % 10])
    with pytest.raises(ValueError, match="one-hot targets"):
        fbp.evaluate(params, xs, one_hot, batch_size=10)


# Per-example norms: each factor's norm scaled, so no square overflows or goes NaN.


def test_float16_norms_of_large_activations_do_not_overflow():
    w = jnp.full((1, 3), 1e-4, jnp.float16)
    params = [
        fbp.Layer(jnp.eye(3, dtype=jnp.float16), jnp.zeros(3, jnp.float16)),
        fbp.Layer(w, jnp.zeros(1, jnp.float16)),
    ]
    xs = jnp.full((2, 3), 300.0, jnp.float16)  # identity layer 1: a^1 = 300, sum a^2 > 65504
    ys = jnp.zeros((2, 1), jnp.float16)
    norms = fbp.per_example_grad_norms(params, xs, ys, activation="identity")
    reference = fbp.per_example_grads(
        jax.tree.map(lambda a: a.astype(jnp.float64), params),
        xs.astype(jnp.float64),
        ys.astype(jnp.float64),
        activation="identity",
    )
    expected = np.sqrt(
        sum(np.sum(np.asarray(g).reshape(2, -1) ** 2, axis=1) for g in jax.tree.leaves(reference))
    )
    assert np.all(np.isfinite(np.asarray(norms.total)))
    np.testing.assert_allclose(np.asarray(norms.total, np.float64), expected, rtol=1e-2)
    clipped = fbp.clipped_grad(params, xs, ys, 1.0, activation="identity")
    assert all(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(clipped[1]))


def test_saturated_float32_sigmoid_network_has_finite_norms():
    params = fbp.init_mlp(KEY, [4, 8, 2])
    params = [fbp.Layer(layer.w * 1e4, layer.b * 1e4) for layer in params]
    xs, ys = XS.astype(jnp.float32), YS.astype(jnp.float32)
    norms = fbp.per_example_grad_norms(params, xs, ys)
    assert np.all(np.isfinite(np.asarray(norms.total)))
    assert all(
        np.all(np.isfinite(np.asarray(g)))
        for g in jax.tree.leaves(fbp.clipped_grad(params, xs, ys, 1.0))
    )


def test_a_nan_example_is_not_passed_unclipped():
    xs = XS.at[0, 0].set(jnp.nan)
    norms = fbp.per_example_grad_norms(PARAMS, xs, YS)
    assert np.isnan(norms.total[0]) and np.all(np.isfinite(norms.total[1:]))
    assert np.all(np.isnan(np.asarray(fbp.clipped_grad(PARAMS, xs, YS, 1.0)[0].w)))


# Checkpoints: refused before anything is written, or written so that they load.


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("key", ["format", "sizes", "dtype"])
def test_save_refuses_reserved_metadata(tmp_path, key):
    with pytest.raises(ValueError, match=rf"\['{key}'\] are reserved"):
        fbp.save_params(tmp_path / "p.npz", PARAMS, **{key: 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "metadata,error", [({"x": float("nan")}, ValueError), ({"x": object()}, TypeError)]
)
def test_save_refuses_metadata_that_is_not_strict_json(tmp_path, metadata, error):
    with pytest.raises(error, match="strict JSON"):
        fbp.save_params(tmp_path / "p.npz", PARAMS, **metadata)
    assert list(tmp_path.iterdir()) == []


def test_save_to_a_directory_or_missing_directory_names_the_path(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: it is a directory"):
        fbp.save_params(tmp_path, PARAMS)
    with pytest.raises(FileNotFoundError, match=r"missing/p.npz: the directory .* does not exist"):
        fbp.save_params(tmp_path / "missing" / "p.npz", PARAMS)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_checkpoint_of_any_float_dtype_loads_exactly(tmp_path, dtype):
    params = fbp.init_mlp(KEY, [5, 4, 3], dtype=dtype)
    path = fbp.save_params(tmp_path / "p.npz", params, cost="quadratic")
    loaded, meta = fbp.load_params(path)
    assert meta["cost"] == "quadratic"
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def test_checkpoint_gets_the_umask_and_a_long_name_works(tmp_path):
    old = os.umask(0o027)
    try:
        path = fbp.save_params(tmp_path / ("x" * 250 + ".npz"), PARAMS)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert fbp.layer_sizes(fbp.load_params(path)[0]) == [4, 3, 2]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_failed_write_names_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = fbp.save_params(tmp_path / "p.npz", PARAMS)
    before = path.read_bytes()

    monkeypatch.setattr(np, "savez", _disk_full)
    with pytest.raises(OSError, match=f"Cannot write params {path}: No space left"):
        fbp.save_params(path, PARAMS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


@pytest.mark.parametrize(
    "content,message",
    [(b"", "not a functional_bp params file"), (b"PK\x03\x04junk", "not a functional_bp")],
)
def test_load_rejects_files_that_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "p.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        fbp.load_params(path)


# The command line: argparse refuses out-of-range numbers (rc 2, the option named).

ARGPARSE_CASES = [
    (["train", "--eta", "nan"], "--eta"),
    (["train", "--eta", "inf"], "--eta"),
    (["train", "--eta", "0"], "--eta"),
    (["train", "--eta", "-1"], "--eta"),
    (["train", "--eta", "abc"], "--eta"),
    (["train", "--lmbda", "-1"], "--lmbda"),
    (["train", "--lmbda", "nan"], "--lmbda"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "-3"], "--epochs"),
    (["train", "--epochs", "1.5"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--sizes", "64,0,10"], "--sizes"),
    (["train", "--sizes", "64"], "--sizes"),
    (["train", "--sizes", "a,b"], "--sizes"),
    (["train", "--activation", "gelu"], "--activation"),
    (["train", "--cost", "hinge"], "--cost"),
    (["gradcheck", "--batch-size", "0"], "--batch-size"),
    (["gradcheck", "--sizes", "3,-2"], "--sizes"),
    (["diagnose", "--probe", "0"], "--probe"),
    (["diagnose", "--hidden", "30,0"], "--hidden"),
    (["diagnose", "--hidden", "x"], "--hidden"),
    (["diagnose", "--epochs", "0"], "--epochs"),
    (["diagnose", "--eta", "-0.1"], "--eta"),
]


@pytest.mark.parametrize(
    "argv,option", ARGPARSE_CASES, ids=[" ".join(c[0]) for c in ARGPARSE_CASES]
)
def test_cli_ranges(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


# The command line: every output target is checked before training (rc 2).

OUTPUT_CASES = [
    (["train", "--save", "{tmp}"], "is a directory"),
    (["train", "--json", "{tmp}"], "is a directory"),
    (["train", "--plot", "{tmp}/out"], "suffix (none) is not a figure format"),
    (["train", "--plot", "{tmp}/out.xyz"], "suffix .xyz is not a figure format"),
    (["train", "--save", "{tmp}/no/such/p.npz"], "does not exist"),
    (["train", "--json", "{tmp}/h.json", "--plot", "{tmp}/h.json"], "same file"),
    (["diagnose", "--plot", "{tmp}/norms.xyz"], "not a figure format"),
    (["diagnose", "--plot", "{tmp}"], "is a directory"),
]


@pytest.mark.parametrize(
    "argv,message", OUTPUT_CASES, ids=[" ".join(c[0][:2]) + c[1] for c in OUTPUT_CASES]
)
def test_cli_outputs_checked_before_training(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fbp.cli, "_load_dataset", lambda args: pytest.fail("loaded data"))
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_divergence_stops_with_a_message_and_strict_json(tmp_path, capsys):
    argv = ["train", "--epochs", "3", "--eta", "1e30", "--no-progress"]
    paths = ["--json", str(tmp_path / "h.json"), "--save", str(tmp_path / "p.npz")]
    assert main(argv + paths) == 1
    err = capsys.readouterr().err
    assert "training diverged at epoch 1 (cost nan); try a smaller --eta" in err
    text = (tmp_path / "h.json").read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert record["history"][0]["train_cost"] is None
    assert not (tmp_path / "p.npz").exists()  # NaN params are not saved


def test_cli_write_failure_at_the_end_keeps_the_history(tmp_path, capsys, monkeypatch):
    """Fault injection: the disk fills when the params are written after training."""

    monkeypatch.setattr(np, "savez", _disk_full)
    save, history = tmp_path / "p.npz", tmp_path / "h.json"
    argv = ["train", "--epochs", "1", "--no-progress", "--save", str(save), "--json", str(history)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"error: Cannot write params {save}: No space left on device" in err
    assert "Traceback" not in err
    assert len(json.loads(history.read_text())["history"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]


@pytest.mark.parametrize(
    "suffix,magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".png", b"\x89PNG")]
)
def test_plot_format_follows_the_suffix(tmp_path, suffix, magic):
    from functional_bp.cli import plot_history

    row = dict(epoch=1, train_cost=0.5, eval_cost=0.6, train_accuracy=0.8, eval_accuracy=0.7)
    path = tmp_path / f"h{suffix}"
    plot_history([row], str(path), title="t", eval_name="test")
    assert path.read_bytes().startswith(magic)
