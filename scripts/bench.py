"""Benchmark: the hand-written backprop against jax.grad, network.py in NumPy and the GEMM
rate, every comparison measured side by side (interleaved) in one run.

    python scripts/bench.py            # the full suite (~25 min on 2 CPU cores)
    python scripts/bench.py --quick    # small sizes, few repeats, under a minute on CPU
    python scripts/bench.py --smoke    # tiny sizes, one repeat: checks that every case runs
    python scripts/bench.py --smoke --backend-sizes gpu   # the GPU table's run, on a CPU

The sizes come from a size table, one per backend kind (CPU_FULL/CPU_QUICK and
GPU_FULL/GPU_QUICK below; `SIZE_TABLES`), picked by `jax.default_backend()`: "cpu" on
the CPU, "gpu" on a GPU or TPU; --backend-sizes cpu|gpu forces one. --smoke shrinks
every case to one tiny problem whichever the table. The full tables, as (sizes, batch):

    case                cpu                                gpu
    mean_gradient       [784,30,10] 10, [784,100,10] 128,  [784,1024,1024,10] 1024,
      (compile: the       [784,1024,1024,10] 256,            [784,4096,4096,10] 1024 and 4096,
      first 3)            [4096,4096,4096] 1024              [4096,8192,8192,4096] 4096
    per_example         the first 3 above                  [784,1024,1024,10] 1024,
                                                             [784,4096,4096,10] 256
    per_example_norms,  [784,1024,1024,10] 256             [784,1024,1024,10] 1024
      statistics,
      curvature_batch
    epoch               [784,30,10] 10, 50,000 examples    [784,1024,1024,10] 1024, 65,536
                          (NumPy timed on 10,000)            examples (NumPy timed on 256)
    many_runs           [784,30,10] 10, 50,000 ex.,        [784,30,10] 10, 50,000 ex.,
                          16 and 64 runs                     16, 64 and 256 runs
    feedback            [784,1000,10] 64,                  [784,1024,1024,10] 1024,
                          [784,1024,1024,10] 256             [784,4096,4096,10] 4096
    direct_call         [784,30,10] 10                     [784,30,10] 10 (dispatch-bound)
    GEMM rate           float32 4096^2                     float32 8192^2

One copy of the per-example gradients (batch x params x 4 bytes) stays under
PER_EXAMPLE_BUDGET_GIB = 24 GiB (19.1 GiB at most in the gpu table), so that the autodiff
references, which hold up to 3, fit well under 64 GiB.

Every contender is timed by `functional_bp.timing.interleaved_medians`, which waits for
each call's result with `jax.block_until_ready` (on a GPU, dispatch returns at once);
a --smoke run checks that every result is arrays it can wait on. The GEMM rate is a
`jnp` matmul under `jax.jit` on the default device, the device every case runs on.

Writes <out>.md (the tables), <out>.json and <out>.png, with the backend in the name:
bench-results/bench on the CPU (the default out, under the current directory),
bench-results/bench-gpu on a GPU, and "-<table>-sizes" added when --backend-sizes
forces the other table (bench-results/bench-gpu-sizes on a CPU).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import functional_bp as fbp
from functional_bp import core, curvature, feedback, per_example, privacy, statistics, training
from functional_bp.timing import interleaved_medians

NETS = {
    "sigmoid/quadratic": fbp.Network(activation="sigmoid", cost="quadratic"),
    "relu/cross_entropy": fbp.Network(
        activation="relu", output_activation="sigmoid", cost="cross_entropy"
    ),
}
STATS_NET = fbp.Network(activation="relu", output_activation="softmax", cost="log_likelihood")


class Scale(NamedTuple):
    """The sizes and repeats of one kind of run: "full", "quick" or "smoke", from the
    size table ``table`` ("cpu" or "gpu")."""

    mode: str
    table: str
    sizes: list  # (sizes, batch) of the mean gradient; the first 3 also of the compile times
    per_example: list  # (sizes, batch) of the per-example gradients
    gemm_n: int
    epoch: tuple  # (sizes, batch, examples, examples timed in NumPy)
    many_runs: tuple  # (sizes, batch, examples, run counts)
    feedback: list  # (sizes, batch) per network
    large: tuple  # (sizes, batch) of the per-example norms and the statistics
    direct: tuple  # (sizes, batch) of the direct-call overhead
    # The book's two-convolutional-layer network: (layers, image side, grad batches,
    # per-example norms' batch, examples of the epoch).
    conv: tuple = ("conv20x5,pool2,conv40x5,pool2,dense100", 28, (10, 128), 128, 5_000)
    heavy_flops: tuple = (5e10, 1e9)  # a call of more FLOPs gets 3, of more 7, else 25 repeats

    def repeats(self, full: int, quick: int) -> int:
        return {"full": full, "quick": quick, "smoke": 1}[self.mode]

    @property
    def min_time(self) -> float:
        """Seconds per timed sample of a short call (none in a smoke run)."""
        return 0.0 if self.mode == "smoke" else 0.02


# The size tables, one per backend kind: "cpu" for the CPU backend, "gpu" for a GPU or a
# TPU. `jax.default_backend()` picks the table; --backend-sizes forces one.
#
# CPU: the sizes of every published run (docs/performance.md), 2 shared cores.
CPU_SIZES = [
    ([784, 30, 10], 10),
    ([784, 100, 10], 128),
    ([784, 1024, 1024, 10], 256),
    ([4096, 4096, 4096], 1024),
]
CPU_FULL = Scale(
    mode="full",
    table="cpu",
    sizes=CPU_SIZES,
    per_example=CPU_SIZES[:3],
    gemm_n=4096,
    epoch=([784, 30, 10], 10, 50_000, 10_000),
    many_runs=([784, 30, 10], 10, 50_000, (16, 64)),
    feedback=[([784, 1000, 10], 64), ([784, 1024, 1024, 10], 256)],
    large=([784, 1024, 1024, 10], 256),
    direct=([784, 30, 10], 10),
)
CPU_QUICK = CPU_FULL._replace(
    mode="quick",
    sizes=CPU_SIZES[:2],
    per_example=CPU_SIZES[:2],
    gemm_n=1024,
    epoch=([784, 30, 10], 10, 5_000, 2_000),
    many_runs=([784, 30, 10], 10, 5_000, (4, 8)),
    feedback=[([784, 100, 10], 64)],
    large=([784, 100, 10], 64),
    conv=("conv20x5,pool2,conv40x5,pool2,dense100", 28, (10, 128), 128, 1_000),
)
# GPU (or TPU): batches of 1,024 and more, widths of 4,096 and more, where a GPU is busy.
# The cases that materialise per-example gradients (per_example; large, for the
# vmap(jax.grad) references of the norms and the statistics) hold batch x params x 4
# bytes at once, and the autodiff statistics up to 3 such copies: each stays at most
# PER_EXAMPLE_BUDGET_GIB (below), so well under 64 GiB (an H200 has about 139 GiB).
# direct_call stays at the dispatch-bound [784, 30, 10], batch 10, on purpose (it
# measures the cost of the Python wrapper), and many_runs at the small net whose many
# runs fill the device.
GPU_SIZES = [
    ([784, 1024, 1024, 10], 1024),
    ([784, 4096, 4096, 10], 1024),
    ([784, 4096, 4096, 10], 4096),
    ([4096, 8192, 8192, 4096], 4096),
]
GPU_CONV = ("conv20x5,pool2,conv40x5,pool2,dense100", 28, (128, 1024), 1024, 65_536)
GPU_FULL = Scale(
    mode="full",
    table="gpu",
    sizes=GPU_SIZES,
    per_example=[([784, 1024, 1024, 10], 1024), ([784, 4096, 4096, 10], 256)],
    gemm_n=8192,
    epoch=([784, 1024, 1024, 10], 1024, 65_536, 256),
    many_runs=([784, 30, 10], 10, 50_000, (16, 64, 256)),
    feedback=[([784, 1024, 1024, 10], 1024), ([784, 4096, 4096, 10], 4096)],
    large=([784, 1024, 1024, 10], 1024),
    direct=([784, 30, 10], 10),
    conv=GPU_CONV,
    heavy_flops=(5e12, 1e11),
)
GPU_QUICK = GPU_FULL._replace(
    mode="quick",
    sizes=GPU_SIZES[:2],
    per_example=GPU_FULL.per_example[:1],
    gemm_n=4096,
    epoch=([784, 1024, 1024, 10], 1024, 8_192, 64),
    many_runs=([784, 30, 10], 10, 5_000, (16, 64)),
    feedback=GPU_FULL.feedback[:1],
    large=([784, 1024, 1024, 10], 256),
)
SIZE_TABLES = {
    "cpu": {"full": CPU_FULL, "quick": CPU_QUICK},
    "gpu": {"full": GPU_FULL, "quick": GPU_QUICK},
}
PER_EXAMPLE_BUDGET_GIB = 24  # one copy of the per-example gradients, at most
# Every case on one tiny problem, whichever the table, for the smoke test: what costs is
# compiling, so as few shapes as there can be. The statistics' autodiff reference sums
# chunks of 16 examples, so the batch of `large` is a multiple of 16.
SMOKE = CPU_FULL._replace(
    mode="smoke",
    sizes=[([8, 6, 4], 16)],
    per_example=[([8, 6, 4], 16)],
    gemm_n=64,
    epoch=([8, 6, 4], 8, 16, 8),
    many_runs=([8, 6, 4], 8, 16, (2,)),
    feedback=[([8, 6, 4], 16)],
    large=([8, 6, 4], 16),
    direct=([8, 6, 4], 16),
    conv=("conv2x3,pool2,dense4", 8, (4,), 4, 20),
)


def table_for(backend):
    """The size table of a backend: "cpu" for the CPU, "gpu" for anything else."""
    return "cpu" if backend == "cpu" else "gpu"


def select_scale(mode, table):
    """The Scale of a run: ``mode`` "full", "quick" or "smoke", size table ``table``."""
    if mode == "smoke":
        return SMOKE._replace(table=table)
    return SIZE_TABLES[table][mode]


def n_params(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def per_example_gib(scale):
    """GiB of one copy of the per-example gradients (batch x params x 4 bytes) in each
    case that materialises them."""
    cases = {f"per_example {s} batch {b}": (s, b) for s, b in scale.per_example}
    s, b = scale.large
    cases[f"per_example_norms, statistics {s} batch {b}"] = (s, b)
    return {name: b * n_params(s) * 4 / 2**30 for name, (s, b) in cases.items()}


def problem(sizes, batch, seed=0):
    """Params (network2.py's init), uniform inputs and one-hot targets, from ``seed``."""
    return _problem(tuple(sizes), batch, seed)


@functools.partial(jax.jit, static_argnums=(0, 1))  # one program, not an op at a time
def _problem(sizes, batch, seed):
    key = jax.random.key(seed)
    init_key, x_key, y_key = jax.random.split(key, 3)
    params = fbp.init_mlp(init_key, sizes, init="scaled_normal")
    xs = jax.random.uniform(x_key, (batch, sizes[0]))
    ys = jax.nn.one_hot(jax.random.randint(y_key, (batch,), 0, sizes[-1]), sizes[-1])
    return params, xs, ys


def step_flops(sizes, batch):
    """Forward 2, backward 4 FLOPs per weight and example: 6 * batch * sum n_in n_out."""
    return 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def repeats_for(flops, scale):
    heavy, medium = scale.heavy_flops
    return scale.repeats(full=3 if flops > heavy else 7 if flops > medium else 25, quick=5)


def _unsynchronised(out):
    """The leaves of a contender's result that `jax.block_until_ready` cannot wait on:
    anything but jax and NumPy arrays and Python scalars."""
    ok = (jax.Array, np.ndarray, np.generic, int, float, bool)
    return [type(leaf).__name__ for leaf in jax.tree.leaves(out) if not isinstance(leaf, ok)]


def timed(contenders, scale, **kwargs):
    """`interleaved_medians` of the contenders, which blocks on every call's result
    (`jax.block_until_ready`), so no asynchronous dispatch passes for speed on a GPU. A
    smoke run first checks that every result is made of arrays it can wait on."""
    if scale.mode == "smoke":
        for name, fn in contenders.items():
            if bad := _unsynchronised(fn()):
                raise TypeError(f"{name}: block_until_ready cannot wait on {bad}")
    return interleaved_medians(contenders, **kwargs)


def gemm_rate(n, scale, repeats=5):
    """GFLOP/s of a float32 n x n matmul, `jnp` under `jax.jit` on the default device
    (the one every case runs on), each call waited for with `jax.block_until_ready`."""
    device = jax.devices()[0]
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32), device)
    matmul = jax.jit(lambda a: a @ a)
    seconds = timed({"gemm": lambda: matmul(a)}, scale, repeats=repeats, min_time=scale.min_time)[
        "gemm"
    ]
    return 2 * n**3 / seconds / 1e9


def case_mean_gradient(scale):
    rows = []
    for sizes, batch in scale.sizes:
        for name, net in NETS.items():
            params, xs, ys = problem(sizes, batch)
            autodiff = jax.jit(jax.grad(lambda p, x, y, net=net: fbp.loss(p, x, y, net=net)))
            flops = step_flops(sizes, batch)
            t = timed(
                {
                    "manual": lambda net=net: fbp.grad(params, xs, ys, net=net),
                    "autodiff": lambda: autodiff(params, xs, ys),
                },
                scale=scale,
                repeats=repeats_for(flops, scale),
                warmup=1,
                min_time=scale.min_time,
            )
            rows.append(
                dict(
                    sizes=sizes,
                    batch=batch,
                    options=name,
                    manual_s=t["manual"],
                    autodiff_s=t["autodiff"],
                    ratio=t["manual"] / t["autodiff"],
                    manual_gflops=flops / t["manual"] / 1e9,
                    autodiff_gflops=flops / t["autodiff"] / 1e9,
                )
            )
            print_row("mean gradient", rows[-1])
    return rows


def case_direct_call(scale):
    """`grad` called directly from Python at a dispatch-bound size, against a plain jitted
    function of the same computation (`core.mean_value_and_grad` under `jax.jit`, no
    public wrapper): the cost of the wrapper per call (the static ``net``'s hash and
    equality on jit's cache path, the pytree of params). Target: at most 1.05x."""
    sizes, batch = scale.direct
    params, xs, ys = problem(sizes, batch)
    net = NETS["relu/cross_entropy"]  # an explicit, non-default value, built once
    default = fbp.Network()

    def plain(network):
        return jax.jit(lambda p, x, y: core.mean_value_and_grad(network, p, x, y)[1])

    plain_net, plain_again, plain_default = plain(net), plain(net), plain(default)
    autodiff = jax.jit(jax.grad(fbp.loss))
    contenders = {
        "grad, explicit net": lambda: fbp.grad(params, xs, ys, net=net),
        "grad, default net": lambda: fbp.grad(params, xs, ys),
        "plain jit, explicit net": lambda: plain_net(params, xs, ys),
        # A second jit of the same function: its ratio to the first is this run's noise.
        "plain jit, explicit net, again": lambda: plain_again(params, xs, ys),
        "plain jit, default net": lambda: plain_default(params, xs, ys),
        "jax.jit(jax.grad(loss)), default net": lambda: autodiff(params, xs, ys),
    }
    t = timed(
        contenders,
        scale=scale,
        repeats=scale.repeats(full=61, quick=11),
        warmup=2,
        min_time=0.0 if scale.mode == "smoke" else 0.01,
    )
    row = dict(
        sizes=sizes,
        batch=batch,
        net=repr(net),
        seconds=t,
        explicit_over_plain=t["grad, explicit net"] / t["plain jit, explicit net"],
        default_over_plain=t["grad, default net"] / t["plain jit, default net"],
        default_over_plain_explicit=t["grad, default net"] / t["plain jit, explicit net"],
        noise=t["plain jit, explicit net, again"] / t["plain jit, explicit net"],
        autodiff_over_plain=t["jax.jit(jax.grad(loss)), default net"] / t["plain jit, default net"],
        target=1.05,
    )
    print(
        f"direct call {sizes} batch {batch}: grad / plain jit: explicit net "
        f"{row['explicit_over_plain']:.3f}, default net {row['default_over_plain']:.3f} "
        f"(target 1.05), plain jit again / plain jit {row['noise']:.3f} (noise); "
        + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in t.items()),
        flush=True,
    )
    return row


def case_per_example(scale):
    rows = []
    net = NETS["sigmoid/quadratic"]
    for sizes, batch in scale.per_example:
        params, xs, ys = problem(sizes, batch)
        one = lambda p, x, y: fbp.loss(p, x[None], y[None], net=net)
        autodiff = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))
        t = timed(
            {
                "manual": lambda: per_example.per_example_grads(params, xs, ys, net=net),
                "autodiff": lambda: autodiff(params, xs, ys),
            },
            scale=scale,
            repeats=repeats_for(step_flops(sizes, batch) * 10, scale),
            warmup=1,
            min_time=scale.min_time,
        )
        rows.append(
            dict(
                sizes=sizes,
                batch=batch,
                options="sigmoid/quadratic",
                manual_s=t["manual"],
                autodiff_s=t["autodiff"],
                ratio=t["manual"] / t["autodiff"],
            )
        )
        print_row("per-example", rows[-1])
    return rows


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def network_py_epoch(biases, weights, xs, ys, eta, batch_size, rng):
    """network.py's SGD epoch in NumPy, faithfully: column vectors, a loop over examples."""
    order = rng.permutation(len(xs))
    for k in range(0, len(xs), batch_size):
        batch = order[k : k + batch_size]
        nabla_b = [np.zeros(b.shape) for b in biases]
        nabla_w = [np.zeros(w.shape) for w in weights]
        for i in batch:
            activation = xs[i].reshape(-1, 1)
            activations, zs = [activation], []
            for b, w in zip(biases, weights):
                z = np.dot(w, activation) + b
                zs.append(z)
                activation = sigmoid(z)
                activations.append(activation)
            delta = (
                (activations[-1] - ys[i].reshape(-1, 1)) * sigmoid(zs[-1]) * (1 - sigmoid(zs[-1]))
            )
            delta_b, delta_w = [delta], [np.dot(delta, activations[-2].T)]
            for l in range(2, len(weights) + 1):
                sp = sigmoid(zs[-l]) * (1 - sigmoid(zs[-l]))
                delta = np.dot(weights[-l + 1].T, delta) * sp
                delta_b.insert(0, delta)
                delta_w.insert(0, np.dot(delta, activations[-l - 1].T))
            nabla_b = [nb + d for nb, d in zip(nabla_b, delta_b)]
            nabla_w = [nw + d for nw, d in zip(nabla_w, delta_w)]
        weights = [w - (eta / len(batch)) * nw for w, nw in zip(weights, nabla_w)]
        biases = [b - (eta / len(batch)) * nb for b, nb in zip(biases, nabla_b)]
    return biases, weights


def case_epoch(scale, gemm_gflops):
    sizes, batch, n, numpy_n = scale.epoch
    params, xs, ys = problem(sizes, n)
    key = jax.random.key(1)

    def autodiff_loss(p, x, y):
        return fbp.loss(p, x, y)

    @jax.jit
    def autodiff_epoch(key, params, xs, ys):
        def step(step_key, p, xb, yb):
            g = jax.grad(autodiff_loss)(p, xb, yb)
            return jax.tree.map(lambda w, d: w - 3.0 * d, p, g)

        return training.scan_epoch(key, params, xs, ys, step, batch_size=batch)

    # network.py in NumPy (float64, as network.py computes), interleaved with the JAX
    # epochs; timed on the first numpy_n examples and scaled to the epoch.
    biases = [np.asarray(l.b, np.float64).reshape(-1, 1) for l in params]
    weights = [np.asarray(l.w, np.float64) for l in params]
    np_xs, np_ys = np.asarray(xs[:numpy_n], np.float64), np.asarray(ys[:numpy_n], np.float64)
    rng = np.random.default_rng(0)
    t = timed(
        {
            "manual": lambda: fbp.train_epoch(key, params, xs, ys, 3.0, batch_size=batch),
            "autodiff": lambda: autodiff_epoch(key, params, xs, ys),
            "numpy": lambda: network_py_epoch(biases, weights, np_xs, np_ys, 3.0, batch, rng),
        },
        scale=scale,
        repeats=scale.repeats(full=5, quick=3),
        warmup=1,
    )
    numpy_s = t["numpy"] * n / numpy_n
    floor_s = step_flops(sizes, n) / (gemm_gflops * 1e9)
    row = dict(
        sizes=sizes,
        batch=batch,
        examples=n,
        manual_s=t["manual"],
        autodiff_s=t["autodiff"],
        ratio=t["manual"] / t["autodiff"],
        numpy_network_py_s=numpy_s,
        speedup_vs_numpy=numpy_s / t["manual"],
        flop_floor_s=floor_s,
        manual_over_floor=t["manual"] / floor_s,
        numpy_examples_timed=numpy_n,
    )
    print(
        f"epoch {sizes} batch {batch}, {n} examples: manual {row['manual_s']:.3f} s, "
        f"jax.grad {row['autodiff_s']:.3f} s (ratio {row['ratio']:.2f}), network.py NumPy "
        f"{numpy_s:.2f} s (x{row['speedup_vs_numpy']:.1f}), FLOP floor {floor_s:.4f} s"
    )
    return row


def case_many_runs(scale, gemm_gflops):
    """R networks in one program (`training.many(train_epoch, ...)`) against
    one run (`train_epoch`): throughput ratio R * t_1 / t_R, own shuffles and a shared one."""
    sizes, batch, n, counts = scale.many_runs
    _, xs, ys = problem(sizes, n)
    key = jax.random.key(1)
    # Initialisers jitted: one program each, not one per random op.
    one = jax.jit(fbp.init_mlp, static_argnums=1)(jax.random.key(0), tuple(sizes))
    init_many = jax.jit(training.many(fbp.init_mlp, per_run=["key"]), static_argnums=1)
    own = training.many(fbp.train_epoch, per_run=["key", "params", "learning_rate"])
    shared = training.many(fbp.train_epoch, per_run=["params", "learning_rate"])
    contenders = {"1 run": lambda: fbp.train_epoch(key, one, xs, ys, 3.0, batch_size=batch)}
    for r in counts:
        keys = jax.random.split(jax.random.key(2), r)
        params = init_many(keys, tuple(sizes))
        etas = jnp.full((r,), 3.0)
        contenders[f"{r} runs, own shuffles"] = lambda k=keys, p=params, e=etas: own(
            k, p, xs, ys, e, batch_size=batch
        )
        contenders[f"{r} runs, shared shuffle"] = lambda p=params, e=etas: shared(
            key, p, xs, ys, e, batch_size=batch
        )
    t = timed(contenders, scale, repeats=scale.repeats(full=3, quick=3), warmup=1)
    floor = step_flops(sizes, n) / (gemm_gflops * 1e9)
    rows = []
    for name, seconds in t.items():
        r = int(name.split()[0])
        rows.append(
            dict(
                name=name,
                runs=r,
                seconds=seconds,
                throughput=r * t["1 run"] / seconds,
                over_floor=seconds / (r * floor),
            )
        )
        print(
            f"many runs {sizes} batch {batch}, {n} examples: {name}: {seconds:.3f} s, "
            f"throughput x{rows[-1]['throughput']:.2f} of one run, "
            f"{rows[-1]['over_floor']:.1f}x the FLOP floor",
            flush=True,
        )
    return dict(sizes=sizes, batch=batch, examples=n, rows=rows)


def case_feedback(scale):
    """A step of each feedback rule (`training.train_step` with `feedback.RuleGradient`)
    against a bp step (`sgd_step`), and `alignment_angles` against one `grad`,
    interleaved per network."""
    optimizer = training.sgd(0.1)  # static in train_step: one object for every call
    rows = []
    for sizes, batch in scale.feedback:
        params, xs, ys = problem(sizes, batch)
        matrices = {
            r: feedback.init_feedback(jax.random.key(5), params, r) for r in ("fa", "sign", "dfa")
        }
        contenders = {
            "bp step (sgd_step)": lambda: fbp.sgd_step(params, xs, ys, 0.1),
            "grad": lambda: fbp.grad(params, xs, ys),
            "alignment_angles (fa)": lambda: feedback.alignment_angles(
                params, matrices["fa"], xs, ys, rule="fa"
            ),
        }
        for rule in ("fa", "sign", "dfa"):
            state = feedback.FeedbackParams(params, matrices[rule])
            step = (state, optimizer.init(state), feedback.RuleGradient(rule))
            contenders[f"{rule} step"] = lambda s=step: training.train_step(
                None, optimizer, s[0], s[1], xs, ys, gradient=s[2]
            )
        t = timed(contenders, scale, repeats=scale.repeats(full=15, quick=3), warmup=2)
        row = dict(
            sizes=sizes,
            batch=batch,
            seconds=t,
            step_ratios={
                r: t[f"{r} step"] / t["bp step (sgd_step)"] for r in ("fa", "sign", "dfa")
            },
            alignment_over_grad=t["alignment_angles (fa)"] / t["grad"],
        )
        rows.append(row)
        print(
            f"feedback {sizes} batch {batch}: step / bp step "
            + ", ".join(f"{r} {v:.3f}" for r, v in row["step_ratios"].items())
            + f"; alignment_angles / grad {row['alignment_over_grad']:.2f}",
            flush=True,
        )
    return rows


def case_privacy(scale):
    """DP-SGD: a DP step (`train_step` with `per_example.PrivateGradient`) against a
    plain step (`MeanGradient`), both `optax.sgd`, at the per-example norms' size; and a
    Poisson-sampled epoch (`privacy.poisson_epoch`, padded to `default_max_batch`)
    against a fixed-batch epoch (`training.epoch`, `PrivateGradient`) of the same
    expected batch, on 8 batches' worth of examples."""
    sizes, batch = scale.large
    params, xs, ys = problem(sizes, batch)
    optimizer = training.sgd(0.1)  # static: one object for every call
    state = optimizer.init(params)
    key = jax.random.key(3)
    private = per_example.PrivateGradient(1.0, 1.1)
    step = timed(
        {
            "plain step": lambda: training.train_step(None, optimizer, params, state, xs, ys),
            "DP step": lambda: training.train_step(
                key, optimizer, params, state, xs, ys, gradient=private
            ),
        },
        scale,
        repeats=scale.repeats(full=15, quick=5),
        warmup=2,
        min_time=scale.min_time,
    )
    n = 8 * batch
    _, exs, eys = problem(sizes, n, seed=1)
    q = batch / n
    epochs = timed(
        {
            "fixed-batch epoch": lambda: training.epoch(
                key, optimizer, params, state, exs, eys, batch_size=batch, gradient=private
            ),
            "Poisson epoch": lambda: privacy.poisson_epoch(
                key, optimizer, params, state, exs, eys, sample_rate=q, gradient=private
            ),
        },
        scale,
        repeats=scale.repeats(full=7, quick=3),
        warmup=1,
    )
    row = dict(
        sizes=sizes,
        batch=batch,
        seconds={**step, **epochs},
        dp_over_plain=step["DP step"] / step["plain step"],
        examples=n,
        max_batch=privacy.default_max_batch(n, q),
        poisson_over_fixed=epochs["Poisson epoch"] / epochs["fixed-batch epoch"],
    )
    print(
        f"privacy {sizes} batch {batch}: DP step / plain step {row['dp_over_plain']:.3f}; "
        f"Poisson epoch (max_batch {row['max_batch']}) / fixed-batch epoch, {n} examples: "
        f"{row['poisson_over_fixed']:.3f}",
        flush=True,
    )
    return row


def _memory_mb(fn, *args):
    """Temporary plus output bytes of the compiled program (XLA's memory analysis); a
    jitted ``fn`` reuses the program its timing compiled, any other is jitted."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    stats = jitted.lower(*args).compile().memory_analysis()
    return (stats.temp_size_in_bytes + stats.output_size_in_bytes) / 2**20


def case_per_example_norms(scale):
    """Norms and clipping from the error terms vs materialised vmap(jax.grad)."""
    sizes, batch = scale.large
    params, xs, ys = problem(sizes, batch)
    clip = 1.0
    one = lambda p, x, y: fbp.loss(p, x[None], y[None])
    per_example_autodiff = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))

    def norms_of(g):
        return jnp.sqrt(sum(jnp.sum(l.reshape(batch, -1) ** 2, axis=1) for l in jax.tree.leaves(g)))

    def autodiff_norms(p, x, y):
        return norms_of(per_example_autodiff(p, x, y))

    def autodiff_clipped(p, x, y):
        g = per_example_autodiff(p, x, y)
        scale = jnp.minimum(1.0, clip / norms_of(g))
        return jax.tree.map(lambda l: jnp.tensordot(scale, l, axes=1) / batch, g)

    autodiff_norms, autodiff_clipped = jax.jit(autodiff_norms), jax.jit(autodiff_clipped)
    norms_fn = lambda p, x, y: per_example.per_example_grad_norms(p, x, y).total
    clipped_fn = lambda p, x, y: per_example.clipped_grad(p, x, y, clip)
    contenders = {
        "norms (error terms)": norms_fn,
        "norms (vmap(jax.grad))": autodiff_norms,
        "clipped (weighted pass)": clipped_fn,
        "clipped (vmap(jax.grad))": autodiff_clipped,
        "mean gradient (grad)": fbp.grad,
    }
    t = timed(
        {k: (lambda f=f: f(params, xs, ys)) for k, f in contenders.items()},
        scale=scale,
        repeats=scale.repeats(full=5, quick=3),
        warmup=1,
    )
    memory = {k: _memory_mb(f, params, xs, ys) for k, f in contenders.items()}
    rows = [dict(name=k, seconds=t[k], memory_mb=memory[k]) for k in contenders]
    row = dict(
        sizes=sizes,
        batch=batch,
        rows=rows,
        norms_speedup=t["norms (vmap(jax.grad))"] / t["norms (error terms)"],
        clipped_speedup=t["clipped (vmap(jax.grad))"] / t["clipped (weighted pass)"],
    )
    for r in rows:
        print(
            f"per-example norms {sizes} batch {batch}: {r['name']}: {r['seconds'] * 1e3:.1f} ms, "
            f"{r['memory_mb']:.1f} MiB"
        )
    return row


def _chunked_mean(fn, xs, ys, chunk=16):
    """The mean over examples of ``fn(x, y)``, vmapped over chunks inside a scan: how one
    keeps per-example Jacobians in memory with autodiff."""
    n = xs.shape[0]
    chunks = xs.reshape(n // chunk, chunk, -1), ys.reshape(n // chunk, chunk, -1)
    first = jax.eval_shape(fn, xs[0], ys[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)

    def body(total, chunk_xy):
        summed = jax.tree.map(lambda a: jnp.sum(a, axis=0), jax.vmap(fn)(*chunk_xy))
        return jax.tree.map(jnp.add, total, summed), None

    total, _ = jax.lax.scan(body, zeros, chunks)
    return jax.tree.map(lambda a: a / n, total)


def _autodiff_statistics(params, xs, ys):
    """The same quantities from jax.vmap(jax.grad), jax.jacobian and jax.hessian."""
    n = xs.shape[0]
    per_example_autodiff = jax.vmap(
        jax.grad(lambda p, x, y: fbp.loss(p, x[None], y[None], net=STATS_NET)),
        in_axes=(None, 0, 0),
    )

    def flat(g):
        return jnp.concatenate([leaf.reshape(n, -1) for leaf in jax.tree.leaves(g)], axis=1)

    def noise(p, x, y):
        g = flat(per_example_autodiff(p, x, y))
        mean = jnp.mean(g, axis=0)
        trace = jnp.sum((g - mean) ** 2) / (n - 1)
        return trace / (jnp.sum(mean**2) - trace / n)

    def logits(p, x):
        return fbp.forward(p, x, net=STATS_NET)[1].zs[-1]

    def hessian_factor(z, y):
        return jnp.linalg.eigh(jax.hessian(lambda z: -jnp.sum(y * jax.nn.log_softmax(z)))(z))

    def diag_ggn_one(x, y):
        jac = jax.jacobian(logits)(params, x)  # leaves (n_L, *leaf shape)
        lam, vectors = hessian_factor(logits(params, x), y)
        return jax.tree.map(
            lambda j: jnp.einsum("k,k...->...", lam, jnp.tensordot(vectors.T, j, 1) ** 2), jac
        )

    def mc_one_sample(p, x, y):
        targets = jax.nn.one_hot(
            jax.random.categorical(jax.random.key(1), logits(p, x)), y.shape[-1], dtype=y.dtype
        )
        return jax.tree.map(
            lambda g: jnp.sum(g**2, axis=0) / n, per_example_autodiff(p, x, targets)
        )

    def kfac_one(x, y):
        cache = fbp.forward(params, x, net=STATS_NET)[1]
        lam, vectors = hessian_factor(cache.zs[-1], y)
        factors = []
        for l in range(len(params)):

            def rest(z, l=l):  # z^{l+1} -> z^L: the layers after l+1
                for layer in params[l + 1 :]:
                    z = layer.w @ jax.nn.relu(z) + layer.b
                return z

            b = jax.jacobian(rest)(cache.zs[l])  # dz^L / dz^{l+1}: (n_L, n_{l+1})
            s = vectors.T @ b
            a_bar = jnp.append(cache.activations[l], 1.0)
            factors.append((jnp.outer(a_bar, a_bar), s.T @ (lam[:, None] * s)))
        return factors

    return {
        "sum_grad_squared": lambda p, x, y: jax.tree.map(
            lambda g: jnp.sum(g**2, axis=0), per_example_autodiff(p, x, y)
        ),
        "grad_variance": lambda p, x, y: jax.tree.map(
            lambda g: jnp.var(g, axis=0), per_example_autodiff(p, x, y)
        ),
        "batch_dot": lambda p, x, y: (
            flat(per_example_autodiff(p, x, y)) @ flat(per_example_autodiff(p, x, y)).T
        ),
        "gradient_noise_scale": noise,
        "diag_ggn_mc (1 sample)": mc_one_sample,
        "diag_ggn": lambda p, x, y: _chunked_mean(diag_ggn_one, x, y),
        "kfac_factors": lambda p, x, y: _chunked_mean(kfac_one, x, y),
    }


def case_statistics(scale):
    """Gradient statistics and curvature from the error terms against one `grad`, and
    against the same quantities from autodiff."""
    sizes, batch = scale.large
    params, xs, ys = problem(sizes, batch)
    net = STATS_NET
    library = {
        "sum_grad_squared": lambda p, x, y: statistics.sum_grad_squared(p, x, y, net=net),
        "grad_variance": lambda p, x, y: statistics.grad_variance(p, x, y, net=net),
        "batch_dot": lambda p, x, y: statistics.batch_dot(p, x, y, net=net),
        "gradient_noise_scale": lambda p, x, y: statistics.gradient_noise_scale(p, x, y, net=net),
        "diag_ggn_mc (1 sample)": lambda p, x, y: curvature.diag_ggn_mc(
            jax.random.key(1), p, x, y, net=net
        ),
        "diag_ggn": lambda p, x, y: curvature.diag_ggn(p, x, y, net=net),
        "kfac_factors": lambda p, x, y: curvature.kfac_factors(p, x, y, net=net),
    }
    autodiff = {k: jax.jit(f) for k, f in _autodiff_statistics(params, xs, ys).items()}
    contenders = {"grad": lambda p, x, y: fbp.grad(p, x, y, net=net)}
    contenders.update({k: jax.jit(f) for k, f in library.items()})
    # Two groups: the autodiff references move gigabytes, which slows whatever runs next,
    # so the library is timed against `grad` among its own kind.
    t = timed(
        {k: (lambda f=f: f(params, xs, ys)) for k, f in contenders.items()},
        scale=scale,
        repeats=scale.repeats(full=9, quick=3),
        warmup=1,
    )
    t.update(
        timed(
            {f"{k} (autodiff)": (lambda f=f: f(params, xs, ys)) for k, f in autodiff.items()},
            scale=scale,
            repeats=scale.repeats(full=3, quick=3),
            warmup=1,
        )
    )
    contenders.update({f"{k} (autodiff)": f for k, f in autodiff.items()})
    memory = {k: _memory_mb(f, params, xs, ys) for k, f in contenders.items()}
    rows = []
    for name in library:
        rows.append(
            dict(
                name=name,
                seconds=t[name],
                vs_grad=t[name] / t["grad"],
                autodiff_seconds=t[f"{name} (autodiff)"],
                speedup=t[f"{name} (autodiff)"] / t[name],
                memory_mb=memory[name],
                autodiff_memory_mb=memory[f"{name} (autodiff)"],
            )
        )
        r = rows[-1]
        print(
            f"statistics {sizes} batch {batch}: {name}: {r['vs_grad']:.2f}x grad, "
            f"autodiff {r['speedup']:.1f}x slower, {r['memory_mb']:.1f} vs "
            f"{r['autodiff_memory_mb']:.1f} MiB",
            flush=True,
        )
    return dict(sizes=sizes, batch=batch, grad_s=t["grad"], grad_mb=memory["grad"], rows=rows)


def case_curvature_batch(scale):
    """Per-example and sampled curvature against one `grad` in one run (targets:
    batch_diag_ggn_mc and kfac_factors_mc, one sample, <= 2x grad), and batch_diag_ggn
    against its autodiff route at the same size: one example's GGN diagonal from
    jax.jacobian and jax.hessian, vmapped over chunks of 16 examples (`jax.lax.map`), so
    that the per-example Jacobians (16 x n_L x params) fit."""
    sizes, batch = scale.large
    params, xs, ys = problem(sizes, batch)
    net, key = STATS_NET, jax.random.key(1)

    def logits(p, x):
        return fbp.forward(p, x, net=net)[1].zs[-1]

    def ggn_one(p, x, y):
        jac = jax.jacobian(logits)(p, x)  # leaves (n_L, *leaf shape)
        z = logits(p, x)
        hessian = jax.hessian(lambda z: -jnp.sum(y * jax.nn.log_softmax(z)))(z)
        lam, vectors = jnp.linalg.eigh(hessian)
        return jax.tree.map(
            lambda j: jnp.einsum("k,k...->...", lam, jnp.tensordot(vectors.T, j, 1) ** 2), jac
        )

    def autodiff(p, x, y):
        return jax.lax.map(lambda xy: ggn_one(p, *xy), (x, y), batch_size=min(16, batch))

    library = {
        "batch_diag_ggn_mc (1 sample)": lambda p, x, y: curvature.batch_diag_ggn_mc(
            key, p, x, y, net=net
        ),
        "kfac_factors_mc (1 sample)": lambda p, x, y: curvature.kfac_factors_mc(
            key, p, x, y, net=net
        ),
        "batch_diag_ggn": lambda p, x, y: curvature.batch_diag_ggn(p, x, y, net=net),
    }
    targets = {"batch_diag_ggn_mc (1 sample)": 2.0, "kfac_factors_mc (1 sample)": 2.0}
    grad = lambda p, x, y: fbp.grad(p, x, y, net=net)  # noqa: E731
    # Each against `grad` in its own group: the per-example diagonals write batch x params
    # floats (1.8 GiB at [784, 1024, 1024, 10] batch 256), which slows whatever runs next.
    t, grad_s = {}, {}
    for group in (
        ["kfac_factors_mc (1 sample)"],
        ["batch_diag_ggn_mc (1 sample)", "batch_diag_ggn"],
    ):
        contenders = {"grad": grad, **{k: jax.jit(library[k]) for k in group}}
        times = timed(
            {k: (lambda f=f: f(params, xs, ys)) for k, f in contenders.items()},
            scale=scale,
            repeats=scale.repeats(full=9, quick=3),
            warmup=1,
        )
        t.update({k: times[k] for k in group})
        grad_s.update({k: times["grad"] for k in group})
    # Apart: the autodiff route moves gigabytes, which slows whatever runs next.
    autodiff = jax.jit(autodiff)
    t.update(
        timed(
            {"batch_diag_ggn (autodiff)": lambda: autodiff(params, xs, ys)},
            scale=scale,
            repeats=scale.repeats(full=3, quick=3),
            warmup=1,
        )
    )
    rows = []
    for name in library:
        rows.append(
            dict(
                name=name, seconds=t[name], vs_grad=t[name] / grad_s[name], target=targets.get(name)
            )
        )
        target = f" (target <= {targets[name]:g}x)" if name in targets else ""
        print(
            f"curvature_batch {sizes} batch {batch}: {name}: {rows[-1]['vs_grad']:.2f}x grad"
            f"{target}",
            flush=True,
        )
    route = dict(
        sizes=sizes,
        batch=batch,
        chunk=min(16, batch),
        seconds=t["batch_diag_ggn (autodiff)"],
        vs_grad=t["batch_diag_ggn (autodiff)"] / grad_s["batch_diag_ggn"],
        speedup=t["batch_diag_ggn (autodiff)"] / t["batch_diag_ggn"],
    )
    print(
        f"curvature_batch {sizes} batch {batch}: batch_diag_ggn (autodiff, jax.jacobian in "
        f"chunks of {route['chunk']}): {route['vs_grad']:.2f}x grad, "
        f"{route['speedup']:.1f}x slower than batch_diag_ggn",
        flush=True,
    )
    return dict(
        sizes=sizes, batch=batch, grad_s=grad_s["batch_diag_ggn"], rows=rows, autodiff=route
    )


SECOND_ORDER_DIAG_WIDTH = 256  # diag_hessian's per-example (n_l, n_l) matrices, capped


def case_second_order(scale):
    """Second order against one `grad` in one run, at the size of the statistics: G v
    (`ggn_vector_product`, target <= 2x grad), H v (`hessian_vector_product` against
    `jax.jvp(jax.grad(loss))`, target <= 1x), and `diag_hessian` at hidden widths
    capped at SECOND_ORDER_DIAG_WIDTH (its per-example Hessians in z^l are batch x n_l^2
    and cost batch x n_l^2 n_{l+1} each), against a `grad` of that size."""
    from functional_bp import curvature as second_order

    sizes, batch = scale.large
    params, xs, ys = problem(sizes, batch)
    v = problem(sizes, batch, seed=4)[0]
    net = STATS_NET
    diag_sizes = sizes[:1] + [min(n, SECOND_ORDER_DIAG_WIDTH) for n in sizes[1:-1]] + sizes[-1:]
    d_params, d_xs, d_ys = problem(diag_sizes, batch)

    def autodiff_hvp(p, v, x, y):
        return jax.jvp(lambda q: jax.grad(fbp.loss)(q, x, y, net=net), (p,), (v,))[1]

    autodiff_hvp = jax.jit(autodiff_hvp)
    contenders = {
        "grad": lambda: fbp.grad(params, xs, ys, net=net),
        "ggn_vector_product": lambda: second_order.ggn_vector_product(params, v, xs, ys, net=net),
        "hessian_vector_product": lambda: second_order.hessian_vector_product(
            params, v, xs, ys, net=net
        ),
        "jvp(jax.grad(loss))": lambda: autodiff_hvp(params, v, xs, ys),
        "grad (diag sizes)": lambda: fbp.grad(d_params, d_xs, d_ys, net=net),
        "diag_hessian (diag sizes)": lambda: second_order.diag_hessian(
            d_params, d_xs, d_ys, net=net
        ),
    }
    t = timed(contenders, scale, repeats=scale.repeats(full=9, quick=3), warmup=1)
    row = dict(
        sizes=sizes,
        batch=batch,
        diag_sizes=diag_sizes,
        seconds=t,
        ggn_over_grad=t["ggn_vector_product"] / t["grad"],
        hvp_over_autodiff=t["hessian_vector_product"] / t["jvp(jax.grad(loss))"],
        diag_hessian_over_grad=t["diag_hessian (diag sizes)"] / t["grad (diag sizes)"],
    )
    print(
        f"second_order {sizes} batch {batch}: ggn_vector_product / grad "
        f"{row['ggn_over_grad']:.2f} (target <= 2); hessian_vector_product / "
        f"jvp(jax.grad(loss)) {row['hvp_over_autodiff']:.2f} (target <= 1); "
        f"diag_hessian / grad at {diag_sizes} {row['diag_hessian_over_grad']:.2f}",
        flush=True,
    )
    return row


def conv_problem(layers, side, batch, seed=0):
    """The network of ``layers`` (`runs.config.parse_layers`: Flatten and the 10 outputs
    added), relu hidden, softmax/log-likelihood; network3.py's init scale; uniform
    images and integer labels."""
    from functional_bp.runs.config import parse_layers

    net = fbp.Network("relu", "softmax", "log_likelihood", layers=parse_layers(layers))
    key, x_key, y_key = jax.random.split(jax.random.key(seed), 3)
    params = fbp.layers.init_network(key, net, (1, side, side))
    xs = jax.random.uniform(x_key, (batch, 1, side, side))
    ys = jax.random.randint(y_key, (batch,), 0, 10)
    return net, params, xs, ys


def case_convolution(scale):
    """The book's network3.py network of two convolutional-pooling layers: `grad` against
    `jax.jit(jax.grad(loss))` at two batches, per-example norms against
    `jax.vmap(jax.grad)` plus norms, and an SGD epoch at batch 10 (`training.epoch`)
    against a plain `jax.grad` scan of the same network."""
    layers, side, batches, norms_batch, n = scale.conv
    rows = []
    for batch in batches:
        net, params, xs, ys = conv_problem(layers, side, batch)
        autodiff = jax.jit(jax.grad(lambda p, x, y: fbp.loss(p, x, y, net=net)))
        t = timed(
            {
                "manual": lambda: fbp.grad(params, xs, ys, net=net),
                "autodiff": lambda: autodiff(params, xs, ys),
            },
            scale,
            repeats=scale.repeats(full=15, quick=5),
            warmup=1,
            min_time=scale.min_time,
        )
        rows.append(dict(batch=batch, seconds=t, ratio=t["manual"] / t["autodiff"]))
        print(
            f"convolution {layers} batch {batch}: grad {t['manual'] * 1e3:.2f} ms, jax.grad "
            f"{t['autodiff'] * 1e3:.2f} ms, ratio {rows[-1]['ratio']:.3f}",
            flush=True,
        )
    net, params, xs, ys = conv_problem(layers, side, norms_batch)
    one = lambda p, x, y: fbp.loss(p, x[None], y[None], net=net)

    @jax.jit
    def autodiff_norms(p, x, y):
        g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(p, x, y)
        return jnp.sqrt(
            sum(jnp.sum(l.reshape(x.shape[0], -1) ** 2, axis=1) for l in jax.tree.leaves(g))
        )

    manual_norms = lambda: per_example.per_example_grad_norms(params, xs, ys, net=net).total
    t = timed(
        {"manual": manual_norms, "autodiff": lambda: autodiff_norms(params, xs, ys)},
        scale,
        repeats=scale.repeats(full=7, quick=3),
        warmup=1,
        min_time=scale.min_time,
    )
    norms = dict(batch=norms_batch, seconds=t, speedup=t["autodiff"] / t["manual"])
    print(
        f"convolution per-example norms batch {norms_batch}: {t['manual'] * 1e3:.1f} ms, "
        f"vmap(jax.grad) + norms {t['autodiff'] * 1e3:.1f} ms, speed-up {norms['speedup']:.1f}",
        flush=True,
    )
    net, params, xs, ys = conv_problem(layers, side, n, seed=1)
    optimizer = training.sgd(0.1)
    state = optimizer.init(params)
    key = jax.random.key(2)

    @jax.jit
    def autodiff_epoch(key, params, xs, ys):
        def step(step_key, p, xb, yb):
            g = jax.grad(lambda q: fbp.loss(q, xb, yb, net=net))(p)
            return jax.tree.map(lambda w, d: w - 0.1 * d, p, g)

        return training.scan_epoch(key, params, xs, ys, step, batch_size=10)

    t = timed(
        {
            "manual": lambda: training.epoch(
                key, optimizer, params, state, xs, ys, batch_size=10, net=net
            ),
            "autodiff": lambda: autodiff_epoch(key, params, xs, ys),
        },
        scale,
        repeats=scale.repeats(full=3, quick=2),
        warmup=1,
    )
    epoch = dict(examples=n, batch=10, seconds=t, ratio=t["manual"] / t["autodiff"])
    print(
        f"convolution epoch, {n} examples, batch 10: training.epoch {t['manual']:.2f} s, "
        f"jax.grad scan {t['autodiff']:.2f} s, ratio {epoch['ratio']:.3f}",
        flush=True,
    )
    return dict(layers=layers, side=side, grad=rows, norms=norms, epoch=epoch)


def case_compile(scale):
    rows = []
    for sizes, batch in scale.sizes[:3]:
        params, xs, ys = problem(sizes, batch, seed=2)
        manual = fbp.grad.lower(params, xs, ys)
        autodiff = jax.jit(jax.grad(fbp.loss)).lower(params, xs, ys)
        times = {}
        for name, lowered in (("manual", manual), ("autodiff", autodiff)):
            start = time.perf_counter()
            lowered.compile()
            times[name] = time.perf_counter() - start
        rows.append(
            dict(sizes=sizes, batch=batch, manual_s=times["manual"], autodiff_s=times["autodiff"])
        )
        print(
            f"compile {sizes}: manual {times['manual']:.3f} s, jax.grad {times['autodiff']:.3f} s"
        )
    return rows


def print_row(case, row):
    print(
        f"{case} {row['sizes']} batch {row['batch']} {row['options']}: manual "
        f"{row['manual_s'] * 1e3:.3f} ms, jax.grad {row['autodiff_s'] * 1e3:.3f} ms, "
        f"ratio {row['ratio']:.3f}",
        flush=True,
    )


def device_info():
    """The default device, which every case and the GEMM rate run on: backend, kind,
    count and, where the backend reports it (GPU), the memory XLA may allocate."""
    device = jax.devices()[0]
    info = dict(
        backend=jax.default_backend(),
        device=str(device.device_kind),
        device_count=jax.device_count(),
        matmul_precision=str(jax.config.jax_default_matmul_precision or "default"),
    )
    try:
        stats = device.memory_stats()
    except Exception:  # some backends do not implement it
        stats = None
    if stats and "bytes_limit" in stats:
        info["memory_gib"] = stats["bytes_limit"] / 2**30
    return info


def describe_device(m):
    memory = f", {m['memory_gib']:.1f} GiB for XLA" if "memory_gib" in m else ""
    return (
        f"backend {m['backend']}, {m['device_count']} x {m['device']}{memory}, "
        f"{m['matmul_precision']} float32 matmul precision"
    )


def output_path(out, backend, table):
    """``out`` with the backend and, when forced to another, the size table in its name:
    bench (CPU), bench-gpu (GPU), bench-gpu-sizes (CPU with the GPU table), ..."""
    out = Path(out)
    name = out.name + ("" if backend == "cpu" else f"-{backend}")
    if table != table_for(backend):
        name += f"-{table}-sizes"
    return out.with_name(name)


def markdown(result):
    m = result["machine"]
    smoke = " (shrunk to the smoke sizes)" if result["mode"] == "smoke" else ""
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; jax {m['jax']}, "
        f"{describe_device(m)}. Size table: {result['size_table']}{smoke}. "
        f"Command: `{result['command']}`. "
        f"Measured GEMM rate (float32 {result['gemm_n']}^2 `jnp` matmul on the "
        f"{m['backend']} device, same run): {result['gemm_gflops']:.1f} GFLOP/s.",
        "",
        "Mean mini-batch gradient, `grad` vs `jax.jit(jax.grad(loss))` (median of interleaved runs):",
        "",
        "| sizes | batch | activation/cost | manual ms | jax.grad ms | ratio | manual GFLOP/s | % of GEMM |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["mean_gradient"]:
        lines.append(
            f"| {r['sizes']} | {r['batch']} | {r['options']} | {r['manual_s'] * 1e3:.3f} | "
            f"{r['autodiff_s'] * 1e3:.3f} | {r['ratio']:.3f} | {r['manual_gflops']:.1f} | "
            f"{100 * r['manual_gflops'] / result['gemm_gflops']:.0f} % |"
        )
    d = result["direct_call"]
    s = d["seconds"]
    lines += [
        "",
        f"Direct call overhead, {d['sizes']}, batch {d['batch']}: `grad` called from Python "
        "against a plain jitted function of the same computation (`jax.jit` of "
        "`core.mean_value_and_grad`, no public wrapper), interleaved; the explicit net is "
        f"`{d['net']}`, built once:",
        "",
        "| contender | µs per call | vs plain jit of its net | target |",
        "| --- | --- | --- | --- |",
        f"| (a) `grad(params, xs, ys, net=net)` | {s['grad, explicit net'] * 1e6:.1f} | "
        f"{d['explicit_over_plain']:.3f} | {d['target']:.2f} |",
        f"| (b) `grad(params, xs, ys)`, default net | {s['grad, default net'] * 1e6:.1f} | "
        f"{d['default_over_plain']:.3f} | {d['target']:.2f} |",
        f"| (c) plain jit, explicit net | {s['plain jit, explicit net'] * 1e6:.1f} | 1.000 | |",
        f"| (c') plain jit, default net | {s['plain jit, default net'] * 1e6:.1f} | 1.000 | |",
        f"| plain jit, explicit net, a second `jax.jit` (the run's noise) | "
        f"{s['plain jit, explicit net, again'] * 1e6:.1f} | {d['noise']:.3f} | |",
        f"| (d) `jax.jit(jax.grad(loss))`, default net | "
        f"{s['jax.jit(jax.grad(loss)), default net'] * 1e6:.1f} | "
        f"{d['autodiff_over_plain']:.3f} | |",
    ]
    lines += [
        "",
        "Per-example gradients, `per_example.per_example_grads` vs `jax.vmap(jax.grad(...))` "
        "(both materialise them; one copy, batch x params x 4 bytes, is at most "
        f"{max(result['per_example_gib'].values()):.2f} GiB in this run):",
        "",
        "| sizes | batch | manual ms | vmap(jax.grad) ms | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in result["per_example"]:
        lines.append(
            f"| {r['sizes']} | {r['batch']} | {r['manual_s'] * 1e3:.3f} | "
            f"{r['autodiff_s'] * 1e3:.3f} | {r['ratio']:.3f} |"
        )
    e = result["epoch"]
    lines += [
        "",
        f"One training epoch, {e['sizes']}, batch {e['batch']}, {e['examples']} examples, eta 3.0:",
        "",
        "| contender | seconds | vs library |",
        "| --- | --- | --- |",
        f"| `train_epoch` (hand-written, one `lax.scan`) | {e['manual_s']:.3f} | 1.00 |",
        f"| same scan with `jax.grad` | {e['autodiff_s']:.3f} | {e['autodiff_s'] / e['manual_s']:.2f} |",
        f"| network.py's algorithm in NumPy (timed on {e['numpy_examples_timed']} examples, scaled) "
        f"| {e['numpy_network_py_s']:.2f} | {e['speedup_vs_numpy']:.1f} |",
        f"| FLOP floor (FLOPs / measured GEMM rate) | {e['flop_floor_s']:.4f} | "
        f"{e['flop_floor_s'] / e['manual_s']:.3f} |",
        "",
        "Compile time of the first call:",
        "",
        "| sizes | batch | manual s | jax.grad s |",
        "| --- | --- | --- | --- |",
    ]
    for r in result["compile"]:
        lines.append(
            f"| {r['sizes']} | {r['batch']} | {r['manual_s']:.3f} | {r['autodiff_s']:.3f} |"
        )
    p = result["per_example_norms"]
    lines += [
        "",
        f"Per-example gradient norms and clipping, {p['sizes']}, batch {p['batch']} "
        "(memory: XLA's compiled temporary + output bytes):",
        "",
        "| computation | ms | MiB |",
        "| --- | --- | --- |",
    ]
    for r in p["rows"]:
        lines.append(f"| {r['name']} | {r['seconds'] * 1e3:.1f} | {r['memory_mb']:.1f} |")
    lines.append(
        f"\nSpeed-up from the error terms: norms x{p['norms_speedup']:.1f}, "
        f"clipped gradient x{p['clipped_speedup']:.1f}."
    )
    mr = result["many_runs"]
    lines += [
        "",
        f"Many runs in one program, {mr['sizes']}, batch {mr['batch']}, {mr['examples']} "
        "examples per epoch (`training.many(train_epoch, per_run=...)` against `train_epoch`):",
        "",
        "| runs | s per epoch | throughput vs one run | x FLOP floor |",
        "| --- | --- | --- | --- |",
    ]
    for r in mr["rows"]:
        lines.append(
            f"| {r['name']} | {r['seconds']:.3f} | {r['throughput']:.2f} | {r['over_floor']:.1f} |"
        )
    lines += [
        "",
        "Feedback rules: a step of each rule (`training.train_step` with "
        "`feedback.RuleGradient`, `training.sgd`) against a backprop step (`sgd_step`), and "
        "`feedback.alignment_angles` against one `grad`:",
        "",
        "| sizes | batch | fa / bp | sign / bp | dfa / bp | alignment_angles / grad |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["feedback"]:
        q = r["step_ratios"]
        lines.append(
            f"| {r['sizes']} | {r['batch']} | {q['fa']:.3f} | {q['sign']:.3f} | "
            f"{q['dfa']:.3f} | {r['alignment_over_grad']:.2f} |"
        )
    pr = result["privacy"]
    ps = pr["seconds"]
    lines += [
        "",
        f"DP-SGD, {pr['sizes']}, batch {pr['batch']}: a DP step (`train_step` with "
        "`PrivateGradient`) against a plain step, and a Poisson-sampled epoch "
        f"(`privacy.poisson_epoch`, padded to {pr['max_batch']}) against a fixed-batch "
        f"epoch (`training.epoch`, `PrivateGradient`), {pr['examples']} examples:",
        "",
        "| DP over plain | ms | ratio |",
        "| --- | --- | --- |",
        f"| DP step vs plain step | {ps['DP step'] * 1e3:.1f} vs {ps['plain step'] * 1e3:.1f} | "
        f"{pr['dp_over_plain']:.3f} |",
        f"| Poisson-sampled epoch vs fixed-batch epoch | {ps['Poisson epoch'] * 1e3:.1f} vs "
        f"{ps['fixed-batch epoch'] * 1e3:.1f} | {pr['poisson_over_fixed']:.3f} |",
    ]
    st = result["statistics"]
    lines += [
        "",
        f"Gradient statistics and curvature, {st['sizes']}, batch {st['batch']}, relu/softmax/"
        f"log-likelihood: time against one `grad` ({st['grad_s'] * 1e3:.1f} ms, "
        f"{st['grad_mb']:.1f} MiB) and against the same quantity from autodiff "
        "(`jax.vmap(jax.grad)`, `jax.jacobian`, `jax.hessian`):",
        "",
        "| quantity | ms | x grad | autodiff ms | speed-up | MiB | autodiff MiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in st["rows"]:
        lines.append(
            f"| {r['name']} | {r['seconds'] * 1e3:.1f} | {r['vs_grad']:.2f} | "
            f"{r['autodiff_seconds'] * 1e3:.1f} | {r['speedup']:.1f} | {r['memory_mb']:.1f} | "
            f"{r['autodiff_memory_mb']:.1f} |"
        )
    cv = result.get("convolution")
    if cv:
        lines += [
            "",
            f"Convolution, network3.py's network `{cv['layers']}` (then Flatten and 10 "
            f"softmax outputs; relu, log-likelihood), {cv['side']}x{cv['side']} images: "
            "`grad` against `jax.jit(jax.grad(loss))`, per-example norms against "
            "`jax.vmap(jax.grad)` plus norms, and an SGD epoch at batch 10 "
            "(`training.epoch`) against a plain `jax.grad` scan:",
            "",
            "| what | batch | ours ms | autodiff ms | ours / autodiff |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in cv["grad"]:
            sec = r["seconds"]
            lines.append(
                f"| grad | {r['batch']} | {sec['manual'] * 1e3:.2f} | "
                f"{sec['autodiff'] * 1e3:.2f} | {r['ratio']:.3f} |"
            )
        nm, ep = cv["norms"], cv["epoch"]
        lines.append(
            f"| per-example norms | {nm['batch']} | {nm['seconds']['manual'] * 1e3:.1f} | "
            f"{nm['seconds']['autodiff'] * 1e3:.1f} | {1 / nm['speedup']:.3f} |"
        )
        lines.append(
            f"| epoch, {ep['examples']} examples | {ep['batch']} | "
            f"{ep['seconds']['manual'] * 1e3:.0f} | {ep['seconds']['autodiff'] * 1e3:.0f} | "
            f"{ep['ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["mean_gradient"]
    labels = [f"{r['sizes']}\nb={r['batch']}\n{r['options']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4))
    ax.bar(range(len(rows)), [r["ratio"] for r in rows], color="tab:blue")
    ax.axhline(1.0, color="black", lw=1)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("manual / jax.grad time")
    ax.set_title("Mean-gradient step: hand-written over autodiff (lower is faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


CASES = (
    "compile",
    "mean_gradient",
    "direct_call",
    "per_example",
    "epoch",
    "per_example_norms",
    "statistics",
    "curvature_batch",
    "many_runs",
    "feedback",
    "privacy",
    "second_order",
    "convolution",
)


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    mode.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one repeat: that every case runs"
    )
    parser.add_argument("--out", default="bench-results/bench", help="output path without suffix")
    parser.add_argument(
        "--only", nargs="+", choices=CASES, help="run these cases alone (no tables are written)"
    )
    parser.add_argument(
        "--backend-sizes",
        choices=sorted(SIZE_TABLES),
        help="use this size table instead of the backend's (cpu on CPU, gpu on GPU or TPU)",
    )
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    machine = device_info()
    scale = select_scale(mode, args.backend_sizes or table_for(machine["backend"]))
    memory = per_example_gib(scale)
    print(f"device: {describe_device(machine)}; size table {scale.table}, {mode}", flush=True)
    for name, gib in memory.items():
        print(f"per-example gradients, one copy: {gib:.2f} GiB in {name}")
    # The table's full run too, even from a smoke run: arithmetic, nothing allocated.
    for name, gib in {**per_example_gib(SIZE_TABLES[scale.table]["full"]), **memory}.items():
        if gib > PER_EXAMPLE_BUDGET_GIB:
            raise ValueError(f"{name} needs {gib:.1f} GiB > {PER_EXAMPLE_BUDGET_GIB} GiB")
    if "memory_gib" in machine and 3 * max(memory.values()) > machine["memory_gib"]:
        print(f"warning: 3 copies exceed the {machine['memory_gib']:.1f} GiB XLA may use")
    gemm = gemm_rate(scale.gemm_n, scale)
    print(f"GEMM rate on the {machine['backend']} device: {gemm:.1f} GFLOP/s", flush=True)
    cases = {
        # First, while nothing of these shapes is in the compilation cache.
        "compile": lambda: case_compile(scale),
        "mean_gradient": lambda: case_mean_gradient(scale),
        "direct_call": lambda: case_direct_call(scale),
        "per_example": lambda: case_per_example(scale),
        "epoch": lambda: case_epoch(scale, gemm),
        "per_example_norms": lambda: case_per_example_norms(scale),
        "statistics": lambda: case_statistics(scale),
        "curvature_batch": lambda: case_curvature_batch(scale),
        "many_runs": lambda: case_many_runs(scale, gemm),
        "feedback": lambda: case_feedback(scale),
        "privacy": lambda: case_privacy(scale),
        "second_order": lambda: case_second_order(scale),
        "convolution": lambda: case_convolution(scale),
    }
    if args.only:
        for name in args.only:
            cases[name]()
        return 0
    out = output_path(args.out, machine["backend"], scale.table)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(
        command="python scripts/bench.py"
        + {"full": "", "quick": " --quick", "smoke": " --smoke"}[scale.mode]
        + (f" --backend-sizes {args.backend_sizes}" if args.backend_sizes else ""),
        mode=scale.mode,
        size_table=scale.table,
        sizes=scale._asdict(),
        per_example_gib=memory,
        machine=dict(
            cpu=platform.processor() or platform.machine(),
            cores=os.cpu_count(),
            platform=platform.platform(),
            jax=jax.__version__,
            **machine,
        ),
        gemm_n=scale.gemm_n,
        gemm_gflops=gemm,
    )
    result.update({name: run() for name, run in cases.items()})
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {out}.md, {out}.json, {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
