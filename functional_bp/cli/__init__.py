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
from functional_bp.cli import cluster, demo, diagnose, gradcheck, train

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
    except (RuntimeError, OverflowError, MemoryError) as error:  # XLA, sizes, the host
        print(f"error: {type(error).__name__}: {error}".rstrip(": "), file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parses ``argv`` (default: the command line) and runs the subcommand; returns the
    exit status."""
    args = build_parser().parse_args(argv)
    if not cluster.requested(args):
        return _run(args)
    try:
        cluster.start(args)  # bounded by --init-timeout: an error line, not a hang
    except ValueError as error:  # refused before anything started
        print(f"error: {error}", file=sys.stderr)
        return 2
    except cluster.StartFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:  # process 0 reports for all
        return _run(args)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return _run(args)
