"""The command line: ``python -m functional_bp {demo,gradcheck} ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp

import functional_bp as fbp
from functional_bp.timing import interleaved_medians


def _sizes(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 784,30,10, got {text!r}") from None


def _add_network_options(parser: argparse.ArgumentParser, sizes: str) -> None:
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=_sizes(sizes),
        help=f"layer sizes, input first (default {sizes})",
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
    parser.add_argument("--seed", type=int, default=0)


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
    options = dict(
        activation=args.activation, output_activation=args.output_activation, cost=args.cost
    )
    result = fbp.check_gradients(params, xs, ys, **options)
    print(f"network {args.sizes}, batch {args.batch_size}, {args.activation}/{args.cost}")
    print(result)

    manual = lambda: fbp.grad(params, xs, ys, **options)  # noqa: E731
    autodiff_fn = jax.jit(jax.grad(lambda p: fbp.loss(p, xs, ys, **options)))
    times = interleaved_medians(
        {"manual": manual, "jax.grad": lambda: autodiff_fn(params)}, repeats=25, min_time=0.01
    )
    print(
        f"one mean-gradient step, median of 25: manual {times['manual'] * 1e6:.1f} us, "
        f"jax.jit(jax.grad) {times['jax.grad'] * 1e6:.1f} us, "
        f"ratio manual/autodiff {times['manual'] / times['jax.grad']:.2f}"
    )
    return 0 if result.ok else 1


def demo(args: argparse.Namespace) -> int:
    """The main job: the gradient check of [784, 30, 10]."""
    return gradcheck(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="functional_bp",
        description="Hand-written backprop in JAX, checked against jax.grad.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("gradcheck", help="manual vs jax.grad vs finite differences")
    _add_network_options(check, "784,30,10")
    check.add_argument("--batch-size", type=int, default=10)
    check.add_argument("--float64", action="store_true", help="check in float64")
    check.set_defaults(run=gradcheck)

    run_demo = commands.add_parser("demo", help="the main job")
    _add_network_options(run_demo, "784,30,10")
    run_demo.set_defaults(run=demo, batch_size=10, float64=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
