"""The single-run epoch near its FLOP floor: ways of writing one SGD epoch of [784, 30, 10]
at batch 10, their compiled op count per step and their time, side by side in one run.

    python scripts/epoch_variants.py [--examples 50000]

- library: `train_epoch` (each step gathers its mini-batch by index);
- epoch gather: the shuffled data set gathered once per epoch, then scanned (the
  library's earlier way);
- folded bias: w and b as one augmented matrix [w | b], inputs with a trailing 1, so the
  bias update is part of the weight gradient's product.
Writes bench-results/epoch_variants.md under the current directory (``--out`` to change).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

import jax
import jax.numpy as jnp

import functional_bp as fbp
from functional_bp import timing
from functional_bp.timing import interleaved_medians

SIZES, BATCH, ETA, UNROLL = [784, 30, 10], 10, 3.0, 4


def epoch_gather(key, params, xs, ys):
    """Scans batches gathered once per epoch (a copy of the data set), then sgd_step."""
    order = jax.random.permutation(key, xs.shape[0]).reshape(-1, BATCH)

    def body(p, batch):
        return fbp.sgd_step(p, *batch, ETA), None

    return jax.lax.scan(body, params, (xs[order], ys[order]), unroll=UNROLL)[0]


def folded_bias(key, params, xs, ys):
    """The same SGD with [w | b] and [a; 1]: z = [w | b] [a; 1]; eq 99 gives both at once."""
    augmented = [jnp.concatenate([l.w, l.b[:, None]], axis=1) for l in params]
    order = jax.random.permutation(key, xs.shape[0]).reshape(-1, BATCH)
    ones = jnp.ones((BATCH, 1), xs.dtype)

    def body(ws, idx):
        a0 = jnp.concatenate([xs[idx], ones], axis=1)
        a1 = jax.nn.sigmoid(a0 @ ws[0].T)
        a1_bar = jnp.concatenate([a1, ones], axis=1)
        a2 = jax.nn.sigmoid(a1_bar @ ws[1].T)
        d2 = (a2 - ys[idx]) * a2 * (1 - a2) / BATCH
        d1 = (d2 @ ws[1][:, :-1]) * a1 * (1 - a1)
        return [ws[0] - ETA * d1.T @ a0, ws[1] - ETA * d2.T @ a1_bar], None

    augmented = jax.lax.scan(body, augmented, order, unroll=UNROLL)[0]
    return [fbp.Layer(a[:, :-1], a[:, -1]) for a in augmented]


def ops_per_step(lowered, steps_per_iteration: int, trip_count: int) -> tuple[float, dict]:
    """Ops of the compiled scan body (the while loop of ``trip_count`` iterations), per
    step, leaving out bookkeeping (tuples, parameters, bitcasts, copies)."""
    text = lowered.compile().as_text()
    body_name = re.search(
        r"body=(%[\w.\-]+)[^\n]*\"known_trip_count\":\{\"n\":\"" + str(trip_count) + '"', text
    ).group(1)
    body = re.search(r"\n" + re.escape(body_name) + r" .*?\n}", text, re.S).group(0)
    ops = re.findall(r" = (?:\(.*?\)|\S+) ([a-z][a-z0-9_-]*)\(", body)
    skip = {"get-tuple-element", "parameter", "tuple", "constant", "copy", "bitcast"}
    counts = collections.Counter(op for op in ops if op not in skip)
    return sum(counts.values()) / steps_per_iteration, dict(counts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--out", default="bench-results/epoch_variants.md")
    args = parser.parse_args(argv)
    n = args.examples - args.examples % (BATCH * UNROLL)
    key = jax.random.key(1)
    params = fbp.init_mlp(jax.random.key(0), SIZES)
    xs = jax.random.uniform(jax.random.key(2), (n, SIZES[0]))
    ys = jax.nn.one_hot(jax.random.randint(jax.random.key(3), (n,), 0, 10), 10)
    variants = {
        "library (`train_epoch`, a gather per step)": lambda k, p, x, y: fbp.train_epoch(
            k, p, x, y, ETA, batch_size=BATCH
        ),
        "epoch gather (one gather per epoch)": epoch_gather,
        "folded bias [w | b]": folded_bias,
    }
    jitted = {name: jax.jit(f) for name, f in variants.items()}
    trip = n // BATCH // UNROLL
    ops = {
        name: ops_per_step(f.lower(key, params, xs, ys), UNROLL, trip) for name, f in jitted.items()
    }
    gemm = timing.gemm_rate()
    times = interleaved_medians(
        {name: (lambda f=f: f(key, params, xs, ys)) for name, f in jitted.items()},
        repeats=7,
        warmup=1,
    )
    floor = 6 * n * sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])) / (gemm * 1e9)
    lines = [
        f"One SGD epoch of {SIZES}, batch {BATCH}, {n} examples, float32; GEMM rate "
        f"{gemm:.1f} GFLOP/s (2048^2 matmul, same run), FLOP floor {floor * 1e3:.1f} ms. "
        "Command: `python scripts/epoch_variants.py`.",
        "",
        "| variant | compiled ops per step | ms per epoch | x floor |",
        "| --- | --- | --- | --- |",
    ]
    for name in variants:
        lines.append(
            f"| {name} | {ops[name][0]:.2f} | {times[name] * 1e3:.1f} | {times[name] / floor:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    for name, (_, counts) in ops.items():
        print(name, counts)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
