"""Laplace approximations of an MNIST [784, 100, 10] network (relu, softmax,
log-likelihood) against its MAP: accuracy, NLL and ECE in distribution and on rotated
test digits, the table of Laplace Redux (Daxberger et al. 2021, their figure 5).

    python scripts/laplace_mnist.py --data-dir $MNIST --out docs/results/laplace_mnist

Trains with Adam (cosine decay, L2 weight decay) on the 60,000 training images (training and validation files of
network.py's split together), fits the diagonal, Kronecker-factored and last-layer
Laplace posteriors with `functional_bp.laplace.fit` (the curvature accumulated over
--curvature-examples training images in mini-batches), picks each prior precision by
the marginal likelihood, and predicts with the linearised (GLM) probit predictive.
Writes PREFIX.md and PREFIX.json with the command, the machine and the GEMM rate
measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage

import functional_bp as fbp
from functional_bp import laplace, timing, training
from functional_bp.runs import write_json

NET = fbp.Network("relu", "softmax", "log_likelihood")
SIZES = [784, 100, 10]
ANGLES = (15, 30, 45, 60, 75, 90)
BINS = 15


def rotate(x: np.ndarray, angle: float) -> np.ndarray:
    """The 28 x 28 images of x (n, 784) rotated by ``angle`` degrees (bilinear)."""
    images = x.reshape(-1, 28, 28)
    rotated = ndimage.rotate(images, angle, axes=(1, 2), reshape=False, order=1)
    return rotated.reshape(-1, 784).astype(np.float32)


def metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, NLL (mean -log p(y)) and ECE: 15 equal-width confidence bins,
    sum_b |B_b|/n |accuracy(B_b) - confidence(B_b)|."""
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    nll = -np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)))
    edges = np.linspace(0, 1, BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, BINS - 1)
    ece = 0.0
    for b in range(BINS):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return dict(accuracy=float(correct.mean()), nll=float(nll), ece=float(ece))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST directory")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=5e-5,
        help="L2 on the mean cost: the MAP of a Gaussian prior of precision N x this",
    )
    parser.add_argument("--curvature-examples", type=int, default=60_000)
    parser.add_argument("--curvature-batch", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/laplace_mnist")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = timing.published_command("scripts/laplace_mnist.py", given)
    started = time.perf_counter()
    gemm = timing.gemm_rate()
    print(f"GEMM rate: {gemm:.1f} GFLOP/s (float32 2048^2)", flush=True)

    train, validation, test = fbp.data.load_mnist(args.data_dir)
    x_train = np.concatenate([train.x, validation.x])
    y_train = np.concatenate([train.y, validation.y])
    x_test, y_test = test.x, test.y

    key, init_key = jax.random.split(jax.random.key(args.seed))
    params = fbp.init_mlp(init_key, SIZES, init="scaled_normal")
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    schedule = optax.cosine_decay_schedule(args.learning_rate, steps)
    optimizer = optax.chain(optax.add_decayed_weights(args.weight_decay), optax.adam(schedule))
    opt_state = optimizer.init(params)
    xs, ys = jnp.asarray(x_train), jnp.asarray(y_train)
    history = []
    for epoch in range(1, args.epochs + 1):
        key, epoch_key = jax.random.split(key)
        start = time.perf_counter()
        params, opt_state = training.epoch(
            epoch_key, optimizer, params, opt_state, xs, ys, batch_size=args.batch_size, net=NET
        )
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        accuracy = float(
            np.mean(np.asarray(fbp.forward(params, x_test, net=NET)[0]).argmax(1) == y_test)
        )
        history.append(dict(epoch=epoch, test_accuracy=accuracy, seconds=seconds))
        print(f"epoch {epoch}: test accuracy {accuracy:.2%} ({seconds:.1f} s)", flush=True)
    train_seconds = sum(h["seconds"] for h in history)

    test_sets = {0: x_test} | {angle: rotate(x_test, angle) for angle in ANGLES}
    results, fits = {}, {}
    results["MAP"] = {
        angle: metrics(np.asarray(fbp.forward(params, x, net=NET)[0]), y_test)
        for angle, x in test_sets.items()
    }
    n_fit = args.curvature_examples
    for structure in laplace.STRUCTURES:
        start = time.perf_counter()
        posterior = laplace.fit(
            params,
            xs[:n_fit],
            ys[:n_fit],
            structure=structure,
            batch_size=args.curvature_batch,
            net=NET,
        )
        jax.block_until_ready(posterior.curvature)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        posterior = laplace.optimize_prior_precision(posterior)
        tau = float(posterior.prior_precision)
        marglik = float(laplace.log_marginal_likelihood(posterior))
        optimize_seconds = time.perf_counter() - start
        start = time.perf_counter()
        name = f"LA {structure} (GLM probit)"
        results[name] = {
            angle: metrics(np.asarray(laplace.predict(posterior, x, net=NET)), y_test)
            for angle, x in test_sets.items()
        }
        predict_seconds = time.perf_counter() - start
        fits[name] = dict(
            structure=structure,
            prior_precision=tau,
            log_marginal_likelihood=marglik,
            fit_seconds=fit_seconds,
            optimize_seconds=optimize_seconds,
            predict_seconds_7_test_sets=predict_seconds,
        )
        print(
            f"{name}: tau {tau:.4g}, fit {fit_seconds:.1f} s, predict {predict_seconds:.1f} s, "
            f"in-distribution {results[name][0]}",
            flush=True,
        )
    total = time.perf_counter() - started

    m = timing.machine()
    lines = [
        f"MNIST [784, 100, 10], relu/softmax/log-likelihood, Adam {args.learning_rate:g} "
        "(cosine decay to 0) "
        f"with L2 weight decay {args.weight_decay:g} on the mean cost (the MAP of a prior "
        f"of precision {args.weight_decay * len(x_train):g}), batch {args.batch_size}, {args.epochs} epochs on the 60,000 training images "
        f"({train_seconds:.0f} s). Laplace curvature (GGN) accumulated over "
        f"{min(n_fit, len(x_train)):,} training images in batches of {args.curvature_batch}; "
        "prior precision by the marginal likelihood; predictive: linearised (GLM) probit. "
        f"Rotated: the 10,000 test digits rotated by {', '.join(map(str, ANGLES))} degrees "
        "(bilinear). ECE: 15 bins.",
        "",
        f"Command: `{command}`.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; jax {m['jax']} "
        f"({m['backend']}, {m['device']}). Measured GEMM rate (float32 2048^2 `jnp` "
        f"matmul, same run): {gemm:.1f} GFLOP/s. Total wall time {total:.0f} s.",
        "",
        "| method | tau | accuracy | NLL | ECE | rotated NLL (mean) | rotated ECE (mean) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, by_angle in results.items():
        tau = fits[name]["prior_precision"] if name in fits else None
        row = by_angle[0]
        rotated_nll = np.mean([by_angle[a]["nll"] for a in ANGLES])
        rotated_ece = np.mean([by_angle[a]["ece"] for a in ANGLES])
        lines.append(
            f"| {name} | {'-' if tau is None else f'{tau:.3g}'} | {row['accuracy']:.2%} | "
            f"{row['nll']:.4f} | {row['ece']:.4f} | {rotated_nll:.3f} | {rotated_ece:.3f} |"
        )
    lines += [
        "",
        "Per rotation angle, NLL / ECE (accuracy in the JSON):",
        "",
        "| method | " + " | ".join(f"{a} deg" for a in ANGLES) + " |",
        "| --- | " + " | ".join("---" for _ in ANGLES) + " |",
    ]
    for name, by_angle in results.items():
        cells = [f"{by_angle[a]['nll']:.2f} / {by_angle[a]['ece']:.3f}" for a in ANGLES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        out.with_suffix(".json"),
        dict(
            command=command,
            machine=m,
            gemm_n=2048,
            gemm_gflops=gemm,
            total_seconds=total,
            config=dict(
                sizes=SIZES,
                net=repr(NET),
                optimizer=f"adam({args.learning_rate}), cosine decay to 0",
                weight_decay=args.weight_decay,
                batch_size=args.batch_size,
                epochs=args.epochs,
                curvature_examples=min(n_fit, len(x_train)),
                curvature_batch=args.curvature_batch,
                seed=args.seed,
                angles=list(ANGLES),
                ece_bins=BINS,
            ),
            history=history,
            fits=fits,
            results={name: {str(a): r for a, r in v.items()} for name, v in results.items()},
        ),
    )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
