"""The command line: ``python -m functional_bp {demo,gradcheck,train,diagnose} ...``
(the console script ``functional-bp`` is the same).

One module per subcommand, each with ``register(subparsers)`` (its parser) and the
``run(args)`` it sets as the default: it parses, calls the library
(`functional_bp.runs`, `functional_bp.plots`) and prints. Exit status: 0 done, 1 failed
(a check failed, training diverged, a write failed), 2 refused (bad options or a
combination that cannot train, before any data is loaded), 130 interrupted by Ctrl-C
(SIGINT), 143 stopped by SIGTERM (what ``kill`` and a scheduler's time limit send): the
shell's 128 + the signal's number.

Interrupted (SIGINT or SIGTERM, the same path: module `interrupts`), ``train`` writes
the history of the epochs that finished (none finished: nothing, an earlier ``--json``
stays), never ``--save``, and no file is left half-written. The handler is installed
first thing in `main` (or before, by `early`) and restored when it returns; a signal
that arrives where Python would lose it (JAX's garbage-collection callback, an import)
is delivered once Python is out of there. Importing this package imports the standard
library alone (the subcommands are imported by `main`), so that
``functional_bp/__init__.py`` can import `functional_bp.cli.early` before JAX.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Optional

from functional_bp.cli import interrupts

__all__ = ["build_parser", "main"]


def _commands() -> tuple:
    """The subcommands' modules, in the order of the help."""
    from functional_bp.cli import demo, diagnose, gradcheck, train

    return (gradcheck, demo, train, diagnose)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="functional_bp",
        description="Hand-written backprop in JAX, checked against jax.grad.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in _commands():
        command.register(subparsers)
    return parser


def _run(args: argparse.Namespace) -> int:
    """The subcommand, with every expected failure as one line on stderr."""
    from functional_bp import diagnostics

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
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM (`interrupts`)
        print(interrupts.reason(error), file=sys.stderr)
        return interrupts.status(error)
    except (RuntimeError, OverflowError, MemoryError) as error:  # XLA, sizes, the host
        print(f"error: {type(error).__name__}: {error}".rstrip(": "), file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parses ``argv`` (default: the command line) and runs the subcommand; returns the
    exit status. SIGINT and SIGTERM are handled from the first instruction to the last
    (130 and 143, module docstring)."""
    with interrupts.handled():
        try:
            return _main(argv)
        except KeyboardInterrupt as error:  # while parsing, refusing or starting
            print(interrupts.reason(error), file=sys.stderr)
            return interrupts.status(error)


def _main(argv: Optional[Sequence[str]]) -> int:
    from functional_bp.cli import cluster

    args = build_parser().parse_args(argv)
    if not cluster.requested(args):
        return _run(args)
    try:
        cluster.check(args)
        refuse = getattr(args, "before_start", None)
        if refuse is not None:  # what several processes cannot train: before any starts
            refuse(args)
    except (ValueError, TypeError) as error:  # refused before anything started
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        cluster.start(args)  # bounded by --init-timeout: an error line, not a hang
    except ValueError as error:  # refused before anything started
        print(f"error: {error}", file=sys.stderr)
        return 2
    except cluster.StartFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    import jax

    if jax.process_index() == 0:  # process 0 reports for all
        return _run(args)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return _run(args)
