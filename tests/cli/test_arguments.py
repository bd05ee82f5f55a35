"""What the command line refuses: out-of-range numbers (argparse, exit 2, the option
named) and outputs that cannot be written (exit 2, before any data is loaded)."""

import pytest

from functional_bp import plots
from functional_bp.cli import build_parser, main

ARGPARSE_CASES = [
    (["train", "--eta", "nan"], "--learning-rate/--eta"),
    (["train", "--eta", "inf"], "--learning-rate/--eta"),
    (["train", "--eta", "0"], "--learning-rate/--eta"),
    (["train", "--eta", "-1"], "--learning-rate/--eta"),
    (["train", "--eta", "abc"], "--learning-rate/--eta"),
    (["train", "--lmbda", "-1"], "--lmbda"),
    (["train", "--lmbda", "nan"], "--lmbda"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "-3"], "--epochs"),
    (["train", "--epochs", "1.5"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--sizes", "64,0,10"], "--sizes"),
    (["train", "--sizes", "64"], "--sizes"),
    (["train", "--sizes", "a,b"], "--sizes"),
    (["train", "--activation", "gelu"], "--activation"),
    (["train", "--cost", "hinge"], "--cost"),
    (["gradcheck", "--batch-size", "0"], "--batch-size"),
    (["gradcheck", "--sizes", "3,-2"], "--sizes"),
    (["diagnose", "--probe", "0"], "--probe"),
    (["diagnose", "--hidden", "30,0"], "--hidden"),
    (["diagnose", "--hidden", "x"], "--hidden"),
    (["diagnose", "--epochs", "0"], "--epochs"),
    (["diagnose", "--eta", "-0.1"], "--learning-rate/--eta"),
    # New: the names and ranges of the options the redesign added or renamed.
    (["train", "--learning-rate", "1,1"], "--learning-rate/--eta"),
    (["train", "--seeds", "3-1"], "--seeds"),
    (["train", "--seeds", "0,0"], "--seeds"),
    (["train", "--weight-decay", "-1"], "--weight-decay"),
    (["train", "--ggn-decay", "1"], "--ggn-decay"),
    (["train", "--track", "angles"], "--track"),
    (["train", "--rule", "hebb"], "--rule"),
    (["train", "--optimizer", "lbfgs"], "--optimizer"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["demo", "--min-accuracy", "-1"], "--min-accuracy"),
    (["diagnose", "--activation", "gelu"], "--activation"),
    # Seeds are in [0, 2**32): jax.random.key keeps the low 32 bits (key(2**32) is key(0)).
    (["train", "--seed", "4294967296"], "--seed"),
    (["train", "--seeds", "0,4294967296"], "--seeds"),
    (["train", "--seeds", "0-1,1"], "--seeds"),
    (["gradcheck", "--seed", "4294967296"], "--seed"),
]


@pytest.mark.parametrize(
    "argv,option", ARGPARSE_CASES, ids=[" ".join(c[0]) for c in ARGPARSE_CASES]
)
def test_ranges(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_eta_is_the_learning_rate():
    parse = build_parser().parse_args
    assert parse(["train", "--eta", "0.5,3"]).learning_rate == [0.5, 3.0]
    assert parse(["train", "--learning-rate", "2"]).learning_rate == [2.0]
    assert parse(["diagnose", "--eta", "0.2"]).learning_rate == 0.2


OUTPUT_CASES = [
    (["train", "--save", "{tmp}"], "is a directory"),
    (["train", "--json", "{tmp}"], "is a directory"),
    (["train", "--plot", "{tmp}/out"], "suffix (none) is not a figure format"),
    (["train", "--plot", "{tmp}/out.xyz"], "suffix .xyz is not a figure format"),
    (["train", "--save", "{tmp}/no/such/p.npz"], "does not exist"),
    (["train", "--json", "{tmp}/h.json", "--plot", "{tmp}/h.json"], "same file"),
    (["diagnose", "--plot", "{tmp}/norms.xyz"], "not a figure format"),
    (["diagnose", "--plot", "{tmp}"], "is a directory"),
    # New.
    (["diagnose", "--json", "{tmp}/no/such/r.json"], "does not exist"),
    (["train", "--seeds", "0-1", "--save", "{tmp}"], "is a directory"),
]


@pytest.mark.parametrize(
    "argv,message", OUTPUT_CASES, ids=[" ".join(c[0][:2]) + c[1] for c in OUTPUT_CASES]
)
def test_outputs_checked_before_training(argv, message, tmp_path, capsys, no_data):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "suffix,magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".png", b"\x89PNG")]
)
def test_plot_format_follows_the_suffix(tmp_path, suffix, magic):
    row = dict(epoch=1, train_cost=0.5, eval_cost=0.6, train_accuracy=0.8, eval_accuracy=0.7)
    path = tmp_path / f"h{suffix}"
    plots.history([row], path, title="t", eval_name="test")
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
