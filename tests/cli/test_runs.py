"""`functional_bp.runs`, the library behind ``train``: checks before data, many runs as
separate runs, the interrupt, the summaries; and that it prints nothing."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import assert_tree_close

from functional_bp import curvature, init_mlp, runs, training

TINY = runs.Config(sizes=(64, 8, 10), epochs=1, float64=True, track_examples=50)


@pytest.fixture(scope="module")
def digits():
    return runs.load(TINY)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(dataset="cifar"), "Unknown dataset 'cifar'"),
        (dict(optimizer="lbfgs"), "Unknown optimizer"),
        (dict(track=("angles",)), "Unknown track"),
        (dict(sizes=(64, 10)), None),  # fits: no hidden layer
        (dict(sizes=(64, 8, 9)), "needs 64 inputs and 10 outputs"),
        (dict(dataset="mnist"), "needs 784 inputs"),
        (dict(learning_rates=(1.0, 1.0)), "distinct learning rates"),
        (dict(learning_rates=()), "finite learning rates > 0"),
        (dict(seeds=(1, 1)), "distinct seeds"),
        (dict(epochs=0), "epochs >= 1"),
        (dict(ggn_decay=1.0), r"ggn_decay in [0, 1)"),
        (dict(lmbda=1.0, weight_decay=0.1), "give one"),
        (dict(rule="fa", optimizer="diag_ggn"), "diag_ggn cannot train rule fa"),
        (dict(feedback_scale=0.3), "rule bp has none"),
        (dict(track=("noise-scale",), track_examples=1), "track_examples must be >= 2"),
        (dict(cost="cross_entropy", activation="relu"), "output_activation"),
        (dict(eval_on="validation"), "digits has no validation set"),
    ],
)
def test_check_refuses_with_the_reason(change, message):
    config = dataclasses.replace(TINY, **change)
    if message is None:
        runs.check(config)
        return
    with pytest.raises(ValueError) as error:
        runs.check(config)
    assert message in str(error.value)


def _leaves(tree, r=None):
    return tree if r is None else jax.tree.map(lambda a: a[r], tree)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(dict(optimizer="adam", rule="kp", weight_decay=1e-3), marks=pytest.mark.slow),
        pytest.param(dict(optimizer="diag_ggn", lmbda=1.0), marks=pytest.mark.slow),
    ],
    ids=["adam kp", "diag_ggn lmbda"],
)
def test_many_runs_are_the_separate_runs(change, digits, capsys):
    """Each run's learning rate in its optimizer state (optax.inject_hyperparams), keys,
    params and B per run: run r of the program is the run alone."""
    config = dataclasses.replace(TINY, seeds=(0, 1), learning_rates=(0.01, 0.1), **change)
    many = runs.train(config, digits)
    for r in (0, 3):  # the first run, and the one that differs in both seed and eta
        seed, lr = config.runs[r]
        one = runs.train(dataclasses.replace(config, seeds=(seed,), learning_rates=(lr,)), digits)
        assert_tree_close(_leaves(many.params, r), one.params, rtol=1e-9)
        assert_tree_close(_leaves(many.feedback, r), one.feedback, rtol=1e-9)
        want, got = one.record["history"][0], many.record["runs"][r]["history"][0]
        assert got["eval_accuracy"] == want["eval_accuracy"]
        assert got["train_cost"] == pytest.approx(want["train_cost"], rel=1e-9)
    assert capsys.readouterr() == ("", "")  # library code prints nothing


@pytest.mark.slow
def test_a_shared_shuffle_is_the_first_runs_order(digits):
    config = dataclasses.replace(TINY, seeds=(0, 1), shared_shuffle=True, optimizer="momentum")
    params = runs.train(config, digits).params
    _, first_key = jax.random.split(jax.random.key(0))
    _, epoch_key = jax.random.split(first_key)
    init_key, _ = jax.random.split(jax.random.key(1))
    second = init_mlp(init_key, [64, 8, 10], dtype=np.float64)
    optimizer = runs.optimizer(config, 3.0)
    want, _ = training.epoch(
        epoch_key, optimizer, second, optimizer.init(second), digits.xs, digits.ys, batch_size=10
    )
    assert_tree_close(_leaves(params, 1), want, rtol=1e-9)


def test_diag_ggn_keeps_its_curvature_input_with_the_learning_rate_in_its_state():
    config = runs.Config(optimizer="diag_ggn", damping=0.3, ggn_decay=0.5)
    optimizer = runs.optimizer(config, 0.2, 1e-3)
    assert isinstance(optimizer, curvature.CurvatureTransformation)
    assert dict(optimizer.extra_inputs) == {"diag_ggn": curvature.mean_diag_ggn}
    params = init_mlp(jax.random.key(0), [3, 2])
    (_, state) = optimizer.init(params)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.2)


def test_ctrl_c_keeps_the_finished_epochs(digits):
    def on_epoch(epoch: runs.Epoch) -> None:
        assert [row["epoch"] for row in epoch.rows] == [epoch.epoch] * 2
        if epoch.epoch == 2:
            raise KeyboardInterrupt

    config = dataclasses.replace(TINY, seeds=(0, 1), epochs=5)
    with pytest.raises(runs.Interrupted) as stop:
        runs.train(config, digits, on_epoch=on_epoch)
    assert isinstance(stop.value, KeyboardInterrupt)
    record = stop.value.result.record
    assert [len(run["history"]) for run in runs.per_run(record)] == [2, 2]
    assert jax.tree.leaves(stop.value.result.params)[0].shape[0] == 2


def test_summaries():
    rows = [
        dict(epoch=1, train_seconds=3.0, eval_accuracy=0.5),
        dict(epoch=2, train_seconds=1.0, eval_accuracy=0.7),
        dict(epoch=3, train_seconds=2.0, eval_accuracy=0.6),
    ]
    assert runs.summary(rows) == dict(
        final_accuracy=0.6,
        peak_accuracy=0.7,
        peak_epoch=2,
        median_train_seconds_per_epoch=1.5,
        first_epoch_seconds=3.0,
    )
    done = [dict(learning_rate=1.0, diverged=None, history=rows, **runs.summary(rows))] * 2
    failed = dict(learning_rate=2.0, diverged="diverged", history=rows, **runs.summary(rows))
    (row,) = runs.sweep_summary([*done, failed], [1.0, 2.0])
    assert row == dict(
        learning_rate=1.0,
        runs=2,
        final_mean=pytest.approx(0.6),
        final_std=0.0,
        final_best=0.6,
        peak_mean=pytest.approx(0.7),
        peak_best=0.7,
    )
    assert runs.strict_json({"a": [float("nan"), 1.0], "b": float("inf")}) == {
        "a": [None, 1.0],
        "b": None,
    }
    assert runs.run_path("out/p.npz", 3, 0.5).as_posix() == "out/p-seed3-lr0.5.npz"
