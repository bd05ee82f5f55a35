"""Damped Gauss-Newton steps solved by conjugate gradient, with the hand-written G v.

    python scripts/cg_gauss_newton.py --data-dir DIR   # MNIST IDX files, [784, 100, 10]
    python scripts/cg_gauss_newton.py                  # the bundled 8x8 digits, [64, 100, 10]

Trains a few epochs of SGD (relu, softmax, log-likelihood), then takes Gauss-Newton steps
on mini-batches: d solves (G + lambda I) d = -g by `jax.scipy.sparse.linalg.cg`, with
the operator v -> `ggn_vector_product`(v) + lambda v (no matrix is formed), and
params <- params + d. Prints the mini-batch loss before and after each step, the CG
iterations and the held-out accuracy; writes nothing unless --out FILE is given.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import functional_bp as fbp
from functional_bp import data
from functional_bp.curvature import ggn_vector_product


def accuracy(params, dataset, net):
    outputs, _ = fbp.forward(params, jnp.asarray(dataset.x), net=net)
    return float(jnp.mean(jnp.argmax(outputs, axis=1) == jnp.asarray(dataset.y)))


CALLS = [0]  # G v products of the current step, counted on the host


def _count(_):
    CALLS[0] += 1


@functools.partial(jax.jit, static_argnames=("net", "maxiter"))
def _step(params, xs, ys, damping, tol, *, net, maxiter):
    """params + d, with (G + damping I) d = -g solved by CG. xs and ys are arguments of
    this jit (not closed over), so the library's checks see them as traced."""
    g = fbp.grad(params, xs, ys, net=net)

    def operator(v):
        jax.debug.callback(_count, jnp.zeros(()))
        gv = ggn_vector_product(params, v, xs, ys, net=net)
        return jax.tree.map(lambda a, b: a + damping * b, gv, v)

    b = jax.tree.map(jnp.negative, g)
    d, _ = jax.scipy.sparse.linalg.cg(operator, b, tol=tol, maxiter=maxiter)
    return jax.tree.map(lambda p, s: p + s, params, d)


def gauss_newton_step(params, xs, ys, *, net, damping, maxiter, tol):
    """One damped GN step; returns the new params and the CG iterations taken."""
    CALLS[0] = 0
    new = jax.block_until_ready(_step(params, xs, ys, damping, tol, net=net, maxiter=maxiter))
    jax.effects_barrier()
    return new, CALLS[0] - 1  # one call for the initial residual, one per iteration


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX files (default: the digits)")
    parser.add_argument("--epochs", type=int, default=3, help="SGD epochs before GN")
    parser.add_argument("--steps", type=int, default=5, help="Gauss-Newton steps")
    parser.add_argument("--batch", type=int, default=1000, help="GN mini-batch size")
    parser.add_argument("--damping", type=float, default=1.0, help="lambda of G + lambda I")
    parser.add_argument("--maxiter", type=int, default=50, help="CG iterations at most")
    parser.add_argument("--tol", type=float, default=1e-3, help="CG relative tolerance")
    parser.add_argument("--out", type=Path, help="also write the printed lines to this file")
    args = parser.parse_args(argv)

    if args.data_dir is not None:
        training, held_out, _ = data.load_mnist(args.data_dir)
        name = "MNIST"
    else:
        training, held_out = data.load_digits()
        name = "digits"
    sizes = [training.x.shape[1], 100, 10]
    net = fbp.Network(activation="relu", output_activation="softmax", cost="log_likelihood")
    params = fbp.init_mlp(jax.random.key(0), sizes)
    xs, labels = jnp.asarray(training.x), jnp.asarray(training.y)
    lines = []

    def say(line):
        print(line, flush=True)
        lines.append(line)

    say(f"{name}: {sizes}, {len(labels)} training examples, {jax.default_backend()}")
    key = jax.random.key(1)
    for epoch in range(args.epochs):
        key, sub = jax.random.split(key)
        params = fbp.train_epoch(sub, params, xs, labels, 0.1, batch_size=32, net=net)
        say(f"SGD epoch {epoch + 1}: held-out accuracy {accuracy(params, held_out, net):.4f}")

    rng = np.random.default_rng(2)
    batch = min(args.batch, len(labels))
    for step in range(args.steps):
        idx = rng.choice(len(labels), batch, replace=False)
        xb, yb = xs[idx], labels[idx]
        before = float(fbp.loss(params, xb, yb, net=net))
        start = time.perf_counter()
        params, iterations = gauss_newton_step(
            params, xb, yb, net=net, damping=args.damping, maxiter=args.maxiter, tol=args.tol
        )
        seconds = time.perf_counter() - start
        after = float(fbp.loss(params, xb, yb, net=net))
        say(
            f"GN-CG step {step + 1}: batch {batch}, loss {before:.4f} -> {after:.4f}, "
            f"{iterations} CG iterations, {seconds:.2f} s, held-out accuracy "
            f"{accuracy(params, held_out, net):.4f}"
        )
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
