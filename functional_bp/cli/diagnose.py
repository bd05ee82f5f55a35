"""``functional_bp diagnose``: the per-layer gradient norms across training, deep sigmoid
next to another activation (the book's chapter 5); or, with --alignment, the alignment
angles of feedback alignment and Kolen-Pollack across training (Lillicrap et al.)."""

from __future__ import annotations

import argparse
import sys

from functional_bp import plots, runs
from functional_bp.activations import ACTIVATIONS
from functional_bp.cli import common

DESCRIPTION = """Per-layer gradient norms ||delta^l|| across training, deep sigmoid next to
--activation (the book's chapter 5: the early layers of a sigmoid network learn slowly);
or, with --alignment, the angles between the update of feedback alignment (fa) and of
Kolen-Pollack (kp) and the gradient, and between B and w, across training, both rules
from the same initial weights (Lillicrap et al.). Every run is a functional_bp.runs job
with its statistics tracked on the first --probe training examples."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``diagnose`` subcommand."""
    parser = subparsers.add_parser(
        "diagnose",
        help="per-layer gradient norms: sigmoid vs relu; or --alignment of fa and kp",
        description=DESCRIPTION,
    )
    common.add_data_options(parser)
    parser.add_argument(
        "--hidden", type=common.hidden, default=[30, 30, 30, 30], help="hidden layer sizes"
    )
    parser.add_argument(
        "--activation",
        default=None,
        choices=sorted(ACTIVATIONS),
        help="compared with sigmoid (default relu); not with --alignment",
    )
    parser.add_argument("--epochs", type=common.count, default=10)
    parser.add_argument("--learning-rate", "--eta", type=common.positive, default=0.1)
    parser.add_argument("--probe", type=common.count, default=1000, help="examples the norms use")
    parser.add_argument("--seed", type=common.seed, default=0)
    parser.add_argument("--plot", default=None, help="write a figure (.png, .pdf, .svg, ...)")
    parser.add_argument("--json", default=None, help="write every run's record as JSON")
    parser.add_argument(
        "--alignment",
        action="store_true",
        help="instead: the alignment angles of fa and kp across epochs (Lillicrap et al.)",
    )
    parser.add_argument(
        "--weight-decay",
        type=common.non_negative,
        default=None,
        help="--alignment: kp's decay (default 1e-3)",
    )
    parser.add_argument(
        "--feedback-scale",
        type=common.positive,
        default=None,
        help="--alignment: the std of the random B (default 1/sqrt(n_l))",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)


# The options that only some comparisons use: option -> (its attribute, when it is used,
# why it is not here).
IGNORED_UNLESS = {
    "--weight-decay": (
        "weight_decay",
        lambda args: args.alignment,
        lambda args: "it is kp's decay in --alignment; the norms train without decay",
    ),
    "--feedback-scale": (
        "feedback_scale",
        lambda args: args.alignment,
        lambda args: "it sets the std of fa's and kp's B in --alignment; the norms train bp",
    ),
    "--activation": (
        "activation",
        lambda args: not args.alignment,
        lambda args: "--alignment compares fa and kp in sigmoid networks",
    ),
}


def configs(args: argparse.Namespace) -> dict[str, runs.Config]:
    """The runs to compare, by name: network2.py's initialisation, mini-batches of 10."""
    sizes = (runs.DATASETS[args.dataset], *args.hidden, 10)
    common_options = dict(
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        sizes=sizes,
        init="scaled_normal",
        seeds=(args.seed,),
        learning_rates=(args.learning_rate,),
        epochs=args.epochs,
        batch_size=10,
        track_examples=args.probe,
    )
    if args.alignment:
        return {
            rule: runs.Config(
                **common_options,
                activation="sigmoid",
                output_activation="sigmoid",
                cost="cross_entropy",
                rule=rule,
                weight_decay=(1e-3 if args.weight_decay is None else args.weight_decay)
                if rule == "kp"
                else 0.0,
                feedback_scale=args.feedback_scale,
            )
            for rule in ("fa", "kp")
        }
    return {
        activation: runs.Config(
            **common_options,
            activation=activation,
            output_activation="sigmoid",
            cost="quadratic",
            track=("layer-norms",),
        )
        for activation in dict.fromkeys(("sigmoid", args.activation or "relu"))
    }


def run(args: argparse.Namespace) -> int:
    """Trains each run, prints its first and last epoch, writes the figure."""
    common.refuse_ignored(args, IGNORED_UNLESS)
    named = configs(args)
    for config in named.values():
        runs.check(config, common.given(args, ("data_dir", "download")))
    common.check_outputs(plot=args.plot, json=args.json)
    data = common.load(next(iter(named.values())))
    records = {}
    for name, config in named.items():
        bar = common.progress_bar(config.epochs, desc=name, disable=args.no_progress)
        try:
            record = runs.train(config, data, on_epoch=lambda _, bar=bar: bar.update(1)).record
        finally:
            bar.close()
        if record["diverged"]:
            print(f"error: {name}: {record['diverged']}", file=sys.stderr)
            return 1
        records[name] = record
        (_print_alignment if args.alignment else _print_norms)(name, record, config)
    sizes = config.layer_sizes
    if args.json:
        runs.write_json(args.json, records)
        print(f"records written to {args.json}")
    if args.plot:
        (plots.alignment if args.alignment else plots.layer_norms)(records, args.plot, sizes)
        print(f"plot written to {args.plot}")
    return 0


def _print_norms(activation: str, record: dict, config: runs.Config) -> None:
    norms = runs.series(record, "delta_norms")
    sizes = config.layer_sizes
    print(
        f"{activation} hidden layers {sizes}: ||delta^l|| by layer (1 first), epoch 0 and "
        f"{config.epochs}:"
    )
    for epoch in (0, config.epochs):
        print(f"  epoch {epoch:>3}: " + "  ".join(f"{v:.2e}" for v in norms[epoch]))
    first, last = norms[0][0], norms[0][-2]
    print(
        f"  at initialisation layer 1 learns {last / first:.1f}x slower than layer {len(sizes) - 2}"
    )


def _print_alignment(rule: str, record: dict, config: runs.Config) -> None:
    update, between = (runs.series(record, f) for f in ("update_angles", "feedback_angles"))
    for epoch in (0, config.epochs):
        print(
            f"{rule} {config.layer_sizes} epoch {epoch:>3}: update vs gradient "
            + " ".join(f"{v:5.1f}" for v in update[epoch][:-1])
            + " deg; B vs w "
            + " ".join(f"{v:5.1f}" for v in between[epoch])
            + " deg"
        )
