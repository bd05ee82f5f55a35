"""The command line and the params files it writes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_tree_close, random_problem

from functional_bp import checkpoint
from functional_bp.checkpoint import load_params, save_params
from functional_bp.cli import main


def test_save_load_round_trip(tmp_path):
    params, _, _ = random_problem(0, sizes=[5, 4, 3])
    path = save_params(tmp_path / "p.npz", params, activation="tanh", cost="quadratic")
    loaded, meta = load_params(path)
    assert_tree_close(jax.tree.map(jnp.asarray, loaded), params, 0.0)
    assert meta == {"sizes": [5, 4, 3], "activation": "tanh", "cost": "quadratic"}
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_failed_save_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    params, _, _ = random_problem(0, sizes=[3, 2])
    path = save_params(tmp_path / "p.npz", params)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_params(path, random_problem(1, sizes=[3, 2])[0])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz: not a functional_bp params file"):
        load_params(junk)
    plain = tmp_path / "plain.npz"
    np.savez(plain, w1=np.ones((2, 3)))
    with pytest.raises(ValueError, match="plain.npz: not a functional_bp params file"):
        load_params(plain)
    params, _, _ = random_problem(0, sizes=[3, 2])
    good = save_params(tmp_path / "good.npz", params)
    with np.load(good) as data:
        arrays = dict(data)
    arrays["w1"] = np.ones((2, 4))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"bad.npz: arrays have sizes \[4, 2\], the header"):
        load_params(tmp_path / "bad.npz")


def test_train_on_digits_writes_history_plot_and_params(tmp_path, capsys):
    status = main(
        [
            "train",
            "--dataset",
            "digits",
            "--epochs",
            "3",
            "--no-progress",
            "--json",
            str(tmp_path / "h.json"),
            "--plot",
            str(tmp_path / "h.png"),
            "--save",
            str(tmp_path / "p.npz"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "Epoch 0: " in out and " / 359" in out
    record = json.loads((tmp_path / "h.json").read_text())
    assert len(record["history"]) == 3
    assert 0.5 < record["final_accuracy"] <= 1.0
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    params, meta = load_params(tmp_path / "p.npz")
    assert meta["sizes"] == [64, 30, 10] and meta["activation"] == "sigmoid"


def test_train_with_adam_and_relu(tmp_path, capsys):
    status = main(
        [
            "train",
            "--epochs",
            "2",
            "--no-progress",
            "--optimizer",
            "adam",
            "--eta",
            "0.01",
            "--activation",
            "relu",
            "--output-activation",
            "sigmoid",
            "--cost",
            "cross_entropy",
            "--init",
            "scaled_normal",
        ]
    )
    assert status == 0
    assert "digits test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--sizes", "784,30,10", "--epochs", "1"], "does not fit digits"),
        (["train", "--activation", "relu", "--cost", "cross_entropy"], "output_activation"),
        (["train", "--plot", "/no/such/dir/p.png"], "does not exist"),
        (["train", "--optimizer", "adam", "--lmbda", "1"], "sgd only"),
        (["train", "--dataset", "mnist", "--data-dir", "/no/such/mnist"], "t10k"),
    ],
)
def test_train_bad_options_fail_clearly(argv, message, capsys, tmp_path):
    assert main(argv + ["--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_gradcheck_command(capsys):
    assert main(["gradcheck", "--sizes", "20,7,3", "--float64", "--activation", "tanh"]) == 0
    out = capsys.readouterr().out
    assert "all ok" in out and "ratio manual/autodiff" in out
