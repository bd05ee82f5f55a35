"""``functional_bp train --layers``: layer types on the command line, with --dropout and
--expand; what they build, what they train, and what they refuse before any data."""

import numpy as np
import pytest

from cli.helpers import assert_refused, read_json, run
from functional_bp import data, diagnostics, io, layers, runs
from functional_bp.runs.config import parse_layers

CONV = ["--layers", "conv4x3,pool2,dense16", "--init", "scaled_normal", "--no-progress"]
SOFTMAX = ["--activation", "relu", "--output-activation", "softmax", "--cost", "log_likelihood"]
SOFTMAX_CONFIG = dict(activation="relu", output_activation="softmax", cost="log_likelihood")


def _digits_test():
    """The digits' test images, as the command line evaluates them."""
    _, test = data.load_digits()
    return test.x.reshape(-1, 1, 8, 8), test.y


def test_parse_layers_adds_flatten_outputs_and_dropout():
    specs = parse_layers("conv20x5,pool2,conv40x5s2p1,avgpool2,dense100,dropout0.2", 0.5)
    assert specs == (
        layers.Conv2D(20, 5),
        layers.MaxPool2D(2),
        layers.Conv2D(40, 5, stride=2, padding=1),
        layers.AvgPool2D(2),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(100),
        layers.Dropout(0.2),
        layers.Dropout(0.5),
        layers.Dense(10),
    )
    assert parse_layers("dense30") == (layers.Dense(30), layers.Dense(10))


def test_config_with_layers_loads_images_and_expands():
    config = runs.Config(layers="conv4x3,pool2,dense16", expand=True)
    runs.check(config)
    assert config.input_shape == (1, 8, 8)
    loaded = runs.load(config)
    assert loaded.xs.shape == (5 * 1438, 1, 8, 8) and loaded.ys.shape == (5 * 1438, 10)
    assert loaded.eval_xs.shape == (359, 1, 8, 8)
    # A network of dense layers only takes vectors, whatever the layer syntax.
    assert runs.Config(layers="dense16").input_shape == (64,)


def test_train_digits_with_convolution_dropout_and_shifts(tmp_path, capsys):
    argv = ["train", *CONV, *SOFTMAX, "--dropout", "0.25", "--expand", "--epochs", "2"]
    argv += ["--learning-rate", "0.1", "--json", str(tmp_path / "h.json")]
    argv += ["--track", "noise-scale", "--track-examples", "64"]
    argv += ["--save", str(tmp_path / "p.npz")]
    status, err = run(argv, capsys)
    assert status == 0, err
    record = read_json(tmp_path / "h.json")
    assert record["config"]["layers"] == "conv4x3,pool2,dense16"
    assert record["config"]["dropout"] == 0.25 and record["config"]["expand"] is True
    assert len(record["history"]) == 2
    assert record["final_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert all(row["noise_scale"] > 0 for row in record["history"])
    params, meta = io.load_params(tmp_path / "p.npz")
    assert meta["layers"] == "conv4x3,pool2,dense16" and meta["dropout"] == 0.25
    assert [layer.w.shape for layer in params] == [(4, 1, 3, 3), (16, 36), (10, 16)]
    net = runs.Config(layers=meta["layers"], dropout=meta["dropout"], **SOFTMAX_CONFIG).net
    accuracy = diagnostics.accuracy(params, *_digits_test(), net=net)
    assert accuracy == pytest.approx(record["final_accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--dropout", "0.5"], "--dropout"),
        ([*CONV, "--save", "p.npz", "--rule", "fa"], "--save"),
        (["--layers", "conv4x3,bogus"], "bogus"),
        (["--layers", "conv4x9"], "larger than its input"),
        (["--layers", "conv4x3,pool4"], "does not divide"),
        (["--layers", "dense16,conv4x3"], "after a dense layer"),
        (["--layers", "conv4x3", "--sizes", "64,8,10"], "not both"),
        ([*CONV, "--dropout", "0.5", "--rule", "dfa"], "dfa"),
        ([*CONV, "--track", "layer-norms"], "layer-norms"),
        ([*CONV, "--dropout", "1"], "--dropout"),
    ],
)
def test_what_layers_refuse_before_any_data(argv, option, capsys, no_data, in_tmp):
    status, err = run(["train", *argv, "--epochs", "1"], capsys)
    assert_refused(status, err, option)


def test_expand_shifts_moves_every_pixel_by_one():
    rng = np.random.default_rng(0)
    images = rng.random((3, 16)).astype(np.float32)
    wider = data.expand_shifts(data.Dataset(images, np.array([1, 2, 3])), (4, 4))
    assert wider.x.shape == (15, 16) and wider.y.tolist() == [1, 2, 3] * 5
    grid, shifted = images.reshape(3, 4, 4), wider.x.reshape(5, 3, 4, 4)
    np.testing.assert_array_equal(shifted[0], grid)
    np.testing.assert_array_equal(shifted[1][:, :-1], grid[:, 1:])  # up
    np.testing.assert_array_equal(shifted[1][:, -1], 0)
    np.testing.assert_array_equal(shifted[2][:, 1:], grid[:, :-1])  # down
    np.testing.assert_array_equal(shifted[3][:, :, :-1], grid[:, :, 1:])  # left
    np.testing.assert_array_equal(shifted[4][:, :, 1:], grid[:, :, :-1])  # right
    with pytest.raises(ValueError, match=r"16 pixels.*\(3, 9\)"):
        data.expand_shifts(data.Dataset(np.zeros((3, 9)), np.zeros(3, int)), (4, 4))
