"""``functional_bp diagnose``: per-layer gradient norms, and the alignment of fa and kp."""

import pytest

from cli.helpers import read_json
from functional_bp.cli import main


@pytest.mark.slow
def test_diagnose_command_writes_plot(tmp_path, capsys):
    plot, records = tmp_path / "norms.png", tmp_path / "norms.json"
    args = ["diagnose", "--epochs", "1", "--hidden", "10,10,10", "--probe", "100"]
    assert main([*args, "--no-progress", "--plot", str(plot), "--json", str(records)]) == 0
    out = capsys.readouterr().out
    assert "layer 1 learns" in out and "relu hidden layers [64, 10, 10, 10, 10]" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    record = read_json(records)
    assert sorted(record) == ["relu", "sigmoid"]
    sigmoid = record["sigmoid"]
    assert len(sigmoid["initial"]["delta_norms"]) == 4 and len(sigmoid["history"]) == 1
    # Eq 85: each sigmoid layer multiplies by sigma' <= 1/4; layer 1 learns slowest.
    norms = sigmoid["initial"]["delta_norms"]
    assert norms[0] < norms[1] < norms[2]


@pytest.mark.slow
def test_diagnose_alignment_plots_the_angles(tmp_path, capsys):
    plot = tmp_path / "alignment.svg"
    argv = ["diagnose", "--alignment", "--hidden", "20", "--epochs", "2", "--eta", "0.5"]
    assert main(argv + ["--probe", "200", "--no-progress", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "fa [64, 20, 10] epoch   2: update vs gradient" in out and "kp [64, 20, 10]" in out
    # The same initial weights and B: epoch 0 is the same for both rules.
    lines = [line.split(":", 1)[1] for line in out.splitlines() if "epoch   0" in line]
    assert len(lines) == 2 and lines[0] == lines[1]
    assert plot.read_bytes().startswith(b"<?xml")


def test_diagnose_stops_at_divergence(tmp_path, capsys):
    argv = ["diagnose", "--hidden", "5", "--epochs", "2", "--eta", "1e30", "--no-progress"]
    assert main(argv + ["--probe", "50", "--plot", str(tmp_path / "n.png")]) == 1
    err = capsys.readouterr().err
    assert "error: sigmoid: training diverged at epoch 1" in err and "Traceback" not in err
    assert not (tmp_path / "n.png").exists()
