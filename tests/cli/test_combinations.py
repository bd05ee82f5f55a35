"""Every combination of --rule, --optimizer, several runs and --track trains, or is
refused before any data is loaded, with the reason (exit 2)."""

import itertools
import math

import pytest

from cli.helpers import TINY, read_json
from functional_bp import runs
from functional_bp.cli import main

RULES = [rule for rule in runs.RULES if rule != "bp"]
OPTIMIZERS = [name for name in runs.OPTIMIZERS if name != "diag_ggn"]
# The quick tier trains each rule and each optimizer once; the slow tier every pair.
QUICK_PAIRS = {("dfa", "adam"), ("sign", "rmsprop"), ("kp", "adamw")}
QUICK_PAIRS |= {("fa", "nesterov"), ("kp", "sgd")}


def test_the_only_refused_combination_is_diag_ggn_with_a_rule():
    """The whole grid, checked as `runs.check` checks it before any data is loaded."""
    refused = set()
    runs_options = [dict(), dict(seeds=(0, 1)), dict(learning_rates=(0.5, 1.0))]
    tracks = [(), ("noise-scale",), ("layer-norms",), tuple(runs.TRACKS)]
    for rule, optimizer, many, track in itertools.product(
        runs.RULES, runs.OPTIMIZERS, runs_options, tracks
    ):
        config = runs.Config(rule=rule, optimizer=optimizer, track=track, **many)
        try:
            runs.check(config)
        except ValueError as error:
            assert "diag_ggn cannot train rule" in str(error)
            refused.add((rule, optimizer))
    assert refused == {(rule, "diag_ggn") for rule in RULES}


@pytest.mark.parametrize("rule", RULES)
def test_diag_ggn_with_a_rule_is_refused_with_the_reason(rule, capsys, no_data):
    assert main(["train", "--rule", rule, "--optimizer", "diag_ggn", "--seeds", "0-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: optimizer diag_ggn cannot train rule {rule}")
    assert "the network's own params" in err and "Traceback" not in err


def _finite(row: dict) -> bool:
    values = [v for v in row.values() if not isinstance(v, list)]
    values += [x for v in row.values() if isinstance(v, list) for x in v]
    return all(v is not None and math.isfinite(v) for v in values if not isinstance(v, str))


def _train(tmp_path, argv) -> dict:
    path = tmp_path / "h.json"
    assert main(["train", *TINY, "--track-examples", "50", *argv, "--json", str(path)]) == 0
    return read_json(path)


@pytest.mark.parametrize(
    "rule,optimizer",
    [
        pytest.param(*pair, marks=() if pair in QUICK_PAIRS else pytest.mark.slow)
        for pair in itertools.product(RULES, OPTIMIZERS)
    ],
)
def test_a_rule_trains_with_an_optimizer(rule, optimizer, tmp_path):
    record = _train(tmp_path, ["--rule", rule, "--optimizer", optimizer, "--eta", "0.01"])
    (row,) = record["history"]
    assert len(row["update_angles"]) == 2 and len(row["feedback_angles"]) == 1
    assert _finite({k: v for k, v in row.items() if k != "feedback_angles"})
    assert (row["feedback_angles"][0] is None) == (rule == "dfa")  # dfa's B has another shape


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES)
def test_several_runs_of_a_rule_track_everything(rule, tmp_path):
    argv = ["--rule", rule, "--seeds", "0-1", "--eta", "0.5,1", "--weight-decay", "1e-3"]
    record = _train(tmp_path, [*argv, "--track", "noise-scale", "--track", "layer-norms"])
    assert [(r["seed"], r["learning_rate"]) for r in record["runs"]] == [
        (0, 0.5),
        (1, 0.5),
        (0, 1.0),
        (1, 1.0),
    ]
    for run in record["runs"]:
        (row,) = run["history"]
        for field in ("update_angles", "noise_scale", "delta_norms", "weight_grad_norms"):
            assert field in row and field in run["initial"]
        assert _finite({k: v for k, v in row.items() if k != "feedback_angles"})
    # Each run its own initial weights (seed) and B: the initial angles differ by seed only.
    initial = [run["initial"]["update_angles"] for run in record["runs"]]
    assert initial[0] == initial[2] and initial[1] == initial[3] and initial[0] != initial[1]
    assert [s["learning_rate"] for s in record["summary"]] == [0.5, 1.0]


@pytest.mark.parametrize(
    "optimizer",
    [
        pytest.param(name, marks=() if name == "diag_ggn" else pytest.mark.slow)
        for name in runs.OPTIMIZERS
    ],
)
def test_several_runs_with_an_optimizer(optimizer, tmp_path):
    argv = ["--optimizer", optimizer, "--seeds", "0-1", "--eta", "0.01,0.1", "--lmbda", "1"]
    argv += ["--track", "noise-scale", "--shared-shuffle"]
    argv += ["--output-activation", "softmax", "--cost", "log_likelihood"]
    record = _train(tmp_path, argv)
    assert len(record["runs"]) == 4 and len(record["summary"]) == 2
    for run in record["runs"]:
        assert run["diverged"] is None and _finite(run["history"][0])
    # Learning rates differ per run (each in its optimizer state): so do the results.
    costs = [run["history"][0]["train_cost"] for run in record["runs"]]
    assert len(set(costs)) == 4
