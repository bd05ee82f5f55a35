"""Saving and loading params (functional_bp.io): round trips of every float dtype, atomic
writes, and files refused before anything is written or read wrongly."""

import errno
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_tree_close, random_problem

import functional_bp as fbp
from functional_bp import feedback, io
from functional_bp.io import load_feedback, load_params, save_params
from functional_bp.params import layer_sizes

KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [4, 3, 2], dtype=jnp.float64)


def test_save_load_round_trip(tmp_path):
    params, _, _ = random_problem(0, sizes=[5, 4, 3])
    path = save_params(tmp_path / "p.npz", params, activation="tanh", cost="quadratic")
    loaded, meta = load_params(path)
    assert_tree_close(jax.tree.map(jnp.asarray, loaded), params, 0.0)
    assert meta == {"sizes": [5, 4, 3], "activation": "tanh", "cost": "quadratic"}
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]
    assert load_feedback(path) is None


def test_feedback_matrices_round_trip(tmp_path):
    params, _, _ = random_problem(1, sizes=[5, 4, 3, 2])
    matrices = feedback.init_feedback(KEY, params, "kp")
    path = save_params(tmp_path / "p.npz", params, feedback=matrices, rule="kp")
    loaded, meta = load_params(path)
    assert meta["rule"] == "kp"
    assert_tree_close(jax.tree.map(jnp.asarray, loaded), params, 0.0)
    assert_tree_close([jnp.asarray(b) for b in load_feedback(path)], matrices, 0.0)


def test_failed_save_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    params, _, _ = random_problem(0, sizes=[3, 2])
    path = save_params(tmp_path / "p.npz", params)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_params(path, random_problem(1, sizes=[3, 2])[0])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz: not a functional_bp params file"):
        load_params(junk)
    plain = tmp_path / "plain.npz"
    np.savez(plain, w1=np.ones((2, 3)))
    with pytest.raises(ValueError, match="plain.npz: not a functional_bp params file"):
        load_params(plain)
    params, _, _ = random_problem(0, sizes=[3, 2])
    good = save_params(tmp_path / "good.npz", params)
    with np.load(good) as data:
        arrays = dict(data)
    arrays["w1"] = np.ones((2, 4))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"bad.npz: entry 'w1' has shape \(2, 4\), the header"):
        load_params(tmp_path / "bad.npz")


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("key", ["format", "sizes", "dtype"])
def test_save_refuses_reserved_metadata(tmp_path, key):
    with pytest.raises(ValueError, match=rf"\['{key}'\] are reserved"):
        save_params(tmp_path / "p.npz", PARAMS, **{key: 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "metadata,error", [({"x": float("nan")}, ValueError), ({"x": object()}, TypeError)]
)
def test_save_refuses_metadata_that_is_not_strict_json(tmp_path, metadata, error):
    with pytest.raises(error, match="strict JSON"):
        save_params(tmp_path / "p.npz", PARAMS, **metadata)
    assert list(tmp_path.iterdir()) == []


def test_save_to_a_directory_or_missing_directory_names_the_path(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: it is a directory"):
        save_params(tmp_path, PARAMS)
    with pytest.raises(FileNotFoundError, match=r"missing/p.npz: the directory .* does not exist"):
        save_params(tmp_path / "missing" / "p.npz", PARAMS)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_checkpoint_of_any_float_dtype_loads_exactly(tmp_path, dtype):
    params = fbp.init_mlp(KEY, [5, 4, 3], dtype=dtype)
    path = save_params(tmp_path / "p.npz", params, cost="quadratic")
    loaded, meta = load_params(path)
    assert meta["cost"] == "quadratic"
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def test_checkpoint_gets_the_umask_and_a_long_name_works(tmp_path):
    old = os.umask(0o027)
    try:
        path = save_params(tmp_path / ("x" * 250 + ".npz"), PARAMS)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert layer_sizes(load_params(path)[0]) == [4, 3, 2]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_failed_write_names_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_params(tmp_path / "p.npz", PARAMS)
    before = path.read_bytes()

    monkeypatch.setattr(np, "savez", _disk_full)
    with pytest.raises(OSError, match=f"Cannot write params {path}: No space left"):
        save_params(path, PARAMS)
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
        load_params(path)


def test_save_refuses_params_that_are_not_a_list_of_layers(tmp_path):
    with pytest.raises(TypeError, match="params to be a non-empty list of Layer"):
        save_params(tmp_path / "p.npz", {"w": np.ones((2, 2))})
    assert list(tmp_path.iterdir()) == []
