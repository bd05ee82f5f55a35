"""What the subcommands share: argparse types, the network options, output checks and the
progress bar."""

from __future__ import annotations

import argparse
import collections
import errno
import math
import sys
from collections.abc import Callable
from typing import Optional

import jax

from functional_bp import plots, runs
from functional_bp.activations import ACTIVATIONS
from functional_bp.costs import COSTS
from functional_bp.params import INITS
from functional_bp.runs import config as runs_config


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
_seed = number(int, 0, inclusive=True)


def seed(text: str) -> int:
    """A seed in [0, 2**32): jax.random.key keeps a seed's low 32 bits, so a larger one
    would repeat a smaller one."""
    value = _seed(text)
    if value >= runs_config.MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"expected a seed in [0, 2**32) (jax.random.key keeps its low 32 bits, so "
            f"{value} would be seed {value % runs_config.MAX_SEED}), got {text!r}"
        )
    return value


positive = number(float, 0, inclusive=False)
non_negative = number(float, 0, inclusive=True)


def unit_interval(text: str) -> float:
    """A number in [0, 1)."""
    value = non_negative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def open_unit_interval(text: str) -> float:
    """A number in (0, 1)."""
    value = positive(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def seeds(text: str) -> list[int]:
    """ "0-7" or "0,3,5" (or both: "0-3,8"): distinct seeds in [0, 2**32), at most
    `runs.config.MAX_RUNS` of them."""
    ranges = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            ranges.append((int(low), int(high or low)))
    except ValueError:
        ranges = []
    if not ranges or any(low < 0 or low > high for low, high in ranges):
        raise argparse.ArgumentTypeError(
            f"expected distinct seeds >= 0 like 0-7 or 0,3,5, got {text!r}"
        )
    if max(high for _, high in ranges) >= runs_config.MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"expected seeds in [0, 2**32) (jax.random.key keeps a seed's low 32 bits, so a "
            f"larger seed repeats a smaller one), got {text!r}"
        )
    number = sum(high - low + 1 for low, high in ranges)
    if number > runs_config.MAX_RUNS:  # before the list is made
        raise argparse.ArgumentTypeError(
            f"{number} seeds is more than the {runs_config.MAX_RUNS} runs one job holds, "
            f"got {text!r}"
        )
    values = [s for low, high in ranges for s in range(low, high + 1)]
    if len(set(values)) < len(values):
        repeated = sorted(s for s, n in collections.Counter(values).items() if n > 1)[:5]
        raise argparse.ArgumentTypeError(
            f"expected distinct seeds (a repeated seed repeats its run and shrinks the "
            f"spread), got {text!r}, which repeats {', '.join(map(str, repeated))}"
        )
    return values


def learning_rates(text: str) -> list[float]:
    """One learning rate or a list: "3" or "0.5,1,3"."""
    values = [positive(part) for part in text.split(",")]
    if len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"expected distinct learning rates, got {text!r}")
    return values


def check_network_memory(sizes: list[int], batch_size: int, itemsize: int) -> None:
    """Before a random network and batch are made (gradcheck): refuses sizes whose params,
    gradients and batch would not fit in `runs.config.memory_limit`."""
    params = sum((n_in + 1) * n_out for n_in, n_out in zip(sizes, sizes[1:]))
    need = itemsize * (6 * params + 3 * batch_size * sum(sizes))
    limit = runs_config.memory_limit()
    if need > limit:
        raise ValueError(
            f"--sizes {','.join(map(str, sizes))} with --batch-size {batch_size} would need "
            f"at least {need / 2**30:.1f} GiB (params, three gradients and the batch), more "
            f"than the {limit / 2**30:.1f} GiB allowed (half of this machine's or device's "
            "memory): give smaller --sizes or --batch-size"
        )


def add_network_options(
    parser: argparse.ArgumentParser, default_sizes: Optional[str], *, layers: bool = False
) -> None:
    """--sizes, --activation, --output-activation, --cost, --init and --seed; with
    ``layers`` the init's default is the book's for --sizes or --layers."""
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
    parser.add_argument(
        "--init",
        default=None if layers else "normal",
        choices=list(INITS),
        help="weights N(0, 1) (network.py) or N(0, 1/fan-in) (network2.py, network3.py); "
        + (
            "default normal with --sizes, scaled_normal with --layers"
            if layers
            else "default normal"
        ),
    )
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


def given(args: argparse.Namespace, fields) -> dict[str, str]:
    """The Config fields among ``fields`` that the command line set (an option whose
    default is None or False and that is not), each with its option's name."""
    return {field: "--" + field.replace("_", "-") for field in fields if _set(args, field)}


def _set(args: argparse.Namespace, attribute: str) -> bool:
    value = getattr(args, attribute, None)
    return value is not None and value is not False


def refuse_ignored(args: argparse.Namespace, table: dict) -> None:
    """Refuses every option of ``table`` (option -> (attribute, when it is used, why it
    is not here)) that was given (not None or False) where it would be ignored."""
    for option, (attribute, used, why) in table.items():
        if _set(args, attribute) and not used(args):
            raise ValueError(f"{option} would be ignored: {why(args)}")


def load(config: runs.Config) -> runs.Data:
    """`runs.load`, with a data set that cannot be read refused as bad input naming
    --data-dir (exit 2): missing, not MNIST's IDX files, or unreadable."""
    try:
        return runs.load(config)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--data-dir: {error}") from None
    except ValueError as error:
        raise ValueError(f"--data-dir: {error}") from None
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR):
            raise  # a download or the disk failed: the run failed
        raise ValueError(f"--data-dir: cannot read {error.filename}: {error.strerror}") from None


def use_float64(enabled: bool) -> None:
    """--float64: JAX holds float64 only with x64 on, which must be set before any work."""
    if enabled:
        jax.config.update("jax_enable_x64", True)


def check_outputs(*, plot: Optional[str] = None, **paths: Optional[str]) -> None:
    """Before any work: every output can be written, no two are the same file, and the
    figure's suffix is a format matplotlib writes."""
    runs.check_outputs(plot=plot, **paths)
    if plot is not None:
        try:
            plots.figure_format(plot)
        except ImportError as error:  # no matplotlib: the figure would not be drawn
            raise ImportError(f"--plot {plot}: {error}") from None


def progress_bar(total: int, *, desc: str, disable: bool):
    """A progress bar of epochs on stdout (tqdm, from the cli extra)."""
    import tqdm

    return tqdm.tqdm(total=total, desc=desc, unit="epoch", disable=disable, file=sys.stdout)


def write_line(text: str) -> None:
    """A line on stdout that does not break the progress bar."""
    import tqdm

    tqdm.tqdm.write(text, file=sys.stdout)
