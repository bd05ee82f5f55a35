"""``functional_bp gradcheck``: the hand-written gradient of a random network against
jax.grad and finite differences, and the time of each."""

from __future__ import annotations

import argparse

import jax.numpy as jnp

from functional_bp import runs
from functional_bp.cli import common
from functional_bp.network import Network
from functional_bp.runs.loop import out_of_memory


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of the check (`demo` takes them too)."""
    common.add_network_options(parser, "784,30,10")
    parser.add_argument("--batch-size", type=common.count, default=10)
    parser.add_argument("--float64", action="store_true", help="in float64")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``gradcheck`` subcommand."""
    parser = subparsers.add_parser(
        "gradcheck", help="manual vs jax.grad vs finite differences", description=__doc__
    )
    add_options(parser)
    parser.set_defaults(run=run)


def check(args: argparse.Namespace) -> bool:
    """Prints the check and the timing; returns whether every leaf passed."""
    common.use_float64(args.float64)
    net = Network(args.activation, args.output_activation, args.cost)
    dtype = jnp.float64 if args.float64 else jnp.float32
    common.check_network_memory(args.sizes, args.batch_size, jnp.dtype(dtype).itemsize)
    with out_of_memory("the gradient check"):
        report = runs.gradient_check(
            args.sizes,
            batch_size=args.batch_size,
            seed=args.seed,
            init=args.init,
            dtype=dtype,
            net=net,
        )
    print(f"network {args.sizes}, batch {args.batch_size}, {net}")
    print(report.check)
    print(
        f"one mean-gradient step, median of 25: manual {report.manual_seconds * 1e6:.1f} us, "
        f"jax.jit(jax.grad) {report.autodiff_seconds * 1e6:.1f} us, "
        f"ratio manual/autodiff {report.manual_seconds / report.autodiff_seconds:.2f}"
    )
    return report.check.ok


def run(args: argparse.Namespace) -> int:
    return 0 if check(args) else 1
