"""Our feedback-alignment rules beside biotorch (PyTorch): the same update directions to
float64 rounding once the conventions are matched, and the speed of both, side by side
in one run.

    python scripts/compare_biotorch.py                  # writes out/biotorch/biotorch.{md,json}
    python scripts/compare_biotorch.py --out docs/results
    python scripts/compare_biotorch.py --quick          # few repeats, small timing network

Needs, beside this repository, PyTorch and biotorch in the same environment
(``pip install torch biotorch``; biotorch 0.0.16 was compared): one Python process
imports both. Nothing in the tests imports this script.

Conventions matched (see docs/conventions.md, "Learning rules (biotorch)"):

- biotorch keeps one feedback matrix per ``Linear`` layer, used to send the error of
  that layer to its input: biotorch layer l+1's ``weight_backward`` is our B^l, the
  matrix that replaces w^{l+1} in eq 96 (``feedback_matrices(...)[l-1]``). Layer 1's
  is never used (the input needs no gradient); it is set to zero here.
- fa: ``weight_backward`` of layer l+1 = ``feedback[l-1]``.
- frsf: biotorch uses ``|weight_backward| * sign(weight)``; its ``weight_backward`` of
  layer l+1 is set to our magnitudes ``feedback[l-1]`` = |R^l|.
- usf: biotorch recomputes ``scaling_factor * sign(weight)`` in every forward, with
  scaling_factor = sqrt(2 / (fan_in + fan_out)) of the layer: our default scale. Nothing
  is copied; the factor is checked equal.
- sign: biotorch has no such mode; it is biotorch's usf with ``scaling_factor`` set to 1.
- brsf: biotorch redraws |R| with ``torch.nn.init.xavier_uniform_`` in every forward; that
  draw is replaced, during the compared forward only, by a fill with our B^l from
  ``feedback_matrices(params, None, rule="brsf", key=key)`` (biotorch takes its absolute
  value and multiplies by sign(weight), giving back our B^l).
- dfa: biotorch's ``loss_gradient`` is d loss / d (model output); the model here outputs
  z^L and the output sigmoid sits inside the loss, so that it is our delta^L / batch.
  Biotorch layer l+1's ``weight_backward`` (n_L, n_l) is our ``feedback[l-1]``.
- kp: biotorch (0.0.16) has no Kolen-Pollack mode; skipped.
- Timing sets OMP_WAIT_POLICY=PASSIVE before torch loads (unless set): PyTorch's
  busy-waiting OpenMP threads beside XLA's in one process slowed torch several times.
- Loss: our "quadratic" cost, 1/2 ||a - y||^2 summed over outputs and averaged over the
  batch: ``0.5 * ((sigmoid(z) - y) ** 2).sum(1).mean()`` in torch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import functional_bp as fbp  # noqa: E402
from functional_bp import feedback  # noqa: E402
from functional_bp.timing import interleaved_medians  # noqa: E402

NET = fbp.Network(activation="sigmoid", cost="quadratic")
# Our rule -> (biotorch mode, what is set in biotorch). kp is not in biotorch 0.0.16.
RULES = {
    "bp": ("backpropagation", "nothing: plain autograd layers"),
    "fa": ("fa", "layer l+1 weight_backward = feedback[l-1]"),
    "frsf": ("frsf", "layer l+1 weight_backward = feedback[l-1], the magnitudes abs(R^l)"),
    "usf": ("usf", "nothing: biotorch's scaling_factor equals our default scale"),
    "sign": ("usf", "usf with each layer's scaling_factor = 1 (biotorch has no sign mode)"),
    "brsf": ("brsf", "biotorch's xavier_uniform_ draw replaced by our B^l (key 2)"),
    "dfa": ("dfa", "layer l+1 weight_backward = feedback[l-1]; sigmoid(z^L) inside the loss"),
}
SKIPPED = {"kp": "biotorch 0.0.16 has no Kolen-Pollack mode"}
TIMED = ("bp", "fa", "usf", "frsf", "brsf")


def import_peer():
    """torch and biotorch, or a clear exit when this environment lacks them."""
    # PyTorch's OpenMP threads busy-wait between calls by default; beside XLA's threads on
    # a few cores that slowed torch several times over here (read when torch first loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
        from biotorch.module.biomodule import BioModule
    except ImportError as error:
        sys.exit(
            f"compare_biotorch.py needs torch and biotorch in this environment ({error}); "
            "install them beside this repository: pip install torch biotorch (biotorch's "
            "own pins may be old: pip install biotorch --no-deps works for its layers)"
        )
    return torch, BioModule


def machine() -> dict:
    """CPU model, core count, platform and versions."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    torch, _ = import_peer()

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "biotorch": version("biotorch"),
    }


def gemm_rate(n: int, repeats: int = 5) -> float:
    """GFLOP/s of a float32 n x n matmul in NumPy, the median of ``repeats`` after warm-up."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e9


def data(sizes, batch, dtype, seed=0):
    """Our params (network2.py's scaled normal init), inputs in [0, 1), one-hot targets."""
    k_params, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params = fbp.init_mlp(k_params, sizes, init="scaled_normal", dtype=dtype)
    xs = jax.random.uniform(k_x, (batch, sizes[0]), dtype)
    ys = jax.nn.one_hot(jax.random.randint(k_y, (batch,), 0, sizes[-1]), sizes[-1], dtype=dtype)
    return params, xs, ys


def our_feedback(rule, params, key):
    """The feedback argument of feedback_grad: init_feedback's matrices for fa, frsf, dfa."""
    if rule in ("fa", "frsf", "dfa"):
        return feedback.init_feedback(key, params, rule)
    return None


def biotorch_model(rule, params, fb, dtype):
    """biotorch's model of a rule with our params: Linear, Sigmoid, ..., Linear (outputs z^L)."""
    torch, BioModule = import_peer()
    mode = RULES[rule][0]
    layers = []
    for i, layer in enumerate(params):
        n_out, n_in = layer.w.shape
        layers.append(torch.nn.Linear(n_in, n_out, dtype=dtype))
        if i < len(params) - 1:
            layers.append(torch.nn.Sigmoid())
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints a summary
        model = BioModule(torch.nn.Sequential(*layers), mode=mode, output_dim=params[-1].w.shape[0])
    model = model.to(dtype)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for l, (linear, layer) in enumerate(zip(linears, params)):
            linear.weight.copy_(torch.from_numpy(np.array(layer.w)))
            linear.bias.copy_(torch.from_numpy(np.array(layer.b)))
            if mode in ("fa", "frsf", "dfa"):
                # biotorch layer l+1 holds our B^l (feedback[l-1]); layer 1's is unused.
                source = np.zeros(linear.weight_backward.shape) if l == 0 else fb[l - 1]
                linear.weight_backward.copy_(torch.from_numpy(np.array(source)))
            if rule == "sign":
                linear.scaling_factor = 1.0
    return model, linears


def torch_loss(torch, z, ys):
    """Our quadratic cost with the output sigmoid inside: mean over the batch of
    1/2 sum_j (sigmoid(z_j) - y_j)^2."""
    return 0.5 * ((torch.sigmoid(z) - ys) ** 2).sum(1).mean()


def biotorch_step(torch, model, rule, xs, ys):
    """One forward and backward pass of biotorch's model; returns the loss."""
    for p in model.parameters():
        p.grad = None
    model.train()
    if RULES[rule][0] == "dfa":
        with warnings.catch_warnings():
            # biotorch's dfa layers use Module.register_backward_hook, deprecated by torch.
            warnings.simplefilter("ignore", FutureWarning)
            z = model(xs, targets=ys, loss_function=lambda z, y: torch_loss(torch, z, y))
    else:
        z = model(xs)
    loss = torch_loss(torch, z, ys)
    loss.backward()
    return loss.detach()


@contextlib.contextmanager
def brsf_draws(torch, matrices):
    """biotorch's brsf draws |R| with torch.nn.init.xavier_uniform_ in each layer's
    forward, layer 1 first; fill the draws with our B^l instead (layer 1's is unused)."""
    queue = [None, *matrices]
    original = torch.nn.init.xavier_uniform_

    def fill(tensor, gain=1.0):
        source = queue.pop(0)
        with torch.no_grad():
            if source is None:
                return tensor.zero_()
            return tensor.copy_(torch.from_numpy(np.array(source)))

    torch.nn.init.xavier_uniform_ = fill  # looked up at call time by biotorch's forward
    try:
        yield
    finally:
        torch.nn.init.xavier_uniform_ = original
    if queue:
        raise RuntimeError(f"biotorch's brsf drew {len(matrices) + 1 - len(queue)} times")


def agreement(sizes, batch, seed):
    """Max abs and relative difference of every layer's w and b update, float64."""
    torch, _ = import_peer()
    params, xs, ys = data(sizes, batch, jnp.float64, seed)
    x_t, y_t = torch.from_numpy(np.array(xs)), torch.from_numpy(np.array(ys))
    # biotorch's brsf draws into torch.Tensor(size), of the default dtype.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _agreement(torch, params, xs, ys, x_t, y_t, seed)
    finally:
        torch.set_default_dtype(default)


def _agreement(torch, params, xs, ys, x_t, y_t, seed):
    rows = []
    for rule, (mode, setting) in RULES.items():
        fb = our_feedback(rule, params, jax.random.key(seed + 1))
        key = jax.random.key(seed + 2)
        ours = feedback.feedback_grad(params, fb, xs, ys, rule=rule, net=NET, key=key)
        model, linears = biotorch_model(rule, params, fb, torch.float64)
        notes = []
        if rule == "usf":
            ours_scale = [np.sqrt(2 / sum(layer.w.shape)) for layer in params]
            gap = max(abs(lin.scaling_factor - s) for lin, s in zip(linears, ours_scale))
            notes.append(f"scaling_factor vs ours: max diff {gap:.1e}")
        if rule == "brsf":
            matrices = feedback.feedback_matrices(params, None, rule="brsf", key=key)
            with brsf_draws(torch, matrices):
                biotorch_step(torch, model, rule, x_t, y_t)
        else:
            biotorch_step(torch, model, rule, x_t, y_t)
        abs_diff, rel_diff, per_layer = 0.0, 0.0, []
        for l, (linear, g) in enumerate(zip(linears, ours), start=1):
            for name, theirs, mine in (
                ("w", linear.weight.grad, g.w),
                ("b", linear.bias.grad, g.b),
            ):
                theirs, mine = theirs.numpy(), np.asarray(mine)
                diff = float(np.abs(theirs - mine).max())
                rel = diff / float(np.abs(mine).max())
                abs_diff, rel_diff = max(abs_diff, diff), max(rel_diff, rel)
                per_layer.append(
                    {"layer": l, "param": name, "max_abs_diff": diff, "max_rel_diff": rel}
                )
        rows.append(
            {
                "rule": rule,
                "biotorch_mode": mode,
                "set_in_biotorch": setting,
                "max_abs_diff": abs_diff,
                "max_rel_diff": rel_diff,
                "max_abs_update": max(
                    float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(ours)
                ),
                "per_layer": per_layer,
                "notes": notes,
            }
        )
        print(f"{rule:5s} vs biotorch {mode}: max abs {abs_diff:.1e}, max rel {rel_diff:.1e}")
    return rows


def timing(sizes, batch, repeats, seed):
    """Median seconds of one update direction, float32, every contender interleaved."""
    torch, _ = import_peer()
    params, xs, ys = data(sizes, batch, jnp.float32, seed)
    x_t, y_t = torch.from_numpy(np.array(xs)), torch.from_numpy(np.array(ys))
    key = jax.random.key(seed + 2)
    contenders = {}
    for rule in TIMED:
        fb = our_feedback(rule, params, jax.random.key(seed + 1))
        contenders[f"ours {rule}"] = lambda fb=fb, rule=rule: feedback.feedback_grad(
            params, fb, xs, ys, rule=rule, net=NET, key=key
        )
        model, _ = biotorch_model(rule, params, fb, torch.float32)
        contenders[f"biotorch {rule}"] = lambda model=model, rule=rule: biotorch_step(
            torch, model, rule, x_t, y_t
        )
    jax_grad = jax.jit(jax.grad(lambda p: fbp.loss(p, xs, ys, net=NET)))
    contenders["jax.grad"] = lambda: jax_grad(params)
    plain = [torch.nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    with torch.no_grad():
        for linear, layer in zip(plain, params):
            linear.weight.copy_(torch.from_numpy(np.array(layer.w)))
            linear.bias.copy_(torch.from_numpy(np.array(layer.b)))
    body = [m for linear in plain for m in (linear, torch.nn.Sigmoid())][:-1]
    autograd = torch.nn.Sequential(*body)

    def torch_autograd():
        for p in autograd.parameters():
            p.grad = None
        loss = torch_loss(torch, autograd(x_t), y_t)
        loss.backward()
        return loss.detach()

    contenders["torch autograd"] = torch_autograd
    seconds = interleaved_medians(contenders, repeats=repeats, warmup=3)
    return {name: seconds[name] for name in contenders}


def render(result) -> str:
    m, a, t = result["machine"], result["agreement"], result["timing"]
    lines = [
        "# Feedback alignment beside biotorch",
        "",
        f"Command: `{result['command']}`, run from a virtual environment holding this "
        "repository and PyTorch with biotorch (`pip install torch biotorch` plus "
        "`pip install -e .`; the CPU-only torch wheel, `pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu`, serves; biotorch's old pins need not be met: "
        "`pip install biotorch --no-deps` serves its layers). One Python process imports "
        "both libraries and runs both in the same run.",
        "",
        "## Conventions matched",
        "",
        "biotorch keeps one feedback matrix per `Linear` layer, the matrix that carries that "
        "layer's error back to its input; we keep one per hidden layer, B^l, the matrix "
        "that replaces w^{l+1} in eq 96. So biotorch layer l+1's `weight_backward` is our "
        "`feedback[l-1]` (for fa, and for dfa, where it has shape (n_L, n_l)); biotorch "
        "layer 1's is never used, as the input needs no gradient, and is set to zero. For "
        "frsf biotorch uses `|weight_backward| * sign(weight)`: its layer l+1 "
        "`weight_backward` is set to our magnitudes |R^l| (`feedback[l-1]`). For usf "
        "biotorch recomputes `scaling_factor * sign(weight)` in each forward, with "
        "scaling_factor = sqrt(2 / (fan_in + fan_out)) of its layer, our default scale: "
        "nothing is copied. biotorch has no sign mode; our sign is its usf with "
        "`scaling_factor` set to 1. For brsf biotorch redraws |R| with "
        "`torch.nn.init.xavier_uniform_` in every forward; during the compared forward "
        "that function is replaced by a fill with our B^l "
        '(`feedback_matrices(params, None, rule="brsf", key=key)`), of which biotorch '
        "takes the absolute value times sign(weight), giving back our B^l. For dfa, "
        "biotorch sends `loss_gradient`, d loss / d (model output), to every layer; the "
        "model outputs z^L and the output sigmoid sits inside the loss, so that it is our "
        "delta^L divided by the batch size. The loss is our quadratic cost, "
        "`0.5 * ((sigmoid(z) - y) ** 2).sum(1).mean()` in torch: 1/2 ||a - y||^2 per "
        "example, averaged over the batch. biotorch 0.0.16 has no Kolen-Pollack (kp) mode.",
        "",
        "## Agreement (float64)",
        "",
        f"Network {a['sizes']} (sigmoid, quadratic cost, network2.py's scaled normal "
        f"init), batch {a['batch']}, inputs uniform in [0, 1), one-hot targets, seed "
        f"{a['seed']}. Each rule's `feedback.feedback_grad` against the `.grad` of "
        "biotorch's forward and backward; the largest difference over every layer's w "
        "and b (relative: to the largest entry of our update of that parameter).",
        "",
        "| rule | biotorch mode | set in biotorch | max abs diff | max rel diff | "
        "largest update entry |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in a["rows"]:
        lines.append(
            f"| {r['rule']} | {r['biotorch_mode']} | {r['set_in_biotorch']} | "
            f"{r['max_abs_diff']:.1e} | {r['max_rel_diff']:.1e} | {r['max_abs_update']:.1e} |"
        )
    for rule, why in result["skipped"].items():
        lines.append(f"| {rule} | none | skipped: {why} | | | |")
    ratio = t["ratios"]
    lines += [
        "",
        "## Speed (float32)",
        "",
        f"Network {t['sizes']}, batch {t['batch']}: one update direction (forward and "
        "backward) per call. Ours: the jitted `feedback.feedback_grad` (results blocked "
        "on); biotorch: its model's forward, the loss and `loss.backward()` (eager "
        f"PyTorch, {m['torch_threads']} threads, OMP_WAIT_POLICY={m['omp_wait_policy']}); anchors: `jax.jit(jax.grad(loss))` and "
        "plain PyTorch autograd of the same network. Median of "
        f"{t['repeats']} interleaved rounds after 3 warm-up rounds, all in one run.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, "
        f"jax {m['jax']} ({m['jax_backend']}), torch {m['torch']}, biotorch "
        f"{m['biotorch']}, numpy {m['numpy']}. Measured GEMM rate (NumPy float32 "
        f"{result['gemm_n']}^2 matmul, median of 5, same run): "
        f"{result['gemm_gflops']:.1f} GFLOP/s before the timing, "
        f"{result['gemm_gflops_after']:.1f} GFLOP/s after it. "
        "Absolute times hold for this machine only; the ratios are the claim.",
        "",
        "The script sets `OMP_WAIT_POLICY=PASSIVE` (unless already set) before PyTorch "
        "loads. With PyTorch's default busy-waiting OpenMP threads, beside XLA's threads "
        "in one process on this 2-core machine, the torch step of [784, 1000, 10] at batch "
        "256 took about 90 ms instead of about 10 ms in probes before this run: a contention of the two "
        "thread pools, not a cost of either library. XLA does not read the variable.",
        "",
        "| rule | ours ms | biotorch ms | biotorch / ours |",
        "| --- | --- | --- | --- |",
    ]
    for rule in TIMED:
        ours, theirs = t["seconds"][f"ours {rule}"], t["seconds"][f"biotorch {rule}"]
        lines.append(f"| {rule} | {1e3 * ours:.3f} | {1e3 * theirs:.3f} | {theirs / ours:.2f} |")
    lines += [
        "",
        "| anchor | ms |",
        "| --- | --- |",
        f"| `jax.jit(jax.grad(loss))` | {1e3 * t['seconds']['jax.grad']:.3f} |",
        f"| torch autograd | {1e3 * t['seconds']['torch autograd']:.3f} |",
        "",
        f"Ratios: ours fa / jax.grad = {ratio['ours_fa/jax.grad']:.2f}, ours bp / jax.grad = "
        f"{ratio['ours_bp/jax.grad']:.2f}; biotorch fa / torch autograd = "
        f"{ratio['biotorch_fa/torch_autograd']:.2f}, biotorch bp / torch autograd = "
        f"{ratio['biotorch_bp/torch_autograd']:.2f}; biotorch fa / ours fa = "
        f"{ratio['biotorch_fa/ours_fa']:.2f}; torch autograd / jax.grad = "
        f"{ratio['torch_autograd/jax.grad']:.2f}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/biotorch"), help="output folder")
    parser.add_argument("--sizes", default="784,256,128,10", help="agreement network")
    parser.add_argument("--batch", type=int, default=64, help="agreement batch")
    parser.add_argument("--timing-sizes", default="784,1000,10", help="timing network")
    parser.add_argument("--timing-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds")
    parser.add_argument("--gemm-n", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5 rounds, [784, 100, 10]")
    args = parser.parse_args(argv)
    import_peer()
    if args.quick:
        args.timing_sizes, args.repeats = "784,100,10", 5
    sizes = [int(n) for n in args.sizes.split(",")]
    timing_sizes = [int(n) for n in args.timing_sizes.split(",")]

    result = {
        "command": "python scripts/compare_biotorch.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "skipped": SKIPPED,
    }
    result["command"] = result["command"].strip()
    rows = agreement(sizes, args.batch, args.seed)
    result["agreement"] = {"sizes": sizes, "batch": args.batch, "seed": args.seed, "rows": rows}
    result["gemm_n"] = args.gemm_n
    result["gemm_gflops"] = gemm_rate(args.gemm_n)
    print(f"GEMM rate: {result['gemm_gflops']:.1f} GFLOP/s")
    seconds = timing(timing_sizes, args.timing_batch, args.repeats, args.seed)
    result["gemm_gflops_after"] = gemm_rate(args.gemm_n)
    print(f"GEMM rate after the timing: {result['gemm_gflops_after']:.1f} GFLOP/s")
    s = seconds
    result["timing"] = {
        "sizes": timing_sizes,
        "batch": args.timing_batch,
        "repeats": args.repeats,
        "seconds": seconds,
        "ratios": {
            "ours_fa/jax.grad": s["ours fa"] / s["jax.grad"],
            "ours_bp/jax.grad": s["ours bp"] / s["jax.grad"],
            "biotorch_fa/torch_autograd": s["biotorch fa"] / s["torch autograd"],
            "biotorch_bp/torch_autograd": s["biotorch bp"] / s["torch autograd"],
            "biotorch_fa/ours_fa": s["biotorch fa"] / s["ours fa"],
            "torch_autograd/jax.grad": s["torch autograd"] / s["jax.grad"],
        },
    }
    for name, value in seconds.items():
        print(f"{name:16s} {1e3 * value:.3f} ms")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "biotorch.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "biotorch.md").write_text(render(result))
    print(f"wrote {args.out / 'biotorch.md'} and {args.out / 'biotorch.json'}")
    off = [r["rule"] for r in rows if not r["max_rel_diff"] < 1e-12]
    if off:
        print(f"rules that disagree with biotorch beyond 1e-12 (relative): {off}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
