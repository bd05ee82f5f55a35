"""How time and memory grow with batch and width, for the hand-written passes and their
autodiff counterparts: `grad`, `jax.grad`, per-example norms, `jax.vmap(jax.grad)` plus
norms, `diag_ggn` and `kfac_factors`.

    python scripts/scaling.py                 # about 15 minutes on 2 cores
    python scripts/scaling.py --quick         # a few points, for a look

The network is [w, w, w, 10] (relu, softmax, log-likelihood) in float32. Memory is XLA's
own account of the compiled program (`jax.jit(f).lower(...).compile().memory_analysis()`),
so it is known for sizes that would not fit here: arguments + outputs + temporaries, and
what the method adds to the data and params it is given (outputs + temporaries). Time is
the median of interleaved calls, measured where the program fits in --time-memory.
Exponents are least-squares slopes on log-log axes over the swept range. The largest
batch at each width that fits in --fit-memory (24 GiB) is solved from the memory's exact
linearity in the batch and checked with one more compile.

Writes out/scaling.{md,json,png} (--out).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import functional_bp as fbp
from functional_bp import curvature, per_example, timing

NET = fbp.Network(activation="relu", output_activation="softmax", cost="log_likelihood")
GIB = 2**30


def _loss_one(params, x, y):
    return fbp.loss(params, x[None], y[None], net=NET)


def _vmap_grad(params, xs, ys):
    """Every example's gradient, materialised: batch x params numbers."""
    return jax.vmap(jax.grad(_loss_one), in_axes=(None, 0, 0))(params, xs, ys)


def _vmap_grad_norms(params, xs, ys):
    """The autodiff way to per-example norms: every g_i, then its norm."""
    g = _vmap_grad(params, xs, ys)
    return jnp.sqrt(
        sum(jnp.sum(leaf**2, axis=tuple(range(1, leaf.ndim))) for leaf in jax.tree.leaves(g))
    )


def _per_example_norms(params, xs, ys):
    return per_example.per_example_grad_norms(params, xs, ys, net=NET).total


METHODS = {
    "grad": lambda p, x, y: fbp.grad(p, x, y, net=NET),
    "jax.grad": jax.grad(lambda p, x, y: fbp.loss(p, x, y, net=NET)),
    "per-example norms": _per_example_norms,
    "vmap(jax.grad)": _vmap_grad,
    "vmap(jax.grad) + norms": _vmap_grad_norms,
    "diag_ggn": lambda p, x, y: curvature.diag_ggn(p, x, y, net=NET),
    "kfac_factors": lambda p, x, y: curvature.kfac_factors(p, x, y, net=NET),
}

# What the maths predicts for the memory a method adds to its inputs, its outputs and
# temporaries (B batch, w width, n_out = 10; the params are O(w^2)).
PREDICTED = {
    "grad": "B w (deltas, activations) + w^2 (the gradient)",
    "jax.grad": "B w + w^2, as grad",
    "per-example norms": "B w (no per-example gradient is formed)",
    "vmap(jax.grad)": "B w^2 (B x params: the per-example gradients)",
    "vmap(jax.grad) + norms": "B w^2 if the per-example gradients are formed",
    "diag_ggn": "B w n_out (one backward pass per output) + w^2",
    "kfac_factors": "B w + w^2 (the factors)",
}


def _problem(batch: int, width: int, abstract: bool):
    sizes = [width, width, width, 10]
    if abstract:  # shapes only: nothing is allocated
        params = [
            fbp.Layer(
                jax.ShapeDtypeStruct((n_out, n_in), jnp.float32),
                jax.ShapeDtypeStruct((n_out,), jnp.float32),
            )
            for n_in, n_out in zip(sizes[:-1], sizes[1:])
        ]
        xs = jax.ShapeDtypeStruct((batch, width), jnp.float32)
        ys = jax.ShapeDtypeStruct((batch, 10), jnp.float32)
        return params, xs, ys
    key_x, key_y = jax.random.split(jax.random.key(1))
    params = fbp.init_mlp(jax.random.key(0), sizes, init="scaled_normal", dtype=jnp.float32)
    xs = jax.random.normal(key_x, (batch, width), jnp.float32)
    ys = jax.nn.one_hot(jax.random.randint(key_y, (batch,), 0, 10), 10, dtype=jnp.float32)
    return params, xs, ys


def memory(method: str, batch: int, width: int) -> dict:
    """XLA's memory account of the compiled program, in bytes."""
    compiled = jax.jit(METHODS[method]).lower(*_problem(batch, width, True)).compile()
    analysis = compiled.memory_analysis()
    inputs, outputs = analysis.argument_size_in_bytes, analysis.output_size_in_bytes
    temp = analysis.temp_size_in_bytes
    total = inputs + outputs + temp - analysis.alias_size_in_bytes
    return {"total": total, "added": outputs + temp, "temp": temp}


def times(points: list[tuple[int, int]], methods: list[str], repeats: int) -> dict:
    """Median seconds of each (method, batch, width), calls interleaved over methods."""
    out = {}
    for batch, width in points:
        args = _problem(batch, width, False)
        fns = {m: jax.jit(METHODS[m]) for m in methods}
        for fn in fns.values():
            jax.block_until_ready(fn(*args))  # compile and warm up
        samples = {m: [] for m in methods}
        for _ in range(repeats):
            for m, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                samples[m].append(time.perf_counter() - start)
        for m in methods:
            out[(m, batch, width)] = statistics.median(samples[m])
    return out


def slope(xs, ys) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def largest_batch(method: str, width: int, budget: float) -> int:
    """The largest batch whose program fits in ``budget`` bytes: memory is a + b B."""
    b1, b2 = 64, 128
    m1, m2 = memory(method, b1, width)["total"], memory(method, b2, width)["total"]
    per_example_bytes = (m2 - m1) / (b2 - b1)
    fixed = m1 - per_example_bytes * b1
    if fixed > budget:
        return 0
    batch = int((budget - fixed) // per_example_bytes)
    while batch > 0 and memory(method, batch, width)["total"] > budget:  # the check
        batch = int(batch * 0.95)
    return batch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few points only")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: that it runs")
    parser.add_argument("--out", default="out/scaling", help="path prefix of the outputs")
    parser.add_argument("--fit-memory", type=float, default=24.0, help="GiB, for the limits")
    parser.add_argument(
        "--time-memory", type=float, default=3.0, help="GiB: larger programs are not timed"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    batches, widths, limit_widths = (
        [16, 64, 256, 1024, 4096],
        [64, 256, 1024, 4096],
        [256, 1024, 4096],
    )
    fixed_width, fixed_batch = 256, 256
    if args.quick:
        batches, widths, limit_widths = [16, 64, 256], [64, 256], [256]
    if args.smoke:
        batches, widths, limit_widths, fixed_width, fixed_batch = [4, 8], [8, 16], [16], 8, 8
        args.repeats = 1
    gemm = timing.gemm_rate()
    print(f"GEMM rate: {gemm:.1f} GFLOP/s", flush=True)

    sweeps = {
        "batch": [(b, fixed_width) for b in batches],
        "width": [(fixed_batch, w) for w in widths],
    }
    results = {m: {"batch": [], "width": []} for m in METHODS}
    for axis, points in sweeps.items():
        for batch, width in points:
            mems = {m: memory(m, batch, width) for m in METHODS}
            timed = [m for m in METHODS if mems[m]["total"] <= args.time_memory * GIB]
            seconds = times([(batch, width)], timed, args.repeats)
            for m in METHODS:
                row = {"batch": batch, "width": width, **mems[m]}
                row["seconds"] = seconds.get((m, batch, width))
                results[m][axis].append(row)
                shown = "not timed" if row["seconds"] is None else f"{row['seconds'] * 1e3:.2f} ms"
                print(
                    f"{m:>24} B={batch:<5} w={width:<5} total {row['total'] / GIB:8.3f} GiB "
                    f"added {row['added'] / GIB:8.3f} GiB  {shown}",
                    flush=True,
                )

    exponents = {}
    for m in METHODS:
        exponents[m] = {}
        for axis in ("batch", "width"):
            rows = results[m][axis]
            x = [r[axis] for r in rows]
            exponents[m][f"memory_{axis}"] = slope(x, [max(r["added"], 1) for r in rows])
            timed = [(r[axis], r["seconds"]) for r in rows if r["seconds"] is not None]
            exponents[m][f"time_{axis}"] = slope(*zip(*timed)) if len(timed) >= 2 else None
    limits = {
        m: {w: largest_batch(m, w, args.fit_memory * GIB) for w in limit_widths} for m in METHODS
    }

    machine = (
        f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s) "
        f"({jax.devices()[0].device_kind}), jax {jax.__version__}; float32 GEMM "
        f"{gemm:.1f} GFLOP/s measured in the same run"
    )
    _write(out, args, results, exponents, limits, machine, fixed_width, fixed_batch)
    _plot(out, results, exponents, fixed_width, fixed_batch)
    return 0


def _fmt(value, digits=2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _write(out, args, results, exponents, limits, machine, fixed_width, fixed_batch) -> None:
    command = "python scripts/scaling.py" + (" --quick" if args.quick else "")
    command += " --smoke" if args.smoke else ""
    lines = [
        f"Network [w, w, w, 10], relu/softmax/log-likelihood, float32. Machine: {machine}. "
        f"Command: `{command}`.",
        "",
        f"Exponents: least-squares slopes on log-log axes, batch swept at width "
        f"{fixed_width}, width at batch {fixed_batch}. Memory: what the compiled program "
        "adds to its inputs (its outputs and XLA's temporaries).",
        "",
        "| method | predicted memory | memory ~ batch^ | memory ~ width^ | time ~ batch^ "
        "| time ~ width^ |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m, e in exponents.items():
        lines.append(
            f"| {m} | {PREDICTED[m]} | {_fmt(e['memory_batch'])} | {_fmt(e['memory_width'])} | "
            f"{_fmt(e['time_batch'])} | {_fmt(e['time_width'])} |"
        )
    widths = sorted({w for limit in limits.values() for w in limit})
    lines += [
        "",
        f"Largest batch that fits in {args.fit_memory:g} GiB (arguments, outputs and "
        "temporaries of the compiled program):",
        "",
        "| method | " + " | ".join(f"width {w}" for w in widths) + " |",
        "| --- | " + " | ".join("---" for _ in widths) + " |",
    ]
    for m, limit in limits.items():
        lines.append(f"| {m} | " + " | ".join(f"{limit[w]:,}" for w in widths) + " |")
    lines += [
        "",
        "| method | batch | width | total GiB | temporaries GiB | ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m, axes in results.items():
        for axis in ("batch", "width"):
            for r in axes[axis]:
                ms = None if r["seconds"] is None else r["seconds"] * 1e3
                lines.append(
                    f"| {m} | {r['batch']} | {r['width']} | {r['total'] / GIB:.3f} | "
                    f"{r['added'] / GIB:.3f} | {r['temp'] / GIB:.3f} | {_fmt(ms)} |"
                )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    payload = {
        "machine": machine,
        "command": command,
        "results": results,
        "exponents": exponents,
        "limits": {m: {str(w): b for w, b in limit.items()} for m, limit in limits.items()},
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    print("\n".join(lines[:16]))


def _plot(out, results, exponents, fixed_width, fixed_batch) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'functional_bp[cli]')")
        return
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    for col, axis in enumerate(("batch", "width")):
        for m, axes_rows in results.items():
            rows = axes_rows[axis]
            x = [r[axis] for r in rows]
            e = exponents[m]
            added = [max(r["added"], 1) / GIB for r in rows]
            axes[0, col].loglog(x, added, "o-", label=f"{m} (^{e[f'memory_{axis}']:.2f})")
            timed = [(r[axis], r["seconds"] * 1e3) for r in rows if r["seconds"] is not None]
            if len(timed) >= 2:
                axes[1, col].loglog(*zip(*timed), "o-", label=f"{m} (^{e[f'time_{axis}']:.2f})")
        fixed = f"width {fixed_width}" if axis == "batch" else f"batch {fixed_batch}"
        axes[0, col].set(
            xlabel=axis, ylabel="outputs + temporaries (GiB)", title=f"memory, {fixed}"
        )
        axes[1, col].set(xlabel=axis, ylabel="ms", title=f"time, {fixed}")
        for ax in axes[:, col]:
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
