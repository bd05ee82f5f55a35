"""``functional_bp demo``: the main job. A gradient check, then training on the bundled
8x8 digits; both with the network the options describe."""

from __future__ import annotations

import argparse
from pathlib import Path

from functional_bp import runs
from functional_bp.cli import common, gradcheck, train

DESCRIPTION = """The main job: the gradient check of --sizes (as `gradcheck`), then
training on the bundled 8x8 digits with the same --activation, --output-activation,
--cost, --init, --seed, --batch-size and --float64. The digits have 64 inputs and 10
classes, so training uses --sizes' hidden layers between them: the default 784,30,10
trains 64,30,10. Writes digits.json and digits.png into --out. Exits 1 if the check fails
or the peak test accuracy is below --min-accuracy."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help="the main job", description=DESCRIPTION)
    gradcheck.add_options(parser)
    parser.add_argument("--epochs", type=common.count, default=30, help="digits training")
    parser.add_argument(
        "--learning-rate", "--eta", type=common.positive, default=3.0, help="digits training"
    )
    parser.add_argument(
        "--out",
        default="functional_bp-demo",
        help="directory for digits.json and digits.png, created if missing (default "
        "./functional_bp-demo)",
    )
    parser.add_argument(
        "--min-accuracy",
        type=common.non_negative,
        default=0.95,
        help="exit 1 below this peak test accuracy (default 0.95, which the defaults reach)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def config_from(args: argparse.Namespace) -> runs.Config:
    """The digits training: --sizes' hidden layers between 64 inputs and 10 outputs."""
    return runs.Config(
        dataset="digits",
        sizes=(runs.DATASETS["digits"], *args.sizes[1:-1], 10),
        activation=args.activation,
        output_activation=args.output_activation,
        cost=args.cost,
        init=args.init,
        seeds=(args.seed,),
        learning_rates=(args.learning_rate,),
        epochs=args.epochs,
        batch_size=args.batch_size,
        float64=args.float64,
    )


def _make_directory(out: Path) -> None:
    """--out, created if missing; before any work."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Cannot create --out {out}: {error.strerror or error}") from None


def run(args: argparse.Namespace) -> int:
    common.use_float64(args.float64)
    config = config_from(args)
    runs.check(config)  # before the check: refuse what cannot train first
    out = Path(args.out)
    outputs = train.Outputs(json=str(out / "digits.json"), plot=str(out / "digits.png"))
    _make_directory(out)
    common.check_outputs(**outputs._asdict())
    ok = gradcheck.check(args)
    print()
    status, record = train.train(config, runs.load(config), outputs, no_progress=args.no_progress)
    if status:
        return status
    if record["peak_accuracy"] < args.min_accuracy:
        print(f"peak accuracy {record['peak_accuracy']:.2%} is below {args.min_accuracy:.2%}")
        return 1
    return 0 if ok else 1
