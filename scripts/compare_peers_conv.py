"""Our convolutional-network quantities beside the PyTorch peers BackPACK, Opacus and
biotorch: the same numbers to float64 rounding once the conventions are matched, and the
speed of each, side by side in one process.

    python scripts/compare_peers_conv.py --out docs/results/peers_conv
    python scripts/compare_peers_conv.py --quick        # few timing rounds

Writes ``<out>.md`` and ``<out>.json``. Needs, beside this repository (``pip install -e
.``), PyTorch, backpack-for-pytorch, opacus and biotorch in the same environment
(``pip install torch backpack-for-pytorch opacus``; ``pip install biotorch --no-deps``:
its layers need only torch). A missing peer is skipped with a note in the results; with
none of them (or without torch) the script exits with a one-line message. Nothing in the
tests imports this script.

Conventions matched (see docs/conventions.md, "Per-example quantities (BackPACK,
Opacus)" and "Learning rules (biotorch)"):

- The network: Conv2d -> ReLU -> MaxPool2d ..., Flatten, Linear -> ReLU, Linear; torch's
  model outputs z^L (logits) and ``CrossEntropyLoss()`` (mean reduction) is our softmax
  output with the log-likelihood cost, the mean over the batch of -log softmax[label]:
  the factor c between the losses is 1. Weights are copied as they are (our conv w is
  torch's Conv2d.weight (filters, C, kh, kw), our dense w is Linear.weight (out, in));
  our Flatten is row-major over (C, H, W), as torch.flatten(x, 1).
- BackPACK ``BatchGrad`` = g_i / N (g_i our ``per_example_grads``, the gradient of
  example i's own cost); ``BatchL2Grad`` = ||g_i||^2 / N^2 per parameter
  (``per_example_grad_norms(...).layers`` squared); ``DiagGGNExact`` = our
  ``curvature.diag_ggn`` (both of the mean loss).
- Opacus ``GradSampleModule(loss_reduction="mean")`` multiplies the backpropagated
  values by the batch size: its ``grad_sample`` = g_i. Its ``DPOptimizer`` clips with
  factor min(1, C / (||g_i|| + 1e-6)), ours min(1, C / ||g_i||) (``clipped_grad``): the
  two differ by about 1e-6 / ||g_i|| relative for clipped examples; the table gives the
  raw difference and the difference to our per-example gradients clipped with Opacus's
  1e-6 (noise_multiplier 0, so no noise is added).
- biotorch keeps one ``weight_backward`` per layer, carrying that layer's error to its
  input; our B^l replaces w^{l+1} (``init_feedback(..., "fa")[l-1]``, w^{l+1}'s shape).
  So biotorch layer l+1's ``weight_backward`` = our ``feedback[l-1]``; layer 1's is never
  used (the input needs no gradient) and is set to zero.
- Timing sets OMP_WAIT_POLICY=PASSIVE before torch loads (unless set) and
  torch.set_num_threads(<cores>): PyTorch's busy-waiting OpenMP threads beside XLA's in
  one process slowed torch several times over on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import functional_bp as fbp  # noqa: E402
from functional_bp import curvature, feedback, per_example  # noqa: E402
from functional_bp.layers import (  # noqa: E402
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    init_network,
)  # noqa: E402
from functional_bp.timing import gemm_rate, interleaved_medians  # noqa: E402

BOOK = (Conv2D(20, 5), MaxPool2D(2), Conv2D(40, 5), MaxPool2D(2), Flatten(), Dense(100), Dense(10))
SMALL = (Conv2D(4, 3), MaxPool2D(2), Conv2D(6, 3, stride=2, padding=1), Flatten(), Dense(10))
SAME_AVG = (
    Conv2D(3, 3, padding="same"),
    AvgPool2D(2),
    Conv2D(5, 3, stride=2),
    Flatten(),
    Dense(8),
    Dense(10),
)
# float64 agreement: (name, layers, one example's shape, batch)
AGREEMENT_NETS = (
    ("small", SMALL, (1, 12, 12), 16),
    ("same+avg", SAME_AVG, (2, 12, 12), 16),
    ("book", BOOK, (1, 28, 28), 8),
)
OPACUS_EPS = 1e-6  # Opacus's clip factor is C / (norm + 1e-6)


def network(layers):
    return fbp.Network(
        activation="relu", output_activation="softmax", cost="log_likelihood", layers=layers
    )


def import_peers():
    """torch and whichever peers import; a one-line exit without torch or any peer."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError as error:
        sys.exit(f"compare_peers_conv.py needs torch in this environment ({error})")
    peers, missing = {}, {}
    for name, module in (
        ("backpack", "backpack"),
        ("opacus", "opacus"),
        ("biotorch", "biotorch.layers.fa"),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peers[name] = __import__(module, fromlist=["_"])
        except Exception as error:  # noqa: BLE001  (a peer that fails to import is skipped)
            missing[name] = f"{type(error).__name__}: {error}"
    if not peers:
        sys.exit(f"compare_peers_conv.py found none of backpack, opacus, biotorch: {missing}")
    return torch, peers, missing


def machine(torch) -> dict:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("torch", "backpack-for-pytorch", "opacus", "biotorch", "jax", "numpy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "torch_threads": torch.get_num_threads(),
        "torch_build": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": versions,
    }


def data(net, input_shape, batch, dtype, seed):
    k_params, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params = init_network(k_params, net, input_shape, dtype=dtype)
    xs = jax.random.uniform(k_x, (batch, *input_shape), dtype)
    ys = jax.random.randint(k_y, (batch,), 0, 10)
    return params, xs, ys


def torch_modules(torch, layers, params, input_shape, dtype, conv=None, linear=None):
    """torch's Sequential of our layers with our weights: conv -> ReLU -> pool ..."""
    nn = torch.nn
    conv = conv or nn.Conv2d
    linear = linear or nn.Linear
    shapes = fbp.layers.shapes(network(layers), input_shape)
    modules, weighted = [], []
    n_weighted = sum(spec.has_weights for spec in layers)
    for k, spec in enumerate(layers):
        if isinstance(spec, Conv2D):
            c_in = shapes[k][0]
            # Our padding as torch's explicit (height, width) pads; "same" must be
            # symmetric (odd kernel) for torch to have it.
            (lo_h, hi_h), (lo_w, hi_w) = spec._pads(shapes[k][1:])
            if lo_h != hi_h or lo_w != hi_w:
                raise ValueError(f"torch's Conv2d has no asymmetric padding: {spec}")
            pad = (int(lo_h), int(lo_w))
            m = conv(c_in, spec.filters, spec.kernel, stride=spec.stride, padding=pad)
        elif isinstance(spec, Dense):
            m = linear(shapes[k][0], spec.n)
        elif isinstance(spec, MaxPool2D):
            modules.append(nn.MaxPool2d(spec.size))
            continue
        elif isinstance(spec, AvgPool2D):
            modules.append(nn.AvgPool2d(spec.size))
            continue
        elif isinstance(spec, Flatten):
            modules.append(nn.Flatten())
            continue
        else:
            raise ValueError(f"no torch counterpart written for {spec}")
        modules.append(m)
        weighted.append(m)
        if len(weighted) < n_weighted:
            modules.append(nn.ReLU())
    model = nn.Sequential(*modules).to(dtype)
    with torch.no_grad():
        for m, layer in zip(weighted, params):
            m.weight.copy_(torch.from_numpy(np.array(layer.w)))
            m.bias.copy_(torch.from_numpy(np.array(layer.b)))
    return model, weighted


def rel(theirs, ours) -> tuple[float, float]:
    """Max abs diff and max abs diff / max |ours|."""
    theirs, ours = np.asarray(theirs), np.asarray(ours)
    diff = float(np.abs(theirs - ours).max())
    return diff, diff / float(np.abs(ours).max())


def compare_tree(pairs):
    """[(label, theirs, ours)] -> worst abs and rel and per-entry rows."""
    rows = [(label, *rel(t, o)) for label, t, o in pairs]
    return max(r[1] for r in rows), max(r[2] for r in rows), rows


def _tensor(torch, a):
    return torch.from_numpy(np.array(a))


# ---------------------------------------------------------------- float64 agreement


def agree_backpack(torch, bp, layers, params, xs, ys, input_shape):
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad, BatchL2Grad, DiagGGNExact

    net = network(layers)
    n = xs.shape[0]
    model, weighted = torch_modules(torch, layers, params, input_shape, torch.float64)
    model = extend(model)
    lossf = extend(torch.nn.CrossEntropyLoss())
    loss = lossf(model(_tensor(torch, xs)), _tensor(torch, ys))
    with backpack(BatchGrad(), BatchL2Grad(), DiagGGNExact()):
        loss.backward()
    g_i = per_example.per_example_grads(params, xs, ys, net=net)
    norms = per_example.per_example_grad_norms(params, xs, ys, net=net)
    ggn = curvature.diag_ggn(params, xs, ys, net=net)
    grad = fbp.grad(params, xs, ys, net=net)
    out = {}
    for quantity, pairs in {
        "grad (.grad vs fbp.grad)": [
            (f"{l}.{p}", getattr(m, p).grad.numpy(), getattr(g, q))
            for l, (m, g) in enumerate(zip(weighted, grad), 1)
            for p, q in (("weight", "w"), ("bias", "b"))
        ],
        "BatchGrad = per_example_grads / N": [
            (f"{l}.{p}", getattr(m, p).grad_batch.numpy(), np.asarray(getattr(g, q)) / n)
            for l, (m, g) in enumerate(zip(weighted, g_i), 1)
            for p, q in (("weight", "w"), ("bias", "b"))
        ],
        "BatchL2Grad = per_example_grad_norms.layers**2 / N**2": [
            (f"{l}.{p}", getattr(m, p).batch_l2.numpy(), np.asarray(getattr(g, q)) ** 2 / n**2)
            for l, (m, g) in enumerate(zip(weighted, norms.layers), 1)
            for p, q in (("weight", "w"), ("bias", "b"))
        ],
        "DiagGGNExact = curvature.diag_ggn": [
            (f"{l}.{p}", getattr(m, p).diag_ggn_exact.numpy(), getattr(g, q))
            for l, (m, g) in enumerate(zip(weighted, ggn), 1)
            for p, q in (("weight", "w"), ("bias", "b"))
        ],
    }.items():
        out[quantity] = compare_tree(pairs)
    # The sum over the parameters of BatchL2Grad against our total norm squared.
    total = sum(getattr(m, p).batch_l2.numpy() for m in weighted for p in ("weight", "bias"))
    out["sum of BatchL2Grad = per_example_grad_norms.total**2 / N**2"] = compare_tree(
        [("total", total, np.asarray(norms.total) ** 2 / n**2)]
    )
    return out


def agree_opacus(torch, opacus, layers, params, xs, ys, input_shape):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    net = network(layers)
    n = xs.shape[0]
    model, weighted = torch_modules(torch, layers, params, input_shape, torch.float64)
    gsm = GradSampleModule(model, loss_reduction="mean")
    g_i = per_example.per_example_grads(params, xs, ys, net=net)
    norms = np.asarray(per_example.per_example_grad_norms(params, xs, ys, net=net).total)
    clip = float(np.median(norms))  # about half the examples clipped
    opt = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=n,
        loss_reduction="mean",
    )
    opt.zero_grad()
    loss = torch.nn.CrossEntropyLoss()(gsm(_tensor(torch, xs)), _tensor(torch, ys))
    loss.backward()
    out = {
        "grad_sample = per_example_grads": compare_tree(
            [
                (f"{l}.{p}", getattr(m, p).grad_sample.numpy(), getattr(g, q))
                for l, (m, g) in enumerate(zip(weighted, g_i), 1)
                for p, q in (("weight", "w"), ("bias", "b"))
            ]
        )
    }
    opt.pre_step()  # clip, accumulate, add (zero) noise, divide by expected batch size
    ours = per_example.clipped_grad(params, xs, ys, clip, net=net)
    out["DPOptimizer clipped mean vs clipped_grad (raw)"] = compare_tree(
        [
            (f"{l}.{p}", getattr(m, p).grad.numpy(), getattr(g, q))
            for l, (m, g) in enumerate(zip(weighted, ours), 1)
            for p, q in (("weight", "w"), ("bias", "b"))
        ]
    )
    factor = np.minimum(1.0, clip / (norms + OPACUS_EPS))
    matched = [
        fbp.Layer(
            np.einsum("n,n...->...", factor, np.asarray(g.w)) / n,
            np.einsum("n,n...->...", factor, np.asarray(g.b)) / n,
        )
        for g in g_i
    ]
    out["DPOptimizer clipped mean vs ours with Opacus's +1e-6"] = compare_tree(
        [
            (f"{l}.{p}", getattr(m, p).grad.numpy(), getattr(g, q))
            for l, (m, g) in enumerate(zip(weighted, matched), 1)
            for p, q in (("weight", "w"), ("bias", "b"))
        ]
    )
    return out, {"clip_norm": clip, "clipped": int(np.sum(norms > clip)), "batch": n}


def biotorch_fa_model(torch, layers, params, fb, input_shape, dtype):
    from biotorch.layers.fa import Conv2d as FAConv2d
    from biotorch.layers.fa import Linear as FALinear

    model, weighted = torch_modules(
        torch, layers, params, input_shape, dtype, conv=FAConv2d, linear=FALinear
    )
    with torch.no_grad():
        for l, m in enumerate(weighted):
            source = np.zeros(m.weight_backward.shape) if l == 0 else np.array(fb[l - 1])
            m.weight_backward.copy_(torch.from_numpy(source))
    return model, weighted


def torch_step(torch, model, x, y):
    for p in model.parameters():
        p.grad = None
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach()


def agree_biotorch(torch, layers, params, xs, ys, input_shape, seed):
    net = network(layers)
    fb = feedback.init_feedback(jax.random.key(seed + 1), params, "fa", net=net)
    ours = feedback.feedback_grad(params, fb, xs, ys, rule="fa", net=net)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, weighted = biotorch_fa_model(torch, layers, params, fb, input_shape, torch.float64)
        torch_step(torch, model, _tensor(torch, xs), _tensor(torch, ys))
    finally:
        torch.set_default_dtype(default)
    out = {
        "fa: .grad vs feedback_grad(rule='fa')": compare_tree(
            [
                (f"{l}.{p}", getattr(m, p).grad.numpy(), getattr(g, q))
                for l, (m, g) in enumerate(zip(weighted, ours), 1)
                for p, q in (("weight", "w"), ("bias", "b"))
            ]
        )
    }
    # The check has teeth only if fa differs from backprop here.
    bp = fbp.grad(params, xs, ys, net=net)
    out["(fa vs bp, for scale: not an agreement)"] = compare_tree(
        [
            (f"{l}.{p}", np.asarray(getattr(g, p)), getattr(b, p))
            for l, (g, b) in enumerate(zip(ours, bp), 1)
            for p in ("w", "b")
        ]
    )
    return out


def agreement(torch, peers, layers, input_shape, batch, seed):
    params, xs, ys = data(network(layers), input_shape, batch, jnp.float64, seed)
    result = {}
    if "backpack" in peers:
        # BackPACK 1.7.1's AvgPool2d Jacobian builds a float32 conv_transpose of the
        # default dtype: with float64 tensors it fails unless that default is float64.
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            result["backpack"] = agree_backpack(torch, peers, layers, params, xs, ys, input_shape)
        finally:
            torch.set_default_dtype(default)
    if "opacus" in peers:
        result["opacus"], result["opacus_clip"] = agree_opacus(
            torch, peers, layers, params, xs, ys, input_shape
        )
    if "biotorch" in peers:
        result["biotorch"] = agree_biotorch(torch, layers, params, xs, ys, input_shape, seed)
    return result


# ---------------------------------------------------------------- float32 timing


def timing(torch, peers, layers, input_shape, batch, repeats, seed):
    net = network(layers)
    params, xs, ys = data(net, input_shape, batch, jnp.float32, seed)
    x_t, y_t = _tensor(torch, xs), _tensor(torch, ys)
    c = {}
    c["ours per_example_grad_norms"] = lambda: (
        per_example.per_example_grad_norms(params, xs, ys, net=net).total
    )
    c["ours grad"] = lambda: fbp.grad(params, xs, ys, net=net)
    jax_grad = jax.jit(jax.grad(lambda p: fbp.loss(p, xs, ys, net=net)))
    c["jax.jit(jax.grad(loss))"] = lambda: jax_grad(params)
    plain, _ = torch_modules(torch, layers, params, input_shape, torch.float32)
    c["torch backward"] = lambda: torch_step(torch, plain, x_t, y_t)
    if "backpack" in peers:
        from backpack import backpack, extend
        from backpack.extensions import BatchL2Grad

        bp_model, _ = torch_modules(torch, layers, params, input_shape, torch.float32)
        bp_model = extend(bp_model)
        bp_loss = extend(torch.nn.CrossEntropyLoss())

        def backpack_norms():
            for p in bp_model.parameters():
                p.grad = None
            loss = bp_loss(bp_model(x_t), y_t)
            with backpack(BatchL2Grad()):
                loss.backward()
            return sum(p.batch_l2 for p in bp_model.parameters()).sqrt() * batch

        c["backpack BatchL2Grad"] = backpack_norms
    if "opacus" in peers:
        from opacus import GradSampleModule

        op_model, _ = torch_modules(torch, layers, params, input_shape, torch.float32)
        gsm = GradSampleModule(op_model, loss_reduction="mean")

        def opacus_norms():
            for p in gsm.parameters():
                p.grad, p.grad_sample = None, None
            loss = torch.nn.functional.cross_entropy(gsm(x_t), y_t)
            loss.backward()
            per_param = [p.grad_sample.reshape(batch, -1).norm(dim=1) for p in gsm.parameters()]
            return torch.stack(per_param, dim=1).norm(dim=1)

        c["opacus grad_sample + norms"] = opacus_norms
    if "biotorch" in peers:
        fb = feedback.init_feedback(jax.random.key(seed + 1), params, "fa", net=net)
        c["ours feedback_grad fa"] = lambda: feedback.feedback_grad(
            params, fb, xs, ys, rule="fa", net=net
        )
        fa_model, _ = biotorch_fa_model(torch, layers, params, fb, input_shape, torch.float32)
        c["biotorch fa"] = lambda: torch_step(torch, fa_model, x_t, y_t)
    # Check that the torch norms are the same numbers before timing them.
    checks = {}
    ours_norm = np.asarray(c["ours per_example_grad_norms"]())
    for name in ("backpack BatchL2Grad", "opacus grad_sample + norms"):
        if name in c:
            checks[name] = rel(c[name]().detach().numpy(), ours_norm)[1]
    seconds = interleaved_medians(c, repeats=repeats, warmup=3)
    return seconds, checks


PAIRS = [
    ("per-example gradient norms", "backpack BatchL2Grad", "ours per_example_grad_norms"),
    ("per-example gradient norms", "opacus grad_sample + norms", "ours per_example_grad_norms"),
    ("mean gradient", "torch backward", "ours grad"),
    ("mean gradient", "jax.jit(jax.grad(loss))", "ours grad"),
    ("fa update direction", "biotorch fa", "ours feedback_grad fa"),
]


# ---------------------------------------------------------------- report


def describe_layers(layers) -> str:
    return ", ".join(fbp.layers.describe(s) for s in layers)


def render(r) -> str:
    m, a, t = r["machine"], r["agreement"], r["timing"]
    v = m["versions"]
    lines = [
        "# Convolutional networks beside BackPACK, Opacus and biotorch",
        "",
        f"Command: `{r['command']}`, run from a virtual environment holding this repository "
        "(`pip install -e .`) and the PyTorch peers; one Python process imports all of "
        "them.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, "
        f"jax {v['jax']} ({m['jax_backend']}), numpy {v['numpy']}, torch {v['torch']} "
        f"(build {m['torch_build']}, run on the CPU; {m['torch_threads']} threads, "
        f"OMP_WAIT_POLICY={m['omp_wait_policy']}), "
        f"backpack-for-pytorch {v['backpack-for-pytorch']}, opacus {v['opacus']}, biotorch "
        f"{v['biotorch']}. GEMM rate (`functional_bp.timing.gemm_rate()`, float32 "
        f"2048^2 matmul under jax.jit, best of 5, same run): {r['gemm_gflops']:.1f} GFLOP/s "
        f"before the timing, {r['gemm_gflops_after']:.1f} GFLOP/s after it.",
        "",
    ]
    if r["skipped"]:
        lines += ["Skipped peers: " + "; ".join(f"{k} ({e})" for k, e in r["skipped"].items()), ""]
    lines += [
        "## Conventions",
        "",
        "The torch model is the same network layer for layer (Conv2d -> ReLU -> MaxPool2d, "
        "..., Flatten, Linear -> ReLU, Linear) with our weights copied unchanged (our conv "
        "w is Conv2d.weight, our dense w is Linear.weight; our Flatten is torch.flatten(x, "
        "1)); it outputs the logits and `CrossEntropyLoss()` (mean) is our softmax output "
        "with the log-likelihood cost (the mean of -log softmax[label]): the factor c "
        "between the losses is 1. With N the batch size and g_i our "
        "`per_example.per_example_grads` (the gradient of example i's own cost):",
        "",
        "- BackPACK `BatchGrad` = g_i / N; `BatchL2Grad` = ||g_i||^2 / N^2 per parameter "
        "(our `per_example_grad_norms(...).layers` squared; summed over the parameters, "
        "`.total` squared); `DiagGGNExact` = our `curvature.diag_ggn`.",
        '- Opacus `GradSampleModule(loss_reduction="mean")` multiplies what it '
        "backpropagates by N: `grad_sample` = g_i. Its `DPOptimizer` (noise_multiplier 0, "
        "so no noise) clips with min(1, C / (||g_i|| + 1e-6)), ours with min(1, C / "
        "||g_i||): the raw row shows that 1e-6 (about 1e-6 / ||g_i|| relative); the next "
        "row compares with our g_i clipped with Opacus's factor.",
        "- BackPACK 1.7.1 with float64 tensors fails in `DiagGGNExact` through `AvgPool2d` "
        "(`RuntimeError: expected scalar type Double but found Float`: its AvgPool2d Jacobian "
        "builds a conv_transpose of torch's default dtype), so the BackPACK comparisons run "
        "with `torch.set_default_dtype(torch.float64)`.",
        "- biotorch's `fa` layers hold one `weight_backward` per layer, carrying that "
        "layer's error to its input; our B^l replaces w^{l+1}. So biotorch layer l+1's "
        '`weight_backward` = our `init_feedback(..., "fa")[l-1]` (the kernel\'s shape for '
        "a convolution); layer 1's is never used and is set to zero.",
        "",
        "## Agreement (float64)",
        "",
        "Networks (ReLU hidden, softmax output with the log-likelihood cost, "
        "`init_network`'s scaled normal weights, inputs uniform in [0, 1), integer labels, "
        f"seed {a['seed']}):",
        "",
    ]
    for net in a["networks"]:
        lines.append(
            f"- {net['name']}: {net['layers']} on {tuple(net['input_shape'])}, batch "
            f"{net['batch']}."
        )
    lines += [
        "",
        "Relative: the largest abs difference over a parameter over the largest |entry| of "
        "ours for that parameter, the worst parameter shown. The last biotorch row is not "
        "an agreement: it shows that fa differs from backprop, so the fa row has teeth.",
        "",
        "| network | peer | quantity (conversion) | max abs diff | max rel diff |",
        "| --- | --- | --- | --- | --- |",
    ]
    for net in a["networks"]:
        for peer in ("backpack", "opacus", "biotorch"):
            for quantity, v in net.get(peer, {}).items():
                lines.append(
                    f"| {net['name']} | {peer} | {quantity} | {v['max_abs_diff']:.1e} | "
                    f"{v['max_rel_diff']:.1e} |"
                )
    clips = [(net["name"], net["opacus_clip"]) for net in a["networks"] if "opacus_clip" in net]
    if clips:
        lines += [
            "",
            "Opacus clipping, C = the median per-example norm: "
            + "; ".join(
                f"{name}: C = {oc['clip_norm']:.4g}, {oc['clipped']} of {oc['batch']} "
                "examples clipped"
                for name, oc in clips
            )
            + ".",
        ]
    lines += [
        "",
        "## Speed (float32)",
        "",
        f"The book's network ({r['book_layers']}, network3.py's chapter 6 "
        f"network with ReLU) on {tuple(t['input_shape'])}, batch {t['batch']}. One call = "
        "one forward and backward pass giving the quantity. Ours: the jitted library "
        "functions (results blocked on). BackPACK: extended model, forward, loss, "
        "`backward()` under `backpack(BatchL2Grad())`, norms as sqrt(sum of batch_l2) N. "
        "Opacus: `GradSampleModule` forward, backward, norms of `grad_sample`. biotorch: "
        "its `fa` Conv2d/Linear model's forward and backward. torch backward: the plain "
        f"model's forward and backward. Median of {t['repeats']} interleaved rounds "
        "(order shuffled each round) after 3 warm-up rounds, all in one process. Before "
        "timing, the peers' norms were checked against ours (max rel diff, float32): "
        + ", ".join(f"{k} {val:.1e}" for k, val in t["checks"].items())
        + ". Absolute times hold for this (shared, 2-core) machine only; the ratios are "
        "the claim.",
        "",
        "| quantity | peer | peer ms | ours | ours ms | peer / ours |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    s = t["seconds"]
    for quantity, peer, ours in PAIRS:
        if peer in s and ours in s:
            lines.append(
                f"| {quantity} | {peer} | {1e3 * s[peer]:.2f} | {ours} | {1e3 * s[ours]:.2f} "
                f"| {s[peer] / s[ours]:.2f} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/peers_conv/peers_conv"),
        help="output path without suffix: writes OUT.md and OUT.json",
    )
    parser.add_argument("--timing-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=40, help="timed rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5 timed rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 5
    torch, peers, missing = import_peers()
    torch.set_num_threads(os.cpu_count() or 1)
    result = {
        "command": (
            "python scripts/compare_peers_conv.py "
            + " ".join(sys.argv[1:] if argv is None else argv)
        ).strip(),
        "machine": machine(torch),
        "skipped": missing,
    }
    networks = []
    for name, layers, shape, batch in AGREEMENT_NETS:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            agree = agreement(torch, peers, layers, shape, batch, args.seed)
        for peer in ("backpack", "opacus", "biotorch"):
            if peer not in agree:
                continue
            for quantity, (ab, re, _rows) in agree[peer].items():
                print(f"{name:8s} {peer:9s} {quantity}: max abs {ab:.1e}, max rel {re:.1e}")
            agree[peer] = {
                q: {
                    "max_abs_diff": ab,
                    "max_rel_diff": re,
                    "per_param": [
                        {"param": p, "max_abs_diff": x, "max_rel_diff": y} for p, x, y in rows
                    ],
                }
                for q, (ab, re, rows) in agree[peer].items()
            }
        agree.update(
            {"name": name, "layers": describe_layers(layers), "input_shape": shape, "batch": batch}
        )
        networks.append(agree)
    result["agreement"] = {"seed": args.seed, "networks": networks}
    result["gemm_gflops"] = gemm_rate()
    print(f"GEMM rate: {result['gemm_gflops']:.1f} GFLOP/s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds, checks = timing(
            torch, peers, BOOK, (1, 28, 28), args.timing_batch, args.repeats, args.seed
        )
    result["gemm_gflops_after"] = gemm_rate()
    print(f"GEMM rate after: {result['gemm_gflops_after']:.1f} GFLOP/s")
    result["timing"] = {
        "input_shape": (1, 28, 28),
        "batch": args.timing_batch,
        "repeats": args.repeats,
        "seconds": seconds,
        "checks": checks,
        "ratios": {
            f"{p} / {o}": seconds[p] / seconds[o]
            for _, p, o in PAIRS
            if p in seconds and o in seconds
        },
    }
    for name, value in seconds.items():
        print(f"{name:30s} {1e3 * value:.2f} ms")
    result["book_layers"] = describe_layers(BOOK)
    md = render(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(md)
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")
    off = [
        (net["name"], peer, q)
        for net in networks
        for peer in ("backpack", "opacus", "biotorch")
        for q, v in net.get(peer, {}).items()
        if not q.startswith("(") and "(raw)" not in q and not v["max_rel_diff"] < 1e-10
    ]
    if off:
        print(f"beyond 1e-10 relative: {off}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
