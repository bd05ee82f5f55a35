"""Many runs in one program (vmap over seeds and learning rates) and training on two
processes (jax.distributed on localhost): each equals the separate, single runs."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import assert_tree_close, random_problem

import functional_bp as fbp
from functional_bp.cli import main

RUNS = 3


def _run(tree, r):
    return jax.tree.map(lambda a: a[r], tree)


@pytest.mark.parametrize("shared_shuffle", [False, True], ids=["own shuffles", "shared shuffle"])
def test_vmapped_epochs_equal_separate_runs(shared_shuffle):
    _, xs, ys = random_problem(800, batch=23, sizes=[5, 4, 3])
    init_keys = jax.random.split(jax.random.key(0), RUNS)
    params = fbp.init_mlp_many(init_keys, [5, 4, 3], dtype=jnp.float64)
    keys = jax.random.split(jax.random.key(1), RUNS)
    etas = jnp.array([0.3, 1.0, 3.0])
    key_of = (lambda r: keys[0]) if shared_shuffle else (lambda r: keys[r])
    many = params
    for _ in range(2):
        epoch_keys = keys[0] if shared_shuffle else keys
        many = fbp.train_epoch_many(
            epoch_keys, many, xs, ys, etas, batch_size=5, lmbda=0.1, n=100, activation="tanh"
        )
    for r in range(RUNS):
        single = _run(params, r)
        assert_tree_close(single, fbp.init_mlp(init_keys[r], [5, 4, 3], dtype=jnp.float64), rtol=0)
        for _ in range(2):
            single = fbp.train_epoch(
                key_of(r),
                single,
                xs,
                ys,
                float(etas[r]),
                batch_size=5,
                lmbda=0.1,
                n=100,
                activation="tanh",
            )
        assert_tree_close(_run(many, r), single, rtol=1e-10)


def test_vmapped_optax_epochs_with_a_learning_rate_per_run():
    """optax's inject_hyperparams keeps the learning rate in the state, so it vmaps."""
    _, xs, ys = random_problem(801, batch=20, sizes=[4, 6, 2])
    keys = jax.random.split(jax.random.key(2), RUNS)
    params = fbp.init_mlp_many(keys, [4, 6, 2], dtype=jnp.float64)
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    etas = jnp.array([1e-3, 1e-2, 1e-1])

    def init(p, eta):
        state = optimizer.init(p)
        state.hyperparams["learning_rate"] = eta
        return state

    states = jax.vmap(init)(params, etas)
    epoch = lambda k, p, s: fbp.optax_epoch(k, optimizer, p, s, xs, ys, batch_size=6)  # noqa: E731
    many, _ = jax.vmap(epoch)(keys, params, states)
    for r in range(RUNS):
        single, _ = epoch(keys[r], _run(params, r), init(_run(params, r), etas[r]))
        assert_tree_close(_run(many, r), single, rtol=1e-10)


def test_many_runs_check_their_input():
    params = fbp.init_mlp_many(jax.random.split(jax.random.key(0), 2), [3, 2])
    xs, ys = jnp.ones((4, 3)), jnp.ones((4, 2))
    with pytest.raises(TypeError, match=r"keys to be a 1-D array of jax.random keys"):
        fbp.init_mlp_many(jax.random.key(0), [3, 2])
    with pytest.raises(ValueError, match="batch_size to be an int >= 1"):
        fbp.train_epoch_many(jax.random.key(0), params, xs, ys, 1.0, batch_size=0)


def test_cli_seeds_and_etas_write_every_run(tmp_path, capsys):
    history = tmp_path / "runs.json"
    argv = ["train", "--epochs", "2", "--seeds", "0-2", "--eta", "0.5,3", "--no-progress"]
    assert main(argv + ["--json", str(history), "--plot", str(tmp_path / "runs.png")]) == 0
    out = capsys.readouterr().out
    assert "6 runs in one program" in out and "eta 3, 3 runs: test accuracy final" in out
    record = json.loads(history.read_text())
    assert [(r["seed"], r["eta"]) for r in record["runs"]] == [
        (s, e) for e in (0.5, 3.0) for s in (0, 1, 2)
    ]
    assert all(len(r["history"]) == 2 for r in record["runs"])
    assert [s["eta"] for s in record["summary"]] == [0.5, 3.0]
    # Run (seed 2, eta 3) is the run `train --seed 2` gives on its own.
    assert main(["train", "--epochs", "2", "--seed", "2", "--no-progress"]) == 0
    alone = capsys.readouterr().out
    final = record["runs"][5]["final_accuracy"]
    assert f"final {final:.2%}" in alone


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
    """Data-parallel SGD over 2 processes on localhost (gloo): the params after an epoch
    equal one process's `train_epoch` on the whole data."""
    port = _free_port()
    save = tmp_path / "p.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    argv = [sys.executable, "-m", "functional_bp", "train", "--epochs", "1", "--float64"]
    argv += ["--no-progress", "--save", str(save), "--coordinator", f"127.0.0.1:{port}"]
    argv += ["--num-processes", "2"]
    workers = [
        subprocess.Popen(
            argv + ["--process-id", str(i)],
            env=env,
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
    # Process 0 reports and writes for all (gloo's own lines may still show).
    assert "accuracy" in outputs[0][0] and "accuracy" not in outputs[1][0]
    got, _ = fbp.load_params(save)

    train, _ = fbp.load_digits()
    xs, ys = jnp.asarray(train.x, jnp.float64), jnp.asarray(fbp.one_hot(train.y), jnp.float64)
    init_key, key = jax.random.split(jax.random.key(0))
    params = fbp.init_mlp(init_key, [64, 30, 10], dtype=jnp.float64)
    _, epoch_key = jax.random.split(key)
    want = fbp.train_epoch(epoch_key, params, xs, ys, 3.0, batch_size=10, lmbda=0.0, n=len(xs))
    assert_tree_close(got, want, rtol=1e-9)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--coordinator", "127.0.0.1:1"], "need --coordinator, --num-processes and --process-id"),
        (
            ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id 2 must be below --num-processes 2",
        ),
    ],
)
def test_cli_cluster_options_checked(argv, message, capsys):
    assert main(["train", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_several_runs_refuse_what_they_cannot_do(capsys):
    argv = ["train", "--seeds", "0-1", "--optimizer", "adam", "--no-progress"]
    assert main(argv) == 2
    assert (
        "several --seeds or --eta values train with --optimizer sgd and --rule bp"
        in capsys.readouterr().err
    )
