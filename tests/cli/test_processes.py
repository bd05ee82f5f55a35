"""Training on several processes (jax.distributed on localhost): one run of data-parallel
SGD, equal to one process's; what it cannot do is refused before any data is loaded."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import assert_tree_close

import functional_bp as fbp
from functional_bp import data, io, runs
from functional_bp.cli import main


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
    """Data-parallel SGD over 2 processes on localhost (gloo): the params after an epoch
    equal one process's `train_epoch` on the whole data."""
    port = _free_port()
    save = tmp_path / "p.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
    argv = [sys.executable, "-m", "functional_bp", "train", "--epochs", "1", "--float64"]
    argv += ["--no-progress", "--save", str(save), "--coordinator", f"127.0.0.1:{port}"]
    argv += ["--num-processes", "2"]
    workers = [
        subprocess.Popen(
            argv + ["--process-id", str(i)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=240) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    assert "data-parallel over 2 processes, 2 devices" in outputs[0][0]
    # Each says what it waits for before the (bounded) wait of jax.distributed.
    assert f"waiting for 2 processes at 127.0.0.1:{port} (timeout 120 s)" in outputs[0][1]
    assert f"process 1 of 2: connecting to the coordinator 127.0.0.1:{port}" in outputs[1][1]
    # Process 0 reports and writes for all (gloo's own lines may still show).
    assert "accuracy" in outputs[0][0] and "accuracy" not in outputs[1][0]
    got, _ = io.load_params(save)

    train, _ = data.load_digits()
    xs, ys = jnp.asarray(train.x, jnp.float64), jnp.asarray(data.one_hot(train.y), jnp.float64)
    init_key, key = jax.random.split(jax.random.key(0))
    params = fbp.init_mlp(init_key, [64, 30, 10], dtype=jnp.float64)
    _, epoch_key = jax.random.split(key)
    want = fbp.train_epoch(epoch_key, params, xs, ys, 3.0, batch_size=10)
    assert_tree_close(got, want, rtol=1e-9)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--coordinator", "127.0.0.1:1"], "need --coordinator, --num-processes and --process-id"),
        (
            ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id: expected 0..1 (below --num-processes 2), got 2",
        ),
    ],
)
def test_cluster_options_checked(argv, message, capsys):
    assert main(["train", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--optimizer", "adam"], "optimizer sgd and rule bp only"),
        (["--rule", "fa"], "optimizer sgd and rule bp only"),
        (["--seeds", "0-1"], "several processes train one run, not 2"),
        (["--eta", "1,2"], "several processes train one run, not 2"),
        (["--batch-size", "5"], "does not divide across the 2 devices"),
    ],
)
def test_what_several_processes_cannot_do_is_refused_first(
    argv, message, capsys, monkeypatch, no_data
):
    """As if `jax.distributed` had started 2 processes of one device each."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "device_count", lambda: 2)
    assert main(["train", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    monkeypatch.undo()
    runs.check(runs.Config())  # one process: the same options are fine
