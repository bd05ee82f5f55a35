"""What the subcommands share: argparse types, the network options, output checks and the
progress bar."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Optional

import jax

from functional_bp import plots, runs
from functional_bp.activations import ACTIVATIONS
from functional_bp.costs import COSTS
from functional_bp.params import INITS


def sizes(text: str) -> list[int]:
    """ "784,30,10": at least two positive layer sizes."""
    try:
        values = [int(n) for n in text.split(",")]
    except ValueError:
        values = []
    if len(values) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected at least two positive sizes like 784,30,10, got {text!r}"
        )
    return values


def hidden(text: str) -> list[int]:
    """ "30,30": one or more positive hidden-layer sizes."""
    try:
        values = [int(n) for n in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 30,30, got {text!r}")
    return values


def number(convert: Callable, minimum: float, inclusive: bool) -> Callable[[str], float]:
    """An argparse type: ``convert(text)``, finite and >= (or >) ``minimum``."""
    bound = f"{'>=' if inclusive else '>'} {minimum}"

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}")
        return value

    return parse


count = number(int, 1, inclusive=True)
seed = number(int, 0, inclusive=True)
positive = number(float, 0, inclusive=False)
non_negative = number(float, 0, inclusive=True)


def unit_interval(text: str) -> float:
    """A number in [0, 1)."""
    value = non_negative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def seeds(text: str) -> list[int]:
    """ "0-7" or "0,3,5" (or both: "0-3,8")."""
    values = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            values += range(int(low), int(high or low) + 1)
    except ValueError:
        values = []
    if not values or min(values) < 0 or len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(
            f"expected distinct seeds >= 0 like 0-7 or 0,3,5, got {text!r}"
        )
    return values


def learning_rates(text: str) -> list[float]:
    """One learning rate or a list: "3" or "0.5,1,3"."""
    values = [positive(part) for part in text.split(",")]
    if len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"expected distinct learning rates, got {text!r}")
    return values


def add_network_options(parser: argparse.ArgumentParser, default_sizes: Optional[str]) -> None:
    """--sizes, --activation, --output-activation, --cost, --init and --seed."""
    parser.add_argument(
        "--sizes",
        type=sizes,
        default=default_sizes and sizes(default_sizes),
        help=f"layer sizes, input first (default {default_sizes or 'by data set: n_in,30,10'})",
    )
    parser.add_argument("--activation", default="sigmoid", choices=sorted(ACTIVATIONS))
    parser.add_argument(
        "--output-activation",
        default=None,
        choices=sorted(ACTIVATIONS),
        help="activation of the output layer (default: --activation)",
    )
    parser.add_argument("--cost", default="quadratic", choices=sorted(COSTS))
    parser.add_argument("--init", default="normal", choices=list(INITS))
    parser.add_argument("--seed", type=seed, default=0)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir and --download."""
    parser.add_argument("--dataset", choices=list(runs.DATASETS), default="digits")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="MNIST directory (default: $FUNCTIONAL_BP_MNIST or the cache)",
    )
    parser.add_argument("--download", action="store_true", help="download MNIST if missing")


def use_float64(enabled: bool) -> None:
    """--float64: JAX holds float64 only with x64 on, which must be set before any work."""
    if enabled:
        jax.config.update("jax_enable_x64", True)


def check_outputs(*, plot: Optional[str] = None, **paths: Optional[str]) -> None:
    """Before any work: every output can be written, no two are the same file, and the
    figure's suffix is a format matplotlib writes."""
    runs.check_outputs(plot=plot, **paths)
    if plot is not None:
        plots.figure_format(plot)


def progress_bar(total: int, *, desc: str, disable: bool):
    """A progress bar of epochs on stdout (tqdm, from the cli extra)."""
    import tqdm

    return tqdm.tqdm(total=total, desc=desc, unit="epoch", disable=disable, file=sys.stdout)


def write_line(text: str) -> None:
    """A line on stdout that does not break the progress bar."""
    import tqdm

    tqdm.tqdm.write(text, file=sys.stdout)
