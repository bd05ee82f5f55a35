"""The command line: ``python -m functional_bp {demo,gradcheck,train} ...``."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import functional_bp as fbp
from functional_bp import data
from functional_bp._files import atomic_write, check_writable
from functional_bp._options import resolve
from functional_bp.training import _count_correct, _summed_cost, l2_term

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


def _seeds(text: str) -> list[int]:
    """ "0-7" or "0,3,5" (or both: "0-3,8")."""
    seeds = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            seeds += range(int(low), int(high or low) + 1)
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(
            f"expected distinct seeds >= 0 like 0-7 or 0,3,5, got {text!r}"
        )
    return seeds


def _etas(text: str) -> list[float]:
    """One learning rate or a list: "3" or "0.5,1,3"."""
    etas = [_positive(part) for part in text.split(",")]
    if len(set(etas)) < len(etas):
        raise argparse.ArgumentTypeError(f"expected distinct learning rates, got {text!r}")
    return etas


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


class _Data(NamedTuple):
    """The training and evaluation sets, as the library takes them."""

    xs: jax.Array
    ys: jax.Array
    labels: np.ndarray
    eval_xs: jax.Array
    eval_ys: jax.Array
    eval_labels: np.ndarray
    eval_name: str


def _load_training_data(args: argparse.Namespace) -> _Data:
    """Checks what can be checked before any work, then loads the data."""
    if args.sizes is None:
        args.sizes = [64, 30, 10] if args.dataset == "digits" else [784, 30, 10]
    resolve(**_options(args))  # fail before loading data
    if jax.process_index() == 0:  # the one process that writes
        _check_outputs(save=args.save, json=args.json, plot=args.plot)
    train_set, eval_set, eval_name = _load_dataset(args)
    if train_set.x.shape[1] != args.sizes[0] or args.sizes[-1] != 10:
        raise ValueError(
            f"--sizes {','.join(map(str, args.sizes))} does not fit {args.dataset}: "
            f"it needs {train_set.x.shape[1]} inputs and 10 outputs"
        )
    dtype = _dtype(args)
    xs, ys = (jnp.asarray(a, dtype) for a in (train_set.x, data.one_hot(train_set.y)))
    eval_xs, eval_ys = (jnp.asarray(a, dtype) for a in (eval_set.x, data.one_hot(eval_set.y)))
    return _Data(xs, ys, train_set.y, eval_xs, eval_ys, eval_set.y, eval_name)


def _dtype(args: argparse.Namespace):
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    return jnp.float64 if args.float64 else jnp.float32


def train(args: argparse.Namespace) -> dict:
    """Trains a network with the hand-written gradients; returns the run's record.

    More than one seed or learning rate trains every combination in one program."""
    args.seeds = args.seeds or [args.seed]
    if len(args.seeds) * len(args.eta) > 1:
        return _train_many(args)
    return _train_one(args)


def _train_one(args: argparse.Namespace) -> dict:
    (args.seed,), (eta,) = args.seeds, args.eta
    options = _options(args)
    processes = jax.process_count()
    if processes > 1 and (args.optimizer != "sgd" or args.rule != "bp"):
        raise ValueError("training on several processes takes --optimizer sgd --rule bp")
    if args.rule != "bp" and (args.optimizer != "sgd" or args.lmbda):
        raise ValueError(
            f"--rule {args.rule} trains with plain SGD and --weight-decay, not --optimizer "
            "or --lmbda"
        )
    d = _load_training_data(args)
    init_key, key = jax.random.split(jax.random.key(args.seed))
    params = fbp.init_mlp(init_key, args.sizes, init=args.init, dtype=_dtype(args))
    track_set = d.xs[: args.track_examples], d.ys[: args.track_examples]
    feedback = None
    if args.rule != "bp":  # fixed random feedback from its own key: the same initial weights
        feedback = fbp.init_feedback(
            jax.random.key(args.seed + 10**6), params, args.rule, scale=args.feedback_scale
        )

    if args.optimizer == "sgd":
        opt_state = None
    else:
        if args.lmbda:
            raise ValueError("--lmbda applies to --optimizer sgd only")
        optimizer = (
            fbp.diag_ggn_descent(eta, args.damping, args.ggn_decay)
            if args.optimizer == "diag_ggn"
            else OPTIMIZERS[args.optimizer](eta)
        )
        opt_state = optimizer.init(params)
    if processes > 1:  # each process holds its devices' part of every mini-batch
        mesh = fbp.data_mesh()
        host_xs, host_ys = np.asarray(d.xs), np.asarray(d.ys)
        print(f"data-parallel over {processes} processes, {mesh.size} devices")

    forward_options = dict(activation=args.activation, output_activation=args.output_activation)
    history, record = [], {"config": _config(args)}
    epochs = tqdm.trange(
        1, args.epochs + 1, desc="training", unit="epoch", disable=args.no_progress, file=sys.stdout
    )
    common = dict(batch_size=args.batch_size, **options)
    for epoch in epochs:
        key, epoch_key = jax.random.split(key)
        start = time.perf_counter()
        if processes > 1:
            params = fbp.data_parallel_epoch(
                mesh, epoch_key, params, host_xs, host_ys, eta, lmbda=args.lmbda, **common
            )
            params = [fbp.Layer(*(a.addressable_data(0) for a in layer)) for layer in params]
        elif args.rule != "bp":
            params, feedback = fbp.feedback_epoch(
                epoch_key,
                params,
                feedback,
                d.xs,
                d.ys,
                eta,
                rule=args.rule,
                weight_decay=args.weight_decay,
                **common,
            )
        elif opt_state is None:
            params = fbp.train_epoch(epoch_key, params, d.xs, d.ys, eta, lmbda=args.lmbda, **common)
        else:
            params, opt_state = fbp.optax_epoch(
                epoch_key, optimizer, params, opt_state, d.xs, d.ys, **common
            )
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        correct = fbp.evaluate(params, d.eval_xs, d.eval_labels, **forward_options)
        row = {
            "epoch": epoch,
            "train_seconds": seconds,
            "train_cost": fbp.total_cost(params, d.xs, d.ys, lmbda=args.lmbda, **options),
            "train_accuracy": fbp.accuracy(params, d.xs, d.labels, **forward_options),
            "eval_cost": fbp.total_cost(params, d.eval_xs, d.eval_ys, lmbda=args.lmbda, **options),
            "eval_accuracy": correct / d.eval_xs.shape[0],
        }
        if args.rule != "bp":
            angles = fbp.alignment_angles(params, feedback, *track_set, rule=args.rule, **options)
            row.update(
                update_angles=np.asarray(angles.update).tolist(),
                feedback_angles=np.asarray(angles.feedback).tolist(),
            )
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
            _write_history(args, record, history, d.eval_name)  # what was learnt is kept
            raise
        # network.py's progress line.
        tqdm.tqdm.write(f"Epoch {epoch - 1}: {correct} / {d.eval_xs.shape[0]}", file=sys.stdout)
        epochs.set_postfix(acc=f"{row['eval_accuracy']:.4f}", cost=f"{row['eval_cost']:.4f}")

    record.update(_summary(history), eval_set=d.eval_name)
    print(
        f"{args.dataset} {d.eval_name} accuracy: final {record['final_accuracy']:.2%}, "
        f"peak {record['peak_accuracy']:.2%} (epoch {record['peak_epoch']}); training "
        f"{record['median_train_seconds_per_epoch']:.3f} s per epoch (median, epochs 2+), "
        f"first epoch with compilation {record['first_epoch_seconds']:.2f} s"
    )
    # The history first: if the params cannot be written, the run is still on record.
    _write_history(args, record, history, d.eval_name)
    if args.save and jax.process_index() == 0:
        fbp.save_params(args.save, params, feedback=feedback, **options_metadata(args))
        print(f"params saved to {args.save}")
    return record


@functools.partial(jax.jit, static_argnames=("opts",))
def _metrics_many(params, xs, ys, labels, lmbda, opts):
    """`evaluate`'s count and `total_cost` of every run: a run axis on every param leaf."""
    num_examples = xs.shape[0]

    def one_run(p):
        cost = _summed_cost(p, xs, ys, opts) / num_examples + l2_term(p, lmbda, num_examples)
        return _count_correct(p, xs, labels, opts), cost

    return jax.vmap(one_run)(params)


def _train_many(args: argparse.Namespace) -> dict:
    """Every (seed, eta) at once: `train_epoch_many`, one program for all runs."""
    if args.optimizer != "sgd" or args.rule != "bp" or args.save or jax.process_count() > 1:
        raise ValueError(
            "several --seeds or --eta values train with --optimizer sgd and --rule bp, "
            "without --save, in one process"
        )
    runs = [(seed, eta) for eta in args.eta for seed in args.seeds]
    options = _options(args)
    opts = resolve(**options)
    d = _load_training_data(args)
    dtype = _dtype(args)
    split = jax.vmap(jax.random.split)
    init_keys, keys = jnp.moveaxis(split(jnp.stack([jax.random.key(s) for s, _ in runs])), 1, 0)
    params = fbp.init_mlp_many(init_keys, args.sizes, init=args.init, dtype=dtype)
    etas = jnp.asarray([eta for _, eta in runs], dtype)
    histories = [[] for _ in runs]
    diverged: dict[int, str] = {}
    print(f"{len(runs)} runs in one program: seeds {args.seeds} x eta {args.eta}")
    for epoch in tqdm.trange(1, args.epochs + 1, desc="training", disable=args.no_progress):
        keys, epoch_keys = jnp.moveaxis(split(keys), 1, 0)
        if args.shared_shuffle:
            epoch_keys = epoch_keys[0]
        start = time.perf_counter()
        params = fbp.train_epoch_many(
            epoch_keys,
            params,
            d.xs,
            d.ys,
            etas,
            batch_size=args.batch_size,
            lmbda=args.lmbda,
            n=d.xs.shape[0],
            **options,
        )
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        train = _metrics_many(params, d.xs, d.ys, d.labels, args.lmbda, opts)
        evals = _metrics_many(params, d.eval_xs, d.eval_ys, d.eval_labels, args.lmbda, opts)
        for r, history in enumerate(histories):
            row = {
                "epoch": epoch,
                "train_seconds": seconds,
                "train_cost": float(train[1][r]),
                "train_accuracy": float(train[0][r]) / d.xs.shape[0],
                "eval_cost": float(evals[1][r]),
                "eval_accuracy": float(evals[0][r]) / d.eval_xs.shape[0],
            }
            history.append(row)
            if r not in diverged:
                try:
                    _check_divergence(
                        jax.tree.map(lambda a, r=r: a[r], params), row["train_cost"], epoch
                    )
                except fbp.TrainingDiverged as error:
                    diverged[r] = str(error)
                    print(f"run seed {runs[r][0]} eta {runs[r][1]:g}: {error}")
        accuracies = [
            histories[r][-1]["eval_accuracy"] for r in range(len(runs)) if r not in diverged
        ]
        if accuracies:
            tqdm.tqdm.write(
                f"Epoch {epoch - 1}: {d.eval_name} accuracy mean {np.mean(accuracies):.2%}, best "
                f"{max(accuracies):.2%} over {len(accuracies)} runs ({seconds:.2f} s)"
            )
    record = {"config": _config(args), "eval_set": d.eval_name, "runs": []}
    for r, (seed, eta) in enumerate(runs):
        run = dict(seed=seed, eta=eta, diverged=diverged.get(r), history=histories[r])
        record["runs"].append({**run, **_summary(histories[r])})
    record["summary"] = _print_sweep(args, record, d.eval_name)
    _write_sweep(args, record)
    if len(diverged) == len(runs):
        raise fbp.TrainingDiverged("every run diverged; try a smaller --eta")
    return record


def _print_sweep(args, record: dict, eval_name: str) -> list[dict]:
    """Per run, then per eta the mean ± std and best of the final and peak accuracies."""
    print(f"{'seed':>5} {'eta':>7} {'final':>8} {'peak':>8} (epoch)")
    for run in record["runs"]:
        note = "  diverged" if run["diverged"] else ""
        print(
            f"{run['seed']:>5} {run['eta']:>7g} {run['final_accuracy']:>8.2%} "
            f"{run['peak_accuracy']:>8.2%} ({run['peak_epoch']}){note}"
        )
    summary = []
    for eta in args.eta:
        finals = [
            r["final_accuracy"] for r in record["runs"] if r["eta"] == eta and not r["diverged"]
        ]
        peaks = [
            r["peak_accuracy"] for r in record["runs"] if r["eta"] == eta and not r["diverged"]
        ]
        if not finals:
            continue
        row = dict(
            eta=eta,
            runs=len(finals),
            final_mean=float(np.mean(finals)),
            final_std=float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
            final_best=max(finals),
            peak_mean=float(np.mean(peaks)),
            peak_best=max(peaks),
        )
        summary.append(row)
        print(
            f"eta {eta:g}, {len(finals)} runs: {eval_name} accuracy final "
            f"{row['final_mean']:.2%} ± {row['final_std']:.2%} (best {row['final_best']:.2%}), "
            f"peak mean {row['peak_mean']:.2%} (best {row['peak_best']:.2%})"
        )
    return summary


def _write_json(path: str, record: dict) -> None:
    text = json.dumps(_strict_json(record), indent=2, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()), "--json")


def _write_sweep(args, record: dict) -> None:
    if args.json:
        _write_json(args.json, record)
        print(f"history of every run written to {args.json}")
    if args.plot:
        _plot_sweep(record, args.plot, title=f"{args.dataset} {args.sizes}")
        print(f"plot written to {args.plot}")


def _plot_sweep(record: dict, path: str, *, title: str) -> None:
    """Per eta: the mean test accuracy and cost across seeds, with a band from the worst
    to the best run."""
    plt = _pyplot()

    fig, (cost_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for eta in sorted({run["eta"] for run in record["runs"]}):
        runs = [r for r in record["runs"] if r["eta"] == eta and not r["diverged"]]
        if not runs:
            continue
        epochs = [row["epoch"] for row in runs[0]["history"]]
        for ax, key, scale in ((cost_ax, "eval_cost", 1), (acc_ax, "eval_accuracy", 100)):
            values = scale * np.array([[row[key] for row in r["history"]] for r in runs])
            line = ax.plot(epochs, values.mean(axis=0), label=f"eta {eta:g} ({len(runs)} runs)")
            ax.fill_between(
                epochs, values.min(axis=0), values.max(axis=0), alpha=0.2, color=line[0].get_color()
            )
    cost_ax.set(xlabel="epoch", ylabel="cost", title=f"{record['eval_set']} cost")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{record['eval_set']} accuracy")
    for ax in (cost_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}: mean over seeds, band from worst to best")
    _save_figure(fig, path)


def _config(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "run"}


def _summary(history: list[dict]) -> dict:
    times = [row["train_seconds"] for row in history]
    best = max(history, key=lambda row: row["eval_accuracy"])
    return dict(
        final_accuracy=history[-1]["eval_accuracy"],
        peak_accuracy=best["eval_accuracy"],
        peak_epoch=best["epoch"],
        # The first epoch includes compilation.
        median_train_seconds_per_epoch=statistics.median(times[1:] or times),
        first_epoch_seconds=times[0],
    )


def _check_divergence(params, cost, epoch: int) -> None:
    try:
        fbp.check_divergence(params, cost, epoch=epoch)
    except fbp.TrainingDiverged as error:
        raise fbp.TrainingDiverged(f"{error}; try a smaller --eta") from None


def options_metadata(args: argparse.Namespace) -> dict:
    return dict(_options(args), dataset=args.dataset, rule=getattr(args, "rule", "bp"))


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
    if jax.process_index() > 0:  # process 0 writes for all
        return
    if args.json:
        _write_json(args.json, record)
        print(f"history written to {args.json}")
    if args.plot:
        plot_history(history, args.plot, title=f"{args.dataset} {args.sizes}", eval_name=eval_name)
        print(f"plot written to {args.plot}")


# The simple noise scale McCandlish et al. (2018) report for MNIST (as issue 11 quotes it).
MNIST_NOISE_SCALE = 900


def plot_history(history: list[dict], path: str, *, title: str, eval_name: str) -> None:
    """A figure of training and evaluation cost and accuracy per epoch."""
    plt = _pyplot()

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


def _pyplot():
    """matplotlib.pyplot drawing to files only (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str) -> None:
    """Writes the figure atomically, in the format its suffix names, and closes it."""
    plt = _pyplot()
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=_figure_format(path), dpi=100), "--plot")
    finally:
        plt.close(fig)


def diagnose(args: argparse.Namespace) -> int:
    """Per-layer gradient norms across training: deep sigmoid next to deep relu; or, with
    --alignment, the angles of feedback alignment and Kolen-Pollack across training."""
    resolve(args.activation, None, "quadratic")
    _check_outputs(plot=args.plot)
    if args.alignment:
        return _diagnose_alignment(args)
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


def _diagnose_alignment(args: argparse.Namespace) -> int:
    """fa and kp from the same initial weights: per hidden layer, the angle between the
    rule's update and the gradient, and between B and w^{l+1}, after every epoch."""
    train_set, _, _ = _load_dataset(args)
    sizes = [train_set.x.shape[1], *args.hidden, 10]
    xs, ys = jnp.asarray(train_set.x), jnp.asarray(data.one_hot(train_set.y))
    probe = xs[: args.probe], ys[: args.probe]
    options = dict(activation="sigmoid", output_activation="sigmoid", cost="cross_entropy")
    runs = {}
    for rule in ("fa", "kp"):
        init_key, key = jax.random.split(jax.random.key(args.seed))
        params = fbp.init_mlp(init_key, sizes, init="scaled_normal")
        feedback = fbp.init_feedback(
            jax.random.key(args.seed + 10**6), params, rule, scale=args.feedback_scale
        )
        angles = [fbp.alignment_angles(params, feedback, *probe, rule=rule, **options)]
        for epoch in tqdm.trange(1, args.epochs + 1, desc=rule, disable=args.no_progress):
            key, epoch_key = jax.random.split(key)
            params, feedback = fbp.feedback_epoch(
                epoch_key,
                params,
                feedback,
                xs,
                ys,
                args.eta,
                rule=rule,
                batch_size=10,
                weight_decay=args.weight_decay if rule == "kp" else 0.0,
                **options,
            )
            _check_divergence(params, None, epoch)
            angles.append(fbp.alignment_angles(params, feedback, *probe, rule=rule, **options))
        runs[rule] = angles
        for epoch in (0, args.epochs):
            update, between = (np.asarray(a) for a in angles[epoch])
            print(
                f"{rule} {sizes} epoch {epoch:>3}: update vs gradient "
                + " ".join(f"{v:5.1f}" for v in update[:-1])
                + " deg; B vs w "
                + " ".join(f"{v:5.1f}" for v in between)
                + " deg"
            )
    if args.plot:
        _plot_alignment(runs, args.plot, sizes)
        print(f"plot written to {args.plot}")
    return 0


def _plot_alignment(runs: dict, path: str, sizes: list[int]) -> None:
    """Lillicrap et al.'s figure: the angles start near 90 degrees and fall."""
    plt = _pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, field, title in ((axes[0], 0, "update vs gradient"), (axes[1], 1, "B vs w^{l+1}")):
        for rule, angles in runs.items():
            per_layer = np.array([np.asarray(a[field]) for a in angles])
            for l in range(len(sizes) - 2):
                ax.plot(per_layer[:, l], label=f"{rule}, hidden layer {l + 1}")
        ax.axhline(90, color="gray", lw=0.5)
        ax.set(title=title, xlabel="epoch", ylabel="degrees")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"alignment with backprop, {sizes}")
    _save_figure(fig, path)


def _plot_layer_norms(runs: dict, path: str, sizes: list[int]) -> None:
    plt = _pyplot()

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
    fit.add_argument(
        "--eta",
        type=_etas,
        default=[3.0],
        help="learning rate, or a list (0.5,1,3): every (seed, eta) trains in one program",
    )
    fit.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        help="several seeds (0-7 or 0,3,5), trained at once in one program; default --seed",
    )
    fit.add_argument(
        "--shared-shuffle",
        action="store_true",
        help="with several runs: one mini-batch order for all (faster; seeds then vary "
        "the initial weights only)",
    )
    cluster = fit.add_argument_group(
        "several processes (jax.distributed): data-parallel SGD, process 0 writes"
    )
    cluster.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    cluster.add_argument("--num-processes", type=_count, default=None)
    cluster.add_argument("--process-id", type=_seed, default=None)
    cluster.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() with the cluster's own detection (SLURM, ...)",
    )
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
        "--rule",
        choices=["bp", "fa", "dfa", "sign", "kp"],
        default="bp",
        help="the backward pass: backprop, feedback alignment, direct feedback alignment, "
        "sign symmetry or Kolen-Pollack (records the alignment angles per epoch)",
    )
    fit.add_argument(
        "--feedback-scale",
        type=_positive,
        default=None,
        help="with --rule: the std of the random B (default 1/sqrt(n_l))",
    )
    fit.add_argument(
        "--weight-decay",
        type=_non_negative,
        default=0.0,
        help="with --rule: w <- (1 - eta wd) w - eta dw (and B for kp, which needs it > 0)",
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
    diag.add_argument(
        "--alignment",
        action="store_true",
        help="instead: the alignment angles of fa and kp across epochs (Lillicrap et al.)",
    )
    diag.add_argument(
        "--weight-decay", type=_non_negative, default=1e-3, help="--alignment: kp's decay"
    )
    diag.add_argument(
        "--feedback-scale",
        type=_positive,
        default=None,
        help="--alignment: the std of the random B (default 1/sqrt(n_l))",
    )
    diag.add_argument("--no-progress", action="store_true")
    diag.set_defaults(run=diagnose, eval_on="test")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cluster = getattr(args, "distributed", False) or any(
        getattr(args, name, None) is not None
        for name in ("coordinator", "num_processes", "process_id")
    )
    if cluster:
        try:
            _init_distributed(args)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if jax.process_index() > 0:  # process 0 reports for all
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
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
