"""Private training (``train --dp``) started wrong: every value and combination that
cannot train privately is refused before any data is loaded, with one ``error:`` line
naming the option (exit 2, no traceback); a weak delta is a warning, not a refusal."""

import jax
import pytest
from cli.helpers import assert_refused, run

from functional_bp import runs

DP = ["--dp", "--clip", "1"]
SIGMA = ["--noise-multiplier", "1.1"]


def _id(case) -> str:
    return " ".join(case[0])[:70]


# Refused by argparse: (argv, the option its message names).
ARGPARSE = [
    ([*DP, "--clip", "0", *SIGMA], "--clip"),
    ([*DP, "--clip", "-1", *SIGMA], "--clip"),
    ([*DP, "--clip", "nan", *SIGMA], "--clip"),
    ([*DP, "--clip", "inf", *SIGMA], "--clip"),
    ([*DP, "--clip", "one", *SIGMA], "--clip"),
    ([*DP, "--noise-multiplier", "0"], "--noise-multiplier"),
    ([*DP, "--noise-multiplier", "-1.1"], "--noise-multiplier"),
    ([*DP, "--noise-multiplier", "nan"], "--noise-multiplier"),
    ([*DP, "--noise-multiplier", "inf"], "--noise-multiplier"),
    ([*DP, "--noise-multiplier", ""], "--noise-multiplier"),
    ([*DP, "--target-epsilon", "0"], "--target-epsilon"),
    ([*DP, "--target-epsilon", "-2"], "--target-epsilon"),
    ([*DP, "--target-epsilon", "nan"], "--target-epsilon"),
    ([*DP, "--target-epsilon", "inf"], "--target-epsilon"),
    ([*DP, *SIGMA, "--delta", "0"], "--delta"),
    ([*DP, *SIGMA, "--delta", "1"], "--delta"),
    ([*DP, *SIGMA, "--delta", "1.5"], "--delta"),
    ([*DP, *SIGMA, "--delta", "-1e-5"], "--delta"),
    ([*DP, *SIGMA, "--delta", "nan"], "--delta"),
    ([*DP, *SIGMA, "--accountant", "moments"], "--accountant"),
]


@pytest.mark.parametrize("argv,option", ARGPARSE, ids=[_id(c) for c in ARGPARSE])
def test_argparse_refuses_the_value(argv, option, capsys, no_data, in_tmp):
    assert_refused(*run(["train", *argv, "--no-progress"], capsys), f"argument {option}")


# A private option without --dp: (argv, option).
WITHOUT_DP = [
    (["--clip", "1"], "--clip"),
    (["--noise-multiplier", "1.1"], "--noise-multiplier"),
    (["--target-epsilon", "2"], "--target-epsilon"),
    (["--delta", "1e-6"], "--delta"),
    (["--delta", "1e-5"], "--delta"),  # the default, given: still ignored
    (["--accountant", "pld"], "--accountant"),
    (["--accountant", "rdp"], "--accountant"),
]


@pytest.mark.parametrize("argv,option", WITHOUT_DP, ids=[_id(c) for c in WITHOUT_DP])
def test_a_private_option_without_dp_is_ignored_and_refused(argv, option, capsys, no_data, in_tmp):
    status, err = run(["train", *argv, "--no-progress"], capsys)
    assert_refused(status, err, f"error: {option} would be ignored")
    assert "--dp" in err


# Each value parses, the combination cannot train privately: (argv, option named).
COMBINATIONS = [
    (["--dp", *SIGMA], "--clip"),
    (["--dp"], "--clip"),
    (DP, "--noise-multiplier"),  # neither
    (DP, "--target-epsilon"),
    ([*DP, *SIGMA, "--target-epsilon", "2"], "--noise-multiplier"),  # both
    ([*DP, *SIGMA, "--target-epsilon", "2"], "--target-epsilon"),
    ([*DP, *SIGMA, "--optimizer", "diag_ggn"], "--optimizer"),
    ([*DP, *SIGMA, "--rule", "fa"], "--rule"),
    ([*DP, *SIGMA, "--rule", "sign"], "--rule"),
    ([*DP, *SIGMA, "--rule", "kp"], "--rule"),
    ([*DP, *SIGMA, "--batch-size", "1439"], "--batch-size"),  # digits has 1438
    ([*DP, *SIGMA, "--batch-size", "100000"], "--batch-size"),
    (
        [*DP, *SIGMA, "--dataset", "mnist", "--sizes", "784,8,10", "--batch-size", "50001"],
        "--batch-size",
    ),
    ([*DP, *SIGMA, "--damping", "0.2"], "--damping"),  # an optimizer option still ignored
]


@pytest.mark.parametrize("argv,option", COMBINATIONS, ids=[_id(c) for c in COMBINATIONS])
def test_a_combination_that_cannot_train_privately_is_refused(
    argv, option, capsys, no_data, in_tmp
):
    assert_refused(*run(["train", *argv, "--no-progress"], capsys), option)


def test_a_batch_of_the_whole_training_set_is_allowed(capsys, no_data, in_tmp, monkeypatch):
    """q = 1 (every example every step) is the largest rate: it reaches the data."""
    monkeypatch.setattr(runs, "load", lambda config: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["train", *DP, *SIGMA, "--batch-size", "1438", "--no-progress"]
    assert run(argv, capsys)[0] == 130


def test_a_weak_delta_is_a_warning_and_the_run_goes_on(capsys, no_data, in_tmp, monkeypatch):
    loaded = []

    def stop(config):
        loaded.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "load", stop)
    status, err = run(["train", *DP, *SIGMA, "--delta", "0.01", "--no-progress"], capsys)
    assert status == 130 and loaded and loaded[0].delta == 0.01
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "--delta" in warnings[0] and "1/1438" in warnings[0]
    assert "error:" not in err
    # Below 1/n: no warning.
    status, err = run(["train", *DP, *SIGMA, "--delta", "1e-4", "--no-progress"], capsys)
    assert status == 130 and "warning" not in err


# A target no noise multiplier reaches: q = 1 (the whole set every step), 10**7 steps,
# delta 1e-10.
UNREACHABLE = [*DP, "--target-epsilon", "1e-9", "--batch-size", "1438", "--epochs", "10000000"]
UNREACHABLE += ["--delta", "1e-10"]


def test_an_unattainable_target_epsilon_is_one_error_line(capsys, no_data, in_tmp):
    """Before any data is loaded or anything trained: the target, and what it cannot be
    reached at (the sample rate, the steps, delta), not dp-accounting's traceback."""
    status, err = run(["train", *UNREACHABLE, "--no-progress", "--json", "h.json"], capsys)
    assert_refused(status, err, "--target-epsilon")
    line = err.strip().splitlines()[-1]
    assert "target_epsilon (--target-epsilon) 1e-09 cannot be reached" in line, line
    for what in ("sample rate q = 1", "10000000 steps", "delta 1e-10", "--epochs", "--batch-size"):
        assert what in line, line
    assert "NoBracketIntervalFoundError" not in err
    assert not (in_tmp / "h.json").exists()


def test_several_processes_are_refused(monkeypatch):
    """One process trains a private run (`runs.check` under jax.distributed)."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    config = runs.Config(dp=True, clip=1.0, noise_multiplier=1.1)
    with pytest.raises(ValueError, match="--dp"):
        runs.check(config)


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(clip=1.0), "would be ignored"),
        (dict(noise_multiplier=1.1), "would be ignored"),
        (dict(target_epsilon=1.0), "would be ignored"),
        (dict(delta=1e-6), "would be ignored"),
        (dict(accountant="pld"), "would be ignored"),
        (dict(dp=True, noise_multiplier=1.1), "needs clip"),
        (dict(dp=True, clip=float("inf"), noise_multiplier=1.1), "clip"),
        (dict(dp=True, clip=1.0, noise_multiplier=float("nan")), "noise_multiplier"),
        (dict(dp=True, clip=1.0, target_epsilon=-1.0), "target_epsilon"),
        (dict(dp=True, clip=1.0, noise_multiplier=1.1, delta=0.0), "delta"),
        (dict(dp=True, clip=1.0, noise_multiplier=1.1, accountant="gdp"), "accountant"),
    ],
)
def test_the_library_refuses_a_private_config_too(fields, message):
    with pytest.raises(ValueError, match=message):
        runs.check(runs.Config(**fields))
