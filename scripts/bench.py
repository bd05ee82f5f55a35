"""Benchmark: the hand-written backprop against jax.grad, network.py in NumPy and the GEMM
rate, every comparison measured side by side (interleaved) in one run.

    python scripts/bench.py            # the full suite (several minutes on 2 cores)
    python scripts/bench.py --quick    # a smoke run, under a minute

Writes <out>.md (the tables), <out>.json and <out>.png (default out: results/bench).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import functional_bp as fbp
from functional_bp import (
    clipped_grad,
    interleaved_medians,
    per_example_grad_norms,
    scan_epoch,
    train_epoch,
)

SIZES = [
    ([784, 30, 10], 10),
    ([784, 100, 10], 128),
    ([784, 1024, 1024, 10], 256),
    ([4096, 4096, 4096], 1024),
]
QUICK_SIZES = SIZES[:2]
OPTIONS = {
    "sigmoid/quadratic": dict(activation="sigmoid", cost="quadratic"),
    "relu/cross_entropy": dict(
        activation="relu", output_activation="sigmoid", cost="cross_entropy"
    ),
}


def problem(sizes, batch, seed=0):
    key = jax.random.key(seed)
    init_key, x_key, y_key = jax.random.split(key, 3)
    params = fbp.init_mlp(init_key, sizes, init="scaled_normal")
    xs = jax.random.uniform(x_key, (batch, sizes[0]))
    ys = jax.nn.one_hot(jax.random.randint(y_key, (batch,), 0, sizes[-1]), sizes[-1])
    return params, xs, ys


def step_flops(sizes, batch):
    """Forward 2, backward 4 FLOPs per weight and example: 6 * batch * sum n_in n_out."""
    return 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def repeats_for(flops, quick):
    if quick:
        return 5
    return 3 if flops > 5e10 else 7 if flops > 1e9 else 25


def gemm_rate(n, repeats=5):
    """GFLOP/s of a float32 n x n matmul under jax.jit."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    matmul = jax.jit(lambda a: a @ a)
    seconds = interleaved_medians({"gemm": lambda: matmul(a)}, repeats=repeats)["gemm"]
    return 2 * n**3 / seconds / 1e9


def case_mean_gradient(sizes_list, quick):
    rows = []
    for sizes, batch in sizes_list:
        for name, options in OPTIONS.items():
            params, xs, ys = problem(sizes, batch)
            autodiff = jax.jit(jax.grad(lambda p, x, y: fbp.loss(p, x, y, **options)))
            flops = step_flops(sizes, batch)
            t = interleaved_medians(
                {
                    "manual": lambda: fbp.grad(params, xs, ys, **options),
                    "autodiff": lambda: autodiff(params, xs, ys),
                },
                repeats=repeats_for(flops, quick),
                warmup=1,
                min_time=0.02,
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


def case_per_example(sizes_list, quick):
    rows = []
    for sizes, batch in sizes_list:
        options = OPTIONS["sigmoid/quadratic"]
        params, xs, ys = problem(sizes, batch)
        one = lambda p, x, y: fbp.loss(p, x[None], y[None], **options)
        autodiff = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))
        t = interleaved_medians(
            {
                "manual": lambda: fbp.per_example_grads(params, xs, ys, **options),
                "autodiff": lambda: autodiff(params, xs, ys),
            },
            repeats=repeats_for(step_flops(sizes, batch) * 10, quick),
            warmup=1,
            min_time=0.02,
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


def case_epoch(quick, gemm_gflops):
    sizes, batch, n = [784, 30, 10], 10, (5_000 if quick else 50_000)
    params, xs, ys = problem(sizes, n)
    key = jax.random.key(1)

    def autodiff_loss(p, x, y):
        return fbp.loss(p, x, y)

    @jax.jit
    def autodiff_epoch(key, params, xs, ys):
        def step(p, xb, yb):
            g = jax.grad(autodiff_loss)(p, xb, yb)
            return jax.tree.map(lambda w, d: w - 3.0 * d, p, g)

        return scan_epoch(key, params, xs, ys, step, batch_size=batch)

    # network.py in NumPy (float64, as network.py computes), interleaved with the JAX
    # epochs; timed on the first numpy_n examples and scaled to the epoch.
    biases = [np.asarray(l.b, np.float64).reshape(-1, 1) for l in params]
    weights = [np.asarray(l.w, np.float64) for l in params]
    numpy_n = 2_000 if quick else 10_000
    np_xs, np_ys = np.asarray(xs[:numpy_n], np.float64), np.asarray(ys[:numpy_n], np.float64)
    rng = np.random.default_rng(0)
    t = interleaved_medians(
        {
            "manual": lambda: train_epoch(key, params, xs, ys, 3.0, batch_size=batch),
            "autodiff": lambda: autodiff_epoch(key, params, xs, ys),
            "numpy": lambda: network_py_epoch(biases, weights, np_xs, np_ys, 3.0, batch, rng),
        },
        repeats=3 if quick else 5,
        warmup=1,
    )
    numpy_s = t["numpy"] * n / numpy_n
    floor_s = step_flops(sizes, n) / (gemm_gflops * 1e9)
    row = dict(
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
        f"epoch [784, 30, 10] batch 10, {n} examples: manual {row['manual_s']:.3f} s, "
        f"jax.grad {row['autodiff_s']:.3f} s (ratio {row['ratio']:.2f}), network.py NumPy "
        f"{numpy_s:.2f} s (x{row['speedup_vs_numpy']:.1f}), FLOP floor {floor_s:.4f} s"
    )
    return row


def case_many_runs(quick, gemm_gflops):
    """R networks of [784, 30, 10] at batch 10 in one program (`train_epoch_many`) against
    one run (`train_epoch`): throughput ratio R * t_1 / t_R, own shuffles and a shared one."""
    sizes, batch, n = [784, 30, 10], 10, (5_000 if quick else 50_000)
    _, xs, ys = problem(sizes, n)
    counts = (4, 8) if quick else (16, 64)
    key = jax.random.key(1)
    one = fbp.init_mlp(jax.random.key(0), sizes)
    contenders = {"1 run": lambda: train_epoch(key, one, xs, ys, 3.0, batch_size=batch)}
    for r in counts:
        keys = jax.random.split(jax.random.key(2), r)
        params = fbp.init_mlp_many(keys, sizes)
        etas = jnp.full((r,), 3.0)
        for label, epoch_keys in (("own shuffles", keys), ("shared shuffle", key)):
            contenders[f"{r} runs, {label}"] = lambda k=epoch_keys, p=params, e=etas: (
                fbp.train_epoch_many(k, p, xs, ys, e, batch_size=batch)
            )
    t = interleaved_medians(contenders, repeats=3, warmup=1)
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


def case_feedback(quick):
    """A step of each feedback rule against a bp step (`sgd_step`), and `alignment_angles`
    against one `grad`, interleaved per network."""
    cases = (
        [([784, 100, 10], 64)] if quick else [([784, 1000, 10], 64), ([784, 1024, 1024, 10], 256)]
    )
    rows = []
    for sizes, batch in cases:
        params, xs, ys = problem(sizes, batch)
        feedback = {r: fbp.init_feedback(jax.random.key(5), params, r) for r in ("fa", "dfa")}
        feedback["sign"] = None
        contenders = {
            "bp step (sgd_step)": lambda: fbp.sgd_step(params, xs, ys, 0.1),
            "grad": lambda: fbp.grad(params, xs, ys),
            "alignment_angles (fa)": lambda: fbp.alignment_angles(
                params, feedback["fa"], xs, ys, rule="fa"
            ),
        }
        for rule in ("fa", "sign", "dfa"):
            contenders[f"{rule} step"] = lambda r=rule: fbp.feedback_step(
                params, feedback[r], xs, ys, 0.1, rule=r
            )
        t = interleaved_medians(contenders, repeats=3 if quick else 15, warmup=2)
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


def _memory_mb(jitted, *args):
    """Temporary plus output bytes of the compiled program (XLA's memory analysis)."""
    stats = jitted.lower(*args).compile().memory_analysis()
    return (stats.temp_size_in_bytes + stats.output_size_in_bytes) / 2**20


def case_per_example_norms(quick):
    """Norms and clipping from the error terms vs materialised vmap(jax.grad)."""
    sizes, batch = ([784, 100, 10], 64) if quick else ([784, 1024, 1024, 10], 256)
    params, xs, ys = problem(sizes, batch)
    clip = 1.0
    one = lambda p, x, y: fbp.loss(p, x[None], y[None])
    per_example = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))

    def norms_of(g):
        return jnp.sqrt(sum(jnp.sum(l.reshape(batch, -1) ** 2, axis=1) for l in jax.tree.leaves(g)))

    def autodiff_norms(p, x, y):
        return norms_of(per_example(p, x, y))

    def autodiff_clipped(p, x, y):
        g = per_example(p, x, y)
        scale = jnp.minimum(1.0, clip / norms_of(g))
        return jax.tree.map(lambda l: jnp.tensordot(scale, l, axes=1) / batch, g)

    autodiff_norms, autodiff_clipped = jax.jit(autodiff_norms), jax.jit(autodiff_clipped)
    norms_fn = lambda p, x, y: per_example_grad_norms(p, x, y).total
    clipped_fn = lambda p, x, y: clipped_grad(p, x, y, clip)
    contenders = {
        "norms (error terms)": norms_fn,
        "norms (vmap(jax.grad))": autodiff_norms,
        "clipped (weighted pass)": clipped_fn,
        "clipped (vmap(jax.grad))": autodiff_clipped,
        "mean gradient (grad)": fbp.grad,
    }
    t = interleaved_medians(
        {k: (lambda f=f: f(params, xs, ys)) for k, f in contenders.items()},
        repeats=3 if quick else 5,
        warmup=1,
    )
    memory = {k: _memory_mb(jax.jit(f), params, xs, ys) for k, f in contenders.items()}
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


STATS_OPTIONS = dict(activation="relu", output_activation="softmax", cost="log_likelihood")


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
    forward_kw = dict(activation="relu", output_activation="softmax")
    per_example = jax.vmap(
        jax.grad(lambda p, x, y: fbp.loss(p, x[None], y[None], **STATS_OPTIONS)),
        in_axes=(None, 0, 0),
    )

    def flat(g):
        return jnp.concatenate([leaf.reshape(n, -1) for leaf in jax.tree.leaves(g)], axis=1)

    def noise(p, x, y):
        g = flat(per_example(p, x, y))
        mean = jnp.mean(g, axis=0)
        trace = jnp.sum((g - mean) ** 2) / (n - 1)
        return trace / (jnp.sum(mean**2) - trace / n)

    def logits(p, x):
        return fbp.forward(p, x, **forward_kw)[1].zs[-1]

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
        return jax.tree.map(lambda g: jnp.sum(g**2, axis=0) / n, per_example(p, x, targets))

    def kfac_one(x, y):
        cache = fbp.forward(params, x, **forward_kw)[1]
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
            lambda g: jnp.sum(g**2, axis=0), per_example(p, x, y)
        ),
        "grad_variance": lambda p, x, y: jax.tree.map(
            lambda g: jnp.var(g, axis=0), per_example(p, x, y)
        ),
        "batch_dot": lambda p, x, y: flat(per_example(p, x, y)) @ flat(per_example(p, x, y)).T,
        "gradient_noise_scale": noise,
        "diag_ggn_mc (1 sample)": mc_one_sample,
        "diag_ggn": lambda p, x, y: _chunked_mean(diag_ggn_one, x, y),
        "kfac_factors": lambda p, x, y: _chunked_mean(kfac_one, x, y),
    }


def case_statistics(quick):
    """Gradient statistics and curvature from the error terms against one `grad`, and
    against the same quantities from autodiff."""
    sizes, batch = ([784, 100, 10], 64) if quick else ([784, 1024, 1024, 10], 256)
    params, xs, ys = problem(sizes, batch)
    kw = STATS_OPTIONS
    library = {
        "sum_grad_squared": lambda p, x, y: fbp.sum_grad_squared(p, x, y, **kw),
        "grad_variance": lambda p, x, y: fbp.grad_variance(p, x, y, **kw),
        "batch_dot": lambda p, x, y: fbp.batch_dot(p, x, y, **kw),
        "gradient_noise_scale": lambda p, x, y: fbp.gradient_noise_scale(p, x, y, **kw),
        "diag_ggn_mc (1 sample)": lambda p, x, y: fbp.diag_ggn_mc(jax.random.key(1), p, x, y, **kw),
        "diag_ggn": lambda p, x, y: fbp.diag_ggn(p, x, y, **kw),
        "kfac_factors": lambda p, x, y: fbp.kfac_factors(p, x, y, **kw),
    }
    autodiff = {k: jax.jit(f) for k, f in _autodiff_statistics(params, xs, ys).items()}
    contenders = {"grad": lambda p, x, y: fbp.grad(p, x, y, **kw)}
    contenders.update({k: jax.jit(f) for k, f in library.items()})
    # Two groups: the autodiff references move gigabytes, which slows whatever runs next,
    # so the library is timed against `grad` among its own kind.
    t = interleaved_medians(
        {k: (lambda f=f: f(params, xs, ys)) for k, f in contenders.items()},
        repeats=3 if quick else 9,
        warmup=1,
    )
    t.update(
        interleaved_medians(
            {f"{k} (autodiff)": (lambda f=f: f(params, xs, ys)) for k, f in autodiff.items()},
            repeats=3,
            warmup=1,
        )
    )
    contenders.update({f"{k} (autodiff)": f for k, f in autodiff.items()})
    memory = {k: _memory_mb(jax.jit(f), params, xs, ys) for k, f in contenders.items()}
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


def case_compile(sizes_list):
    rows = []
    for sizes, batch in sizes_list:
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


def markdown(result):
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; jax {m['jax']}, "
        f"backend {m['backend']} ({m['device']}). Command: `{result['command']}`. "
        f"Measured GEMM rate (float32 {result['gemm_n']}^2 matmul): "
        f"{result['gemm_gflops']:.1f} GFLOP/s.",
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
    lines += [
        "",
        "Per-example gradients, `per_example_grads` vs `jax.vmap(jax.grad(...))`:",
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
        f"One training epoch, [784, 30, 10], batch 10, {e['examples']} examples, eta 3.0:",
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
        "examples per epoch (`train_epoch_many` against `train_epoch`):",
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
        "Feedback rules: a step of each rule against a backprop step (`sgd_step`), and "
        "`alignment_angles` against one `grad`:",
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--out", default="results/bench", help="output path without suffix")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes_list = QUICK_SIZES if args.quick else SIZES
    gemm_n = 1024 if args.quick else 4096
    gemm = gemm_rate(gemm_n)
    print(f"GEMM rate: {gemm:.1f} GFLOP/s", flush=True)
    result = dict(
        command="python scripts/bench.py" + (" --quick" if args.quick else ""),
        machine=dict(
            cpu=platform.processor() or platform.machine(),
            cores=os.cpu_count(),
            platform=platform.platform(),
            jax=jax.__version__,
            backend=jax.default_backend(),
            device=str(jax.devices()[0].device_kind),
        ),
        gemm_n=gemm_n,
        gemm_gflops=gemm,
        # First, while nothing of these shapes is in the compilation cache.
        compile=case_compile(sizes_list[:3]),
        mean_gradient=case_mean_gradient(sizes_list, args.quick),
        per_example=case_per_example(sizes_list[:3], args.quick),
        epoch=case_epoch(args.quick, gemm),
        per_example_norms=case_per_example_norms(args.quick),
        statistics=case_statistics(args.quick),
        many_runs=case_many_runs(args.quick, gemm),
        feedback=case_feedback(args.quick),
    )
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {out}.md, {out}.json, {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
