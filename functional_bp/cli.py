"""The command line: ``python -m functional_bp {demo,gradcheck,train} ...``."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import functional_bp as fbp
from functional_bp import data
from functional_bp._files import atomic_write, check_writable
from functional_bp._options import resolve

try:
    import tqdm
except ImportError:  # the cli extra is not installed
    tqdm = None


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(n) for n in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected at least two positive sizes like 784,30,10, got {text!r}"
        )
    return sizes


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(n) for n in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 30,30, got {text!r}")
    return sizes


def _number(convert, minimum, inclusive: bool):
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


_count = _number(int, 1, inclusive=True)
_seed = _number(int, 0, inclusive=True)
_positive = _number(float, 0, inclusive=False)
_non_negative = _number(float, 0, inclusive=True)


def _unit_interval(text: str) -> float:
    value = _non_negative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _add_network_options(parser: argparse.ArgumentParser, sizes: Optional[str]) -> None:
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=sizes and _sizes(sizes),
        help=f"layer sizes, input first (default {sizes or 'by data set'})",
    )
    parser.add_argument("--activation", default="sigmoid", choices=sorted(fbp.ACTIVATIONS))
    parser.add_argument(
        "--output-activation",
        default=None,
        choices=sorted(fbp.ACTIVATIONS),
        help="activation of the output layer (default: --activation)",
    )
    parser.add_argument("--cost", default="quadratic", choices=sorted(fbp.COSTS))
    parser.add_argument("--init", default="normal", choices=["normal", "scaled_normal"])
    parser.add_argument("--seed", type=_seed, default=0)


def _options(args: argparse.Namespace) -> dict:
    """The options keywords of every library call, from the command line."""
    return dict(
        activation=args.activation, output_activation=args.output_activation, cost=args.cost
    )


def _random_batch(key, sizes, batch, dtype):
    """Inputs in [0, 1) like pixels, one-hot targets."""
    x_key, y_key = jax.random.split(key)
    xs = jax.random.uniform(x_key, (batch, sizes[0]), dtype)
    labels = jax.random.randint(y_key, (batch,), 0, sizes[-1])
    return xs, jax.nn.one_hot(labels, sizes[-1], dtype=dtype)


def gradcheck(args: argparse.Namespace) -> int:
    """Prints the gradient check of a random network; returns 1 if it fails."""
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.float64 else jnp.float32
    init_key, data_key = jax.random.split(jax.random.key(args.seed))
    params = fbp.init_mlp(init_key, args.sizes, init=args.init, dtype=dtype)
    xs, ys = _random_batch(data_key, args.sizes, args.batch_size, dtype)
    options = _options(args)
    result = fbp.check_gradients(params, xs, ys, **options)
    print(f"network {args.sizes}, batch {args.batch_size}, {args.activation}/{args.cost}")
    print(result)

    manual = lambda: fbp.grad(params, xs, ys, **options)  # noqa: E731
    autodiff_fn = jax.jit(jax.grad(lambda p: fbp.loss(p, xs, ys, **options)))
    times = fbp.interleaved_medians(
        {"manual": manual, "jax.grad": lambda: autodiff_fn(params)}, repeats=25, min_time=0.01
    )
    print(
        f"one mean-gradient step, median of 25: manual {times['manual'] * 1e6:.1f} us, "
        f"jax.jit(jax.grad) {times['jax.grad'] * 1e6:.1f} us, "
        f"ratio manual/autodiff {times['manual'] / times['jax.grad']:.2f}"
    )
    return 0 if result.ok else 1


OPTIMIZERS = {
    "sgd": optax.sgd,
    "momentum": lambda eta: optax.sgd(eta, momentum=0.9),
    "nesterov": lambda eta: optax.sgd(eta, momentum=0.9, nesterov=True),
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
}
# Diagonal Gauss-Newton descent (issue 11), with --damping and --ggn-decay.
CURVATURE_OPTIMIZERS = ("diag_ggn",)


def _load_dataset(args: argparse.Namespace):
    """(train, eval, eval name) as numpy Datasets."""
    if args.dataset == "digits":
        train, test = data.load_digits()
        return train, test, "test"
    train, validation, test = data.load_mnist(args.data_dir, download=args.download)
    if args.eval_on == "validation":
        return train, validation, "validation"
    return train, test, "test"


def train(args: argparse.Namespace) -> dict:
    """Trains a network with the hand-written gradients; returns the run's record."""
    if args.sizes is None:
        args.sizes = [64, 30, 10] if args.dataset == "digits" else [784, 30, 10]
    options = _options(args)
    resolve(**options)  # fail before loading data
    _check_outputs(save=args.save, json=args.json, plot=args.plot)
    train_set, eval_set, eval_name = _load_dataset(args)
    if train_set.x.shape[1] != args.sizes[0] or args.sizes[-1] != 10:
        raise ValueError(
            f"--sizes {','.join(map(str, args.sizes))} does not fit {args.dataset}: "
            f"it needs {train_set.x.shape[1]} inputs and 10 outputs"
        )
    xs, ys = jnp.asarray(train_set.x), jnp.asarray(data.one_hot(train_set.y))
    eval_xs, eval_ys = jnp.asarray(eval_set.x), jnp.asarray(data.one_hot(eval_set.y))
    init_key, key = jax.random.split(jax.random.key(args.seed))
    if args.float64:
        jax.config.update("jax_enable_x64", True)
        xs, ys, eval_xs, eval_ys = (a.astype(jnp.float64) for a in (xs, ys, eval_xs, eval_ys))
    dtype = jnp.float64 if args.float64 else jnp.float32
    params = fbp.init_mlp(init_key, args.sizes, init=args.init, dtype=dtype)
    track_set = xs[: args.track_examples], ys[: args.track_examples]

    if args.optimizer == "sgd":
        opt_state = None
    else:
        if args.lmbda:
            raise ValueError("--lmbda applies to --optimizer sgd only")
        optimizer = (
            fbp.diag_ggn_descent(args.eta, args.damping, args.ggn_decay)
            if args.optimizer == "diag_ggn"
            else OPTIMIZERS[args.optimizer](args.eta)
        )
        opt_state = optimizer.init(params)

    forward_options = dict(activation=args.activation, output_activation=args.output_activation)
    history, record = [], {"config": {k: v for k, v in vars(args).items() if k != "run"}}
    epochs = tqdm.trange(
        1, args.epochs + 1, desc="training", unit="epoch", disable=args.no_progress, file=sys.stdout
    )
    for epoch in epochs:
        key, epoch_key = jax.random.split(key)
        start = time.perf_counter()
        if opt_state is None:
            params = fbp.train_epoch(
                epoch_key,
                params,
                xs,
                ys,
                args.eta,
                batch_size=args.batch_size,
                lmbda=args.lmbda,
                n=xs.shape[0],
                **options,
            )
        else:
            params, opt_state = fbp.optax_epoch(
                epoch_key,
                optimizer,
                params,
                opt_state,
                xs,
                ys,
                batch_size=args.batch_size,
                **options,
            )
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        correct = fbp.evaluate(params, eval_xs, eval_set.y, **forward_options)
        row = {
            "epoch": epoch,
            "train_seconds": seconds,
            "train_cost": fbp.total_cost(params, xs, ys, lmbda=args.lmbda, **options),
            "train_accuracy": fbp.accuracy(params, xs, train_set.y, **forward_options),
            "eval_cost": fbp.total_cost(params, eval_xs, eval_ys, lmbda=args.lmbda, **options),
            "eval_accuracy": correct / eval_xs.shape[0],
        }
        if "noise-scale" in args.track:
            noise = fbp.gradient_noise_scale(params, *track_set, **options)
            row.update(
                noise_scale=float(noise.b_simple),
                noise_trace=float(noise.trace),
                noise_grad_norm_sq=float(noise.grad_norm_sq),
            )
        history.append(row)
        try:
            _check_divergence(params, row["train_cost"], epoch)
        except fbp.TrainingDiverged:
            _write_history(args, record, history, eval_name)  # what was learnt is kept
            raise
        # network.py's progress line.
        tqdm.tqdm.write(f"Epoch {epoch - 1}: {correct} / {eval_xs.shape[0]}", file=sys.stdout)
        epochs.set_postfix(acc=f"{row['eval_accuracy']:.4f}", cost=f"{row['eval_cost']:.4f}")

    times = [row["train_seconds"] for row in history]
    best = max(history, key=lambda row: row["eval_accuracy"])
    record.update(
        eval_set=eval_name,
        final_accuracy=history[-1]["eval_accuracy"],
        peak_accuracy=best["eval_accuracy"],
        peak_epoch=best["epoch"],
        # The first epoch includes compilation.
        median_train_seconds_per_epoch=statistics.median(times[1:] or times),
        first_epoch_seconds=times[0],
    )
    print(
        f"{args.dataset} {eval_name} accuracy: final {record['final_accuracy']:.2%}, "
        f"peak {record['peak_accuracy']:.2%} (epoch {record['peak_epoch']}); training "
        f"{record['median_train_seconds_per_epoch']:.3f} s per epoch (median, epochs 2+), "
        f"first epoch with compilation {times[0]:.2f} s"
    )
    # The history first: if the params cannot be written, the run is still on record.
    _write_history(args, record, history, eval_name)
    if args.save:
        fbp.save_params(args.save, params, **options_metadata(args))
        print(f"params saved to {args.save}")
    return record


def _check_divergence(params, cost, epoch: int) -> None:
    try:
        fbp.check_divergence(params, cost, epoch=epoch)
    except fbp.TrainingDiverged as error:
        raise fbp.TrainingDiverged(f"{error}; try a smaller --eta") from None


def options_metadata(args: argparse.Namespace) -> dict:
    return dict(_options(args), dataset=args.dataset)


def _check_outputs(**paths: Optional[str]) -> None:
    """Before any work: every output can be written, no two are the same file, and a
    figure's suffix names a format matplotlib writes."""
    given = {option: path for option, path in paths.items() if path is not None}
    for option, path in given.items():
        try:
            check_writable(path, f"--{option}")
        except OSError as error:
            raise ValueError(str(error)) from None
    resolved = [Path(path).resolve() for path in given.values()]
    if len(set(resolved)) < len(resolved):
        raise ValueError(f"two outputs name the same file: {given}")
    if "plot" in given:
        _figure_format(given["plot"])


def _figure_format(path: str) -> str:
    """The format a figure is written in: its suffix, if matplotlib can write it."""
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in supported:
        raise ValueError(
            f"--plot {path}: the suffix {('.' + suffix) if suffix else '(none)'} is not a "
            f"figure format; use one of {', '.join('.' + s for s in sorted(supported))}"
        )
    return suffix


def _strict_json(value):
    """NaN and infinities (of a diverged run) as null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _write_history(args, record: dict, history: list[dict], eval_name: str) -> None:
    record["history"] = history
    if args.json:
        text = json.dumps(_strict_json(record), indent=2, allow_nan=False)
        atomic_write(args.json, lambda f: f.write(text.encode()), "--json")
        print(f"history written to {args.json}")
    if args.plot:
        plot_history(history, args.plot, title=f"{args.dataset} {args.sizes}", eval_name=eval_name)
        print(f"plot written to {args.plot}")


# The simple noise scale McCandlish et al. (2018) report for MNIST (as issue 11 quotes it).
MNIST_NOISE_SCALE = 900


def plot_history(history: list[dict], path: str, *, title: str, eval_name: str) -> None:
    """A figure of training and evaluation cost and accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    tracked = "noise_scale" in history[0]
    fig, axes = plt.subplots(1, 2 + tracked, figsize=(5 * (2 + tracked), 4))
    cost_ax, acc_ax = axes[:2]
    if tracked:
        noise_ax = axes[2]
        noise_ax.semilogy(epochs, [row["noise_scale"] for row in history], label="B_simple")
        noise_ax.axhline(
            MNIST_NOISE_SCALE, color="gray", ls="--", label="McCandlish et al. 2018, MNIST"
        )
        noise_ax.set(xlabel="epoch", ylabel="B_simple", title="gradient noise scale")
    for prefix, label in (("train", "training"), ("eval", eval_name)):
        cost_ax.plot(epochs, [row[f"{prefix}_cost"] for row in history], label=label)
        acc_ax.plot(epochs, [100 * row[f"{prefix}_accuracy"] for row in history], label=label)
    cost_ax.set(xlabel="epoch", ylabel="cost", title="cost")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save_figure(fig, path)


def _save_figure(fig, path: str) -> None:
    """Writes the figure atomically, in the format its suffix names, and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=_figure_format(path), dpi=100), "--plot")
    finally:
        plt.close(fig)


def diagnose(args: argparse.Namespace) -> int:
    """Per-layer gradient norms across training: deep sigmoid next to deep relu."""
    resolve(args.activation, None, "quadratic")
    _check_outputs(plot=args.plot)
    train_set, _, _ = _load_dataset(args)
    sizes = [train_set.x.shape[1], *args.hidden, 10]
    xs, ys = jnp.asarray(train_set.x), jnp.asarray(data.one_hot(train_set.y))
    probe_xs, probe_ys = xs[: args.probe], ys[: args.probe]
    runs = {}
    for activation in ("sigmoid", args.activation):
        options = dict(activation=activation, output_activation="sigmoid", cost="quadratic")
        init_key, key = jax.random.split(jax.random.key(args.seed))
        params = fbp.init_mlp(init_key, sizes, init="scaled_normal")
        norms = [fbp.layer_gradient_norms(params, probe_xs, probe_ys, **options)]
        for epoch in tqdm.trange(1, args.epochs + 1, desc=activation, disable=args.no_progress):
            key, epoch_key = jax.random.split(key)
            params = fbp.train_epoch(epoch_key, params, xs, ys, args.eta, batch_size=10, **options)
            _check_divergence(params, None, epoch)
            norms.append(fbp.layer_gradient_norms(params, probe_xs, probe_ys, **options))
        runs[activation] = [np.asarray(n.delta).tolist() for n in norms]
        print(
            f"{activation} hidden layers {sizes}: ||delta^l|| by layer (1 first), "
            f"epoch 0 and {args.epochs}:"
        )
        for epoch in (0, args.epochs):
            print(f"  epoch {epoch:>3}: " + "  ".join(f"{v:.2e}" for v in runs[activation][epoch]))
        first, last = runs[activation][0][0], runs[activation][0][-2]
        print(
            f"  at initialisation layer 1 learns {last / first:.1f}x slower than layer "
            f"{len(sizes) - 2}"
        )
    if args.plot:
        _plot_layer_norms(runs, args.plot, sizes)
        print(f"plot written to {args.plot}")
    return 0


def _plot_layer_norms(runs: dict, path: str, sizes: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), sharey=True)
    for ax, (activation, history) in zip(np.atleast_1d(axes), runs.items()):
        per_layer = np.array(history)  # (epochs + 1, L)
        for l in range(per_layer.shape[1]):
            ax.semilogy(per_layer[:, l], label=f"layer {l + 1}")
        ax.set(title=f"{activation} hidden layers", xlabel="epoch", ylabel="||delta^l||")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"speed of learning per layer, {sizes}")
    _save_figure(fig, path)


def demo(args: argparse.Namespace) -> int:
    """The main job: a gradient check, then training on the bundled digits."""
    status = gradcheck(args)
    print()
    Path("results").mkdir(exist_ok=True)
    train_args = build_parser().parse_args(
        [
            "train",
            "--dataset",
            "digits",
            "--epochs",
            "30",
            "--plot",
            "results/digits.png",
            "--json",
            "results/digits.json",
        ]
    )
    record = train(train_args)
    return status if record["peak_accuracy"] >= 0.95 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="functional_bp",
        description="Hand-written backprop in JAX, checked against jax.grad.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("gradcheck", help="manual vs jax.grad vs finite differences")
    _add_network_options(check, "784,30,10")
    check.add_argument("--batch-size", type=_count, default=10)
    check.add_argument("--float64", action="store_true", help="check in float64")
    check.set_defaults(run=gradcheck)

    run_demo = commands.add_parser("demo", help="the main job")
    _add_network_options(run_demo, "784,30,10")
    run_demo.set_defaults(run=demo, batch_size=10, float64=False)

    fit = commands.add_parser("train", help="train with the hand-written gradients")
    fit.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    fit.add_argument(
        "--data-dir",
        default=None,
        help="MNIST directory (default: $FUNCTIONAL_BP_MNIST or the cache)",
    )
    fit.add_argument("--download", action="store_true", help="download MNIST if missing")
    fit.add_argument(
        "--eval-on",
        choices=["test", "validation"],
        default="test",
        help="MNIST: evaluate on the test or the validation set",
    )
    _add_network_options(fit, None)
    fit.add_argument("--epochs", type=_count, default=30)
    fit.add_argument("--batch-size", type=_count, default=10)
    fit.add_argument("--eta", type=_positive, default=3.0)
    fit.add_argument("--lmbda", type=_non_negative, default=0.0, help="L2 (sgd only)")
    fit.add_argument(
        "--optimizer", choices=sorted([*OPTIMIZERS, *CURVATURE_OPTIMIZERS]), default="sgd"
    )
    fit.add_argument(
        "--damping", type=_positive, default=0.1, help="diag_ggn: added to the curvature"
    )
    fit.add_argument(
        "--ggn-decay",
        type=_unit_interval,
        default=0.9,
        help="diag_ggn: decay of the curvature's running average, in [0, 1)",
    )
    fit.add_argument(
        "--track",
        choices=["noise-scale"],
        action="append",
        default=[],
        help="also record per epoch: the gradient noise scale B_simple (McCandlish et al.)",
    )
    fit.add_argument(
        "--track-examples",
        type=_count,
        default=5000,
        help="training examples the tracked statistics use (default 5000)",
    )
    fit.add_argument("--save", default=None, help="write params to this .npz")
    fit.add_argument(
        "--plot", default=None, help="write a figure of cost and accuracy (.png, .pdf, .svg, ...)"
    )
    fit.add_argument("--json", default=None, help="write the per-epoch history as JSON")
    fit.add_argument("--float64", action="store_true", help="train in float64, as network.py")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.set_defaults(run=lambda args: 0 if train(args) else 1)

    diag = commands.add_parser("diagnose", help="per-layer gradient norms: sigmoid vs relu")
    diag.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    diag.add_argument("--data-dir", default=None)
    diag.add_argument("--download", action="store_true")
    diag.add_argument("--hidden", type=_hidden, default=[30, 30, 30, 30], help="hidden layer sizes")
    diag.add_argument("--activation", default="relu", help="compared with sigmoid")
    diag.add_argument("--epochs", type=_count, default=10)
    diag.add_argument("--eta", type=_positive, default=0.1)
    diag.add_argument("--probe", type=_count, default=1000, help="examples the norms use")
    diag.add_argument("--seed", type=_seed, default=0)
    diag.add_argument("--plot", default=None, help="write a figure of the norms (.png, .pdf, ...)")
    diag.add_argument("--no-progress", action="store_true")
    diag.set_defaults(run=diagnose, eval_on="test")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if tqdm is None and args.command in ("train", "demo", "diagnose"):
        print('error: install the cli extra: pip install "functional_bp[cli]"', file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:  # bad input, before work
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, fbp.TrainingDiverged) as error:  # the run failed
        print(f"error: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        return 1
