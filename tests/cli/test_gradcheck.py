"""``functional_bp gradcheck``: the check of a random network, as the options describe it."""

import subprocess
import sys

import pytest

from functional_bp import Network, runs
from functional_bp.cli import main
from functional_bp.gradcheck import GradCheck, LeafCheck


def test_gradcheck_command(capsys):
    assert main(["gradcheck", "--sizes", "20,7,3", "--float64", "--activation", "tanh"]) == 0
    out = capsys.readouterr().out
    assert "all ok" in out and "ratio manual/autodiff" in out and "float64" in out


def test_the_options_reach_the_check(capsys, monkeypatch):
    seen = {}

    def spy(sizes, **kwargs):
        seen.update(kwargs, sizes=sizes)
        return real(sizes, **kwargs)

    real = runs.gradient_check
    monkeypatch.setattr(runs, "gradient_check", spy)
    argv = ["gradcheck", "--sizes", "6,5,3", "--activation", "tanh", "--output-activation"]
    argv += ["sigmoid", "--cost", "cross_entropy", "--init", "scaled_normal", "--seed", "7"]
    assert main(argv + ["--batch-size", "4"]) == 0
    assert seen["net"] == Network("tanh", "sigmoid", "cross_entropy")
    assert (seen["sizes"], seen["seed"], seen["init"], seen["batch_size"]) == (
        [6, 5, 3],
        7,
        "scaled_normal",
        4,
    )
    out = capsys.readouterr().out
    assert "network [6, 5, 3], batch 4" in out and "float32" in out


@pytest.mark.parametrize("command", ["gradcheck", "demo"])
def test_a_failed_check_exits_1(command, tmp_path, capsys, monkeypatch):
    row = LeafCheck(1, "w", (3, 2), 1.0, 1.0, 1.0, 1.0, 6, False)
    report = runs.GradientReport(GradCheck((row,), "float32", 1e-4, 1e-2, 1e-3, 0.5), 1e-5, 1e-5)
    monkeypatch.setattr(runs, "gradient_check", lambda *args, **kwargs: report)
    demo = ["--sizes", "9,8,3", "--epochs", "1", "--min-accuracy", "0", "--out", str(tmp_path)]
    assert main([command, *(demo + ["--no-progress"] if command == "demo" else [])]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "functional_bp", "gradcheck", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--output-activation" in done.stdout


@pytest.mark.parametrize("command", ["gradcheck", "demo"])
def test_a_cost_the_output_cannot_feed_is_refused(command, capsys, no_data):
    assert main([command, "--activation", "relu", "--cost", "cross_entropy"]) == 2
    out, err = capsys.readouterr()
    assert "error: cost 'cross_entropy' needs outputs in (0, 1)" in err and out == ""
