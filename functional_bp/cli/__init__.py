"""The command line: ``python -m functional_bp {demo,gradcheck,train,diagnose} ...``
(the console script ``functional-bp`` is the same).

One module per subcommand, each with ``register(subparsers)`` (its parser) and the
``run(args)`` it sets as the default: it parses, calls the library
(`functional_bp.runs`, `functional_bp.plots`) and prints. Exit status: 0 done, 1 failed
(a check failed, training diverged, a write failed), 2 refused (bad options or a
combination that cannot train, before any data is loaded), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Optional

import jax

from functional_bp import diagnostics
from functional_bp.cli import demo, diagnose, gradcheck, train

__all__ = ["build_parser", "main"]

COMMANDS = (gradcheck, demo, train, diagnose)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="functional_bp",
        description="Hand-written backprop in JAX, checked against jax.grad.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def _init_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` from --coordinator, --num-processes and --process-id,
    or from the cluster's environment with --distributed; before any JAX computation."""
    given = [args.coordinator, args.num_processes, args.process_id]
    if not args.distributed and None in given:
        raise ValueError(
            "several processes need --coordinator, --num-processes and --process-id "
            "together (or --distributed on a cluster JAX detects)"
        )
    if args.process_id is not None and args.process_id >= args.num_processes:
        raise ValueError(
            f"--process-id {args.process_id} must be below --num-processes {args.num_processes}"
        )
    # CPUs reach each other with gloo; GPUs and TPUs use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def _cluster(args: argparse.Namespace) -> bool:
    names = ("coordinator", "num_processes", "process_id")
    return getattr(args, "distributed", False) or any(
        getattr(args, name, None) is not None for name in names
    )


def _run(args: argparse.Namespace) -> int:
    """The subcommand, with every expected failure as one line on stderr."""
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:  # bad input, before work
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, diagnostics.TrainingDiverged) as error:  # the run failed
        print(f"error: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        return 1
    except ImportError as error:  # the cli extra is not installed
        print(
            f'error: {error}; install the cli extra: pip install "functional_bp[cli]"',
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parses ``argv`` (default: the command line) and runs the subcommand; returns the
    exit status."""
    args = build_parser().parse_args(argv)
    if not _cluster(args):
        return _run(args)
    try:
        _init_distributed(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:  # process 0 reports for all
        return _run(args)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return _run(args)
