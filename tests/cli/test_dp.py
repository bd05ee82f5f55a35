"""``functional_bp train --dp``: private training with Poisson sampling; the epsilon spent
after every epoch is printed and recorded, and is the accountant's for the steps so far."""

import math

import pytest

from cli.helpers import read_json
from functional_bp import privacy, runs
from functional_bp.cli import main

# Digits (1,438 training examples), a tiny network, two epochs.
DP = ["--sizes", "64,8,10", "--epochs", "2", "--no-progress", "--dp", "--clip", "1"]
N_TRAIN = 1438
# A network that learns in two noisy epochs.
SOFTMAX = ["--activation", "relu", "--output-activation", "softmax", "--cost", "log_likelihood"]
SOFTMAX += ["--init", "scaled_normal"]


def test_a_private_run_records_the_epsilon_spent_after_every_epoch(in_tmp, capsys):
    argv = ["train", *DP, "--noise-multiplier", "1.1", "--batch-size", "64", "--eta", "1"]
    assert main([*argv, *SOFTMAX, "--json", "out.json"]) == 0
    out = capsys.readouterr().out
    record = read_json(in_tmp / "out.json")
    q = 64 / N_TRAIN
    steps = privacy.steps_per_epoch(q)
    assert steps == round(N_TRAIN / 64)
    epsilons = [row["epsilon"] for row in record["history"]]
    assert len(epsilons) == 2 and 0 < epsilons[0] < epsilons[1]
    for epoch, epsilon in enumerate(epsilons, 1):
        expected = privacy.epsilon(1.1, q, epoch * steps, 1e-5)
        assert epsilon == pytest.approx(expected, rel=1e-9)
    assert record["epsilon"] == epsilons[-1]
    setting = record["privacy"]
    assert setting["clip"] == 1.0 and setting["noise_multiplier"] == 1.1
    assert setting["delta"] == 1e-5 and setting["accountant"] == "rdp"
    assert setting["sample_rate"] == pytest.approx(q)
    assert setting["steps_per_epoch"] == steps
    assert setting["epsilon"] == pytest.approx(epsilons[-1])
    assert record["config"]["dp"] is True and record["config"]["clip"] == 1.0
    assert 0.3 < record["final_accuracy"] <= 1.0  # it learns (10 classes: 0.1 by chance)
    assert "Epoch 1: " in out and f"epsilon {epsilons[-1]:.3g} (delta 1e-05)" in out
    assert "DP-SGD: Poisson sampling" in out


def test_a_target_epsilon_is_spent_by_the_end_of_the_run(in_tmp, capsys):
    argv = ["train", *DP, "--target-epsilon", "3", "--batch-size", "32", "--json", "t.json"]
    assert main(argv) == 0
    record = read_json(in_tmp / "t.json")
    assert record["epsilon"] == pytest.approx(3.0, rel=0.03)
    assert record["epsilon"] <= 3.0 * (1 + 1e-6)
    sigma = record["privacy"]["noise_multiplier"]
    assert record["config"]["noise_multiplier"] is None and sigma > 0
    # More epochs of the same budget need more noise.
    argv = ["train", *DP, "--target-epsilon", "3", "--batch-size", "32", "--epochs", "4"]
    assert main([*argv, "--json", "t4.json"]) == 0
    assert read_json(in_tmp / "t4.json")["privacy"]["noise_multiplier"] > sigma


def test_several_seeds_train_privately_in_one_program(in_tmp, capsys):
    argv = ["train", *DP, "--noise-multiplier", "1.0", "--batch-size", "64", "--seeds", "0-2"]
    assert main([*argv, "--eta", "0.5", "--json", "s.json"]) == 0
    out = capsys.readouterr().out
    record = read_json(in_tmp / "s.json")
    assert [run["seed"] for run in record["runs"]] == [0, 1, 2]
    first = [row["epsilon"] for row in record["runs"][0]["history"]]
    for run in record["runs"]:
        assert run["diverged"] is None
        assert [row["epsilon"] for row in run["history"]] == first  # one sigma, one q
    finals = [run["final_accuracy"] for run in record["runs"]]
    assert len(set(finals)) > 1  # each run its own samples and noise
    assert "epsilon" in out and "3 runs in one program" in out


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_an_optax_optimizer_trains_privately(optimizer, in_tmp, capsys):
    argv = ["train", *DP, "--noise-multiplier", "1.1", "--batch-size", "64"]
    argv += ["--optimizer", optimizer, "--eta", "0.01", "--accountant", "pld", "--json", "o.json"]
    assert main(argv) == 0
    record = read_json(in_tmp / "o.json")
    assert record["privacy"]["accountant"] == "pld"
    q, steps = 64 / N_TRAIN, privacy.steps_per_epoch(64 / N_TRAIN)
    expected = privacy.epsilon(1.1, q, 2 * steps, 1e-5, accountant="pld")
    assert record["epsilon"] == pytest.approx(expected, rel=1e-6)


def test_the_library_runs_a_private_config():
    config = runs.Config(
        sizes=(64, 8, 10),
        epochs=1,
        batch_size=64,
        learning_rates=(0.5,),
        dp=True,
        clip=1.0,
        noise_multiplier=1.1,
        delta=1e-6,
    )
    runs.check(config)
    epochs = []
    result = runs.train(config, runs.load(config), on_epoch=epochs.append)
    assert math.isfinite(epochs[0].rows[0]["epsilon"])
    assert result.record["privacy"]["delta"] == 1e-6
    assert result.record["privacy"]["max_batch"] >= 64
