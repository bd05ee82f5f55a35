"""``functional_bp demo``: the gradient check and the digits training, both with the
options given, written where --out says."""

import pytest

from cli.helpers import read_json
from functional_bp import Network, runs
from functional_bp.cli import main


@pytest.mark.slow
def test_demo_options_reach_both_parts(tmp_path, capsys, monkeypatch):
    checked = {}

    def spy(sizes, **kwargs):
        checked.update(kwargs, sizes=sizes)
        return real(sizes, **kwargs)

    real = runs.gradient_check
    monkeypatch.setattr(runs, "gradient_check", spy)
    out = tmp_path / "out" / "demo"  # created with its parents
    argv = ["demo", "--sizes", "20,7,3", "--activation", "tanh", "--output-activation"]
    argv += ["sigmoid", "--cost", "cross_entropy", "--init", "scaled_normal", "--seed", "3"]
    argv += ["--batch-size", "20", "--epochs", "1", "--eta", "0.5", "--min-accuracy", "0"]
    assert main(argv + ["--out", str(out), "--no-progress"]) == 0
    net = Network("tanh", "sigmoid", "cross_entropy")
    assert checked["net"] == net and checked["sizes"] == [20, 7, 3]
    assert (checked["seed"], checked["init"], checked["batch_size"]) == (3, "scaled_normal", 20)
    config = read_json(out / "digits.json")["config"]
    assert config["sizes"] == [64, 7, 10]  # --sizes' hidden layers between the digits' 64 and 10
    assert (config["activation"], config["output_activation"], config["cost"]) == (
        "tanh",
        "sigmoid",
        "cross_entropy",
    )
    assert (config["init"], config["seeds"], config["batch_size"]) == ("scaled_normal", [3], 20)
    assert (config["learning_rates"], config["epochs"]) == ([0.5], 1)
    assert sorted(p.name for p in out.iterdir()) == ["digits.json", "digits.png"]
    assert "network [20, 7, 3], batch 20" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_writes_into_a_folder_of_the_current_directory_only(in_tmp, capsys):
    """The default --out; and below --min-accuracy the demo fails (one epoch is not
    enough for 100 %), after writing its record."""
    argv = ["demo", "--sizes", "10,5,10", "--epochs", "1", "--min-accuracy", "1"]
    assert main(argv + ["--no-progress"]) == 1
    assert "is below 100.00%" in capsys.readouterr().out
    assert [p.name for p in in_tmp.iterdir()] == ["functional_bp-demo"]
    written = sorted(p.name for p in (in_tmp / "functional_bp-demo").iterdir())
    assert written == ["digits.json", "digits.png"]


@pytest.mark.slow
def test_the_default_demo_passes(in_tmp, capsys):
    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "all ok" in out and "digits test accuracy" in out
    assert read_json(in_tmp / "functional_bp-demo" / "digits.json")["peak_accuracy"] >= 0.95
