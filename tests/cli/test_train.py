"""``functional_bp train``: what it writes, what it prints, how it fails, and that its
numbers are the library's composition with the documented keys."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import functional_bp as fbp
from cli.helpers import TINY, read_json
from functional_bp import data, diagnostics, feedback, io, training
from functional_bp.cli import main


def test_train_on_digits_writes_history_plot_and_params(tmp_path, capsys):
    outputs = ["--json", str(tmp_path / "h.json"), "--plot", str(tmp_path / "h.png")]
    outputs += ["--save", str(tmp_path / "p.npz")]
    status = main(["train", "--dataset", "digits", "--epochs", "3", "--no-progress", *outputs])
    out = capsys.readouterr().out
    assert status == 0
    assert "Epoch 0: " in out and " / 359" in out
    record = read_json(tmp_path / "h.json")
    assert len(record["history"]) == 3
    assert 0.5 < record["final_accuracy"] <= 1.0
    assert set(record["history"][0]) == {
        "epoch",
        "train_seconds",
        "train_cost",
        "train_accuracy",
        "eval_cost",
        "eval_accuracy",
    }
    for field in ("peak_accuracy", "peak_epoch", "median_train_seconds_per_epoch"):
        assert field in record
    assert record["config"]["learning_rates"] == [3.0] and record["diverged"] is None
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, meta = io.load_params(tmp_path / "p.npz")
    assert meta["sizes"] == [64, 30, 10] and meta["activation"] == "sigmoid"


def test_train_with_adam_and_relu(capsys):
    argv = ["train", *TINY, "--optimizer", "adam", "--eta", "0.01", "--activation", "relu"]
    argv += ["--output-activation", "sigmoid", "--cost", "cross_entropy", "--init", "scaled_normal"]
    assert main(argv) == 0
    assert "digits test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sizes", "784,30,10"], "does not fit digits"),
        (["--activation", "relu", "--cost", "cross_entropy"], "output_activation"),
        (["--plot", "/no/such/dir/p.png"], "does not exist"),
        # Was "--optimizer adam --lmbda 1" (now trains): both forms of L2 at once.
        (["--lmbda", "1", "--weight-decay", "0.1"], "give one"),
        (["--rule", "sign", "--feedback-scale", "0.3"], "rule sign has none"),
    ],
)
def test_bad_options_fail_clearly_before_loading_data(argv, message, capsys, no_data):
    assert main(["train", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_mnist_fails_clearly(capsys, tmp_path):
    argv = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "t10k" in err and "Traceback" not in err


@pytest.mark.slow
def test_seeds_and_learning_rates_write_every_run(tmp_path, capsys):
    history = tmp_path / "runs.json"
    argv = ["train", "--epochs", "2", "--seeds", "0-2", "--eta", "0.5,3", "--no-progress"]
    assert main(argv + ["--json", str(history), "--plot", str(tmp_path / "runs.png")]) == 0
    out = capsys.readouterr().out
    assert "6 runs in one program" in out
    assert "learning rate 3, 3 runs: test accuracy final" in out and " ± " in out
    record = read_json(history)
    assert [(r["seed"], r["learning_rate"]) for r in record["runs"]] == [
        (s, e) for e in (0.5, 3.0) for s in (0, 1, 2)
    ]
    assert all(len(r["history"]) == 2 and r["diverged"] is None for r in record["runs"])
    summary = record["summary"]
    assert [s["learning_rate"] for s in summary] == [0.5, 3.0]
    finals = [r["final_accuracy"] for r in record["runs"][3:]]
    assert summary[1]["final_mean"] == pytest.approx(np.mean(finals))
    assert summary[1]["final_std"] == pytest.approx(np.std(finals, ddof=1))
    assert summary[1]["final_best"] == max(finals)
    # Run (seed 2, eta 3) is the run `train --seed 2` gives on its own.
    alone = tmp_path / "alone.json"
    argv = ["train", "--epochs", "2", "--seed", "2", "--no-progress", "--json", str(alone)]
    assert main(argv) == 0
    for many, one in zip(record["runs"][5]["history"], read_json(alone)["history"]):
        assert many["eval_accuracy"] == one["eval_accuracy"]
        assert many["train_cost"] == pytest.approx(one["train_cost"], rel=1e-5)


def test_several_runs_save_one_file_per_run(tmp_path, capsys):
    argv = ["train", *TINY, "--seeds", "0-1", "--eta", "0.5,1", "--rule", "kp"]
    assert main(argv + ["--weight-decay", "1e-3", "--save", str(tmp_path / "p.npz")]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"p-seed{s}-lr{lr}.npz" for lr in ("0.5", "1") for s in (0, 1))
    params, meta = io.load_params(tmp_path / "p-seed1-lr0.5.npz")
    assert (meta["seed"], meta["learning_rate"], meta["rule"]) == (1, 0.5, "kp")
    assert io.load_feedback(tmp_path / "p-seed1-lr0.5.npz")[0].shape == params[1].w.shape


def test_divergence_stops_with_a_message_and_strict_json(tmp_path, capsys):
    argv = ["train", "--epochs", "3", "--eta", "1e30", "--no-progress"]
    paths = ["--json", str(tmp_path / "h.json"), "--save", str(tmp_path / "p.npz")]
    assert main(argv + paths) == 1
    err = capsys.readouterr().err
    assert "training diverged at epoch 1 (cost nan); try a smaller learning rate" in err
    record = read_json(tmp_path / "h.json")
    assert record["history"][0]["train_cost"] is None and len(record["history"]) == 1
    assert record["diverged"].startswith("training diverged at epoch 1")
    assert not (tmp_path / "p.npz").exists()  # NaN params are not saved


def test_a_diverged_run_of_several_is_marked_and_the_others_go_on(tmp_path, capsys):
    argv = ["train", *TINY, "--epochs", "2", "--seeds", "0-1", "--eta", "1,1e30"]
    assert main(argv + ["--json", str(tmp_path / "h.json"), "--save", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "run seed 0 learning rate 1e+30: training diverged at epoch 1" in out
    record = read_json(tmp_path / "h.json")
    assert [bool(r["diverged"]) for r in record["runs"]] == [False, False, True, True]
    assert [s["learning_rate"] for s in record["summary"]] == [1.0]
    assert all(len(r["history"]) == 2 for r in record["runs"])
    assert sorted(p.name for p in tmp_path.glob("p-*")) == ["p-seed0-lr1", "p-seed1-lr1"]
    assert main([*argv[:-1], "1e30,1e31"]) == 1
    assert "error: every run diverged" in capsys.readouterr().err


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_write_failure_at_the_end_keeps_the_history(tmp_path, capsys, monkeypatch):
    """Fault injection: the disk fills when the params are written after training."""
    monkeypatch.setattr(np, "savez", _disk_full)
    save, history = tmp_path / "p.npz", tmp_path / "h.json"
    argv = ["train", *TINY, "--save", str(save), "--json", str(history)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"error: Cannot write params {save}: No space left on device" in err
    assert "Traceback" not in err
    assert len(read_json(history)["history"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]


def test_ctrl_c_writes_the_finished_epochs_and_keeps_earlier_outputs(tmp_path, capsys, monkeypatch):
    """Ctrl-C in epoch 2 (simulated where each epoch is checked for divergence)."""
    save, history = tmp_path / "p.npz", tmp_path / "h.json"
    save.write_bytes(b"earlier params")
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(diagnostics, "check_divergence", interrupt)
    argv = ["train", *TINY, "--epochs", "5", "--save", str(save), "--json", str(history)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err == f"interrupted after 2 of 5 epochs; history written to {history}\n"
    assert [row["epoch"] for row in read_json(history)["history"]] == [1, 2]
    assert save.read_bytes() == b"earlier params"


def test_ctrl_c_before_training_exits_130(capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load_digits", interrupt)
    assert main(["train", *TINY]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_rule_trains_and_saves_its_feedback(tmp_path):
    save, history = tmp_path / "p.npz", tmp_path / "h.json"
    argv = ["train", "--rule", "kp", "--weight-decay", "1e-3", "--epochs", "2", "--eta", "0.5"]
    argv += ["--feedback-scale", "0.3", "--init", "scaled_normal", "--no-progress"]
    assert main(argv + ["--save", str(save), "--json", str(history)]) == 0
    matrices = fbp.io.load_feedback(save)
    params, meta = fbp.io.load_params(save)
    assert meta["rule"] == "kp" and [b.shape for b in matrices] == [params[1].w.shape]
    record = read_json(history)
    rows = record["history"]
    assert len(rows[0]["update_angles"]) == 2 and len(rows[0]["feedback_angles"]) == 1
    assert rows[-1]["feedback_angles"][0] < rows[0]["feedback_angles"][0]  # B turns towards w
    assert rows[0]["feedback_angles"][0] < record["initial"]["feedback_angles"][0]


@pytest.mark.slow
def test_tracks_the_noise_scale_and_trains_with_diag_ggn(tmp_path):
    history = tmp_path / "h.json"
    argv = ["train", "--epochs", "2", "--optimizer", "diag_ggn", "--eta", "0.3"]
    argv += ["--init", "scaled_normal"]
    argv += ["--output-activation", "softmax", "--cost", "log_likelihood", "--no-progress"]
    argv += ["--track", "noise-scale", "--track-examples", "500", "--json", str(history)]
    argv += ["--plot", str(tmp_path / "h.png")]
    assert main(argv) == 0
    rows = read_json(history)["history"]
    assert [sorted(k for k in row if k.startswith("noise")) for row in rows] == [
        ["noise_grad_norm_sq", "noise_scale", "noise_trace"]
    ] * 2
    assert all(row["noise_trace"] > 0 for row in rows)
    assert rows[-1]["eval_accuracy"] > 0.5


def _digits(dtype=jnp.float64):
    train, test = data.load_digits()
    xs, ys = (jnp.asarray(a, dtype) for a in (train.x, data.one_hot(train.y)))
    return xs, ys, jnp.asarray(test.x, dtype), test.y


def test_one_run_is_network_py_with_the_documented_keys(tmp_path):
    """init_key, key = split(key(seed)); each epoch key, epoch_key = split(key); then
    `train_epoch` (network2.py's L2 as weight decay lmbda / n): what the CLI always did."""
    history = tmp_path / "h.json"
    argv = ["train", *TINY, "--epochs", "2", "--seed", "4", "--eta", "0.5", "--lmbda", "5"]
    assert main(argv + ["--float64", "--json", str(history)]) == 0
    xs, ys, test_xs, test_labels = _digits()
    init_key, key = jax.random.split(jax.random.key(4))
    params = fbp.init_mlp(init_key, [64, 8, 10], dtype=jnp.float64)
    for row in read_json(history)["history"]:
        key, epoch_key = jax.random.split(key)
        params = fbp.train_epoch(
            epoch_key, params, xs, ys, 0.5, batch_size=10, weight_decay=5 / len(xs)
        )
        want = diagnostics.evaluate(params, test_xs, test_labels) / len(test_xs)
        assert row["eval_accuracy"] == want
        cost = diagnostics.total_cost(params, xs, ys, weight_decay=5 / len(xs))
        assert row["train_cost"] == pytest.approx(cost, rel=1e-12)


def test_a_rule_is_the_training_composition_with_b_from_seed_plus_a_million(tmp_path):
    """FeedbackParams trained by RuleGradient with the optimizer (here momentum after
    the weight decay), B from key(seed + 10**6)."""
    history = tmp_path / "h.json"
    argv = ["train", *TINY, "--seed", "1", "--eta", "0.5", "--rule", "kp", "--weight-decay"]
    argv += ["0.01", "--optimizer", "momentum", "--float64", "--track-examples", "50"]
    assert main(argv + ["--json", str(history)]) == 0
    xs, ys, test_xs, test_labels = _digits()
    init_key, key = jax.random.split(jax.random.key(1))
    params = fbp.init_mlp(init_key, [64, 8, 10], dtype=jnp.float64)
    matrices = feedback.init_feedback(jax.random.key(1 + 10**6), params, "kp")
    state = feedback.FeedbackParams(params, matrices)
    decay = optax.add_decayed_weights(0.01, mask=training.weights_only)
    optimizer = optax.chain(decay, optax.sgd(0.5, momentum=0.9))
    _, epoch_key = jax.random.split(key)
    gradient = feedback.RuleGradient("kp", 0.01)
    opt_state = optimizer.init(state)
    state, _ = training.epoch(
        epoch_key, optimizer, state, opt_state, xs, ys, batch_size=10, gradient=gradient
    )
    row = read_json(history)["history"][0]
    assert row["eval_accuracy"] == diagnostics.evaluate(state.params, test_xs, test_labels) / 359
    angles = feedback.alignment_angles(state.params, state.feedback, xs[:50], ys[:50], rule="kp")
    np.testing.assert_allclose(row["update_angles"][:-1], angles.update[:-1], rtol=1e-9)
    np.testing.assert_allclose(row["feedback_angles"], angles.feedback, rtol=1e-9)


def test_the_console_script_entry_point_is_main():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "functional-bp"]
    assert script.value == "functional_bp.cli:main" and script.load() is main
