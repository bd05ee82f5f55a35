"""Backprop against feedback alignment and its relatives on MNIST, from the same initial
weights, several seeds of each rule trained at once (`jax.vmap`):

    python scripts/feedback_alignment.py --data-dir ../shared/data/mnist

1. [784, 1000, 10], sigmoid hidden and output, cross-entropy: bp, fa, sign, kp and dfa
   (Lillicrap et al. 2016: BP 2.4 %, FA 2.1 % test error), with the alignment angles of
   fa and kp per epoch (their figure);
2. [784, 800, 800, 10], tanh hidden, sigmoid output, cross-entropy: bp and dfa
   (Nøkland 2016: 1.45 % with dropout), no dropout here.

Writes results/feedback_alignment.{md,json,png}.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import functional_bp as fbp


def train_rule(
    rule, sizes, data, *, seeds, epochs, eta, batch_size, weight_decay, options, scale=None
):
    """Every seed of one rule in one program; test error and alignment per epoch."""
    xs, ys, test_xs, test_labels, probe = data
    keys = jnp.stack([jax.random.key(seed) for seed in seeds])
    params = fbp.init_mlp_many(keys, sizes, init="scaled_normal")  # the same for every rule
    feedback = None
    if rule not in ("bp", "sign"):
        feedback = jax.vmap(lambda k, p: fbp.init_feedback(k, p, rule, scale=scale))(
            jnp.stack([jax.random.key(10**6 + s) for s in seeds]), params
        )
    shuffle_keys = jnp.stack([jax.random.key(2 * 10**6 + s) for s in seeds])
    forward = dict(activation=options["activation"], output_activation=options["output_activation"])

    @jax.jit
    def epoch(keys, params, feedback):
        if rule == "bp":
            return fbp.train_epoch_many(
                keys, params, xs, ys, eta, batch_size=batch_size, **options
            ), feedback
        run = functools.partial(
            fbp.feedback_epoch,
            rule=rule,
            batch_size=batch_size,
            weight_decay=weight_decay,
            **options,
        )
        return jax.vmap(run, in_axes=(0, 0, 0, None, None, None))(
            keys, params, feedback, xs, ys, eta
        )

    @jax.jit
    def measure(params, feedback):
        outputs = jax.vmap(lambda p: fbp.feedforward(p, test_xs, **forward))(params)
        errors = jnp.mean(jnp.argmax(outputs, axis=-1) != test_labels, axis=-1)
        if rule == "bp":
            return errors, None
        angles = jax.vmap(lambda p, f: fbp.alignment_angles(p, f, *probe, rule=rule, **options))(
            params, feedback
        )
        return errors, angles

    def row(epoch, seconds):
        errors, angles = measure(params, feedback)
        entry = dict(epoch=epoch, seconds=seconds, test_error=np.asarray(errors).tolist())
        if angles is not None:
            entry.update(
                update_angles=np.asarray(angles.update).tolist(),
                feedback_angles=np.asarray(angles.feedback).tolist(),
            )
        return entry

    history = [row(0, 0.0)]  # before training
    for e in range(1, epochs + 1):
        start = time.perf_counter()
        shuffle_keys, epoch_keys = jnp.moveaxis(jax.vmap(jax.random.split)(shuffle_keys), 1, 0)
        params, feedback = epoch(epoch_keys, params, feedback)
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        history.append(row(e, seconds))
        print(
            f"{sizes} {rule} epoch {e}: test error "
            + " ".join(f"{100 * x:.2f}" for x in history[-1]["test_error"])
            + f" % ({seconds:.1f} s for {len(seeds)} seeds)",
            flush=True,
        )
    final = history[-1]["test_error"]
    return dict(
        rule=rule,
        sizes=sizes,
        seeds=list(seeds),
        history=history,
        final_mean=float(np.mean(final)),
        final_best=float(np.min(final)),
        best_epoch_error=float(np.min([min(r["test_error"]) for r in history])),
    )


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (err_ax, angle_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for result in results:
        epochs = [r["epoch"] for r in result["history"]]
        errors = 100 * np.array([r["test_error"] for r in result["history"]])
        label = f"{result['rule']} {result['sizes'][1:-1]}"
        line = err_ax.plot(epochs, errors.mean(axis=1), label=label)
        err_ax.fill_between(
            epochs, errors.min(axis=1), errors.max(axis=1), alpha=0.2, color=line[0].get_color()
        )
        if result["rule"] in ("fa", "kp") and result["sizes"][1] == 1000:
            angles = np.array([r["update_angles"] for r in result["history"]])  # (E, S, L)
            angle_ax.plot(
                epochs,
                angles[:, :, 0].mean(axis=1),
                label=f"{result['rule']}: update of layer 1 vs gradient",
            )
            between = np.array([r["feedback_angles"] for r in result["history"]])
            angle_ax.plot(
                epochs, between[:, :, 0].mean(axis=1), ls="--", label=f"{result['rule']}: B vs w^2"
            )
    angle_ax.axhline(90, color="gray", lw=0.5)
    err_ax.set(xlabel="epoch", ylabel="test error (%)", title="MNIST test error (mean, band)")
    err_ax.set_ylim(0, 6)
    angle_ax.set(xlabel="epoch", ylabel="degrees", title="alignment, [784, 1000, 10]")
    for ax in (err_ax, angle_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eta", type=float, default=0.5, help="[784, 1000, 10]")
    parser.add_argument("--deep-eta", type=float, default=0.05, help="[784, 800, 800, 10]")
    parser.add_argument("--parts", default="shallow,deep", help="shallow, deep or both")
    parser.add_argument("--rules", default="bp,fa,sign,kp,dfa", help="[784, 1000, 10] rules")
    parser.add_argument(
        "--feedback-scale", type=float, default=None, help="std of B (default 1/sqrt(n_l))"
    )
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--kp-weight-decay", type=float, default=1e-4)
    parser.add_argument("--out", default="results/feedback_alignment")
    args = parser.parse_args(argv)
    train, _, test = fbp.load_mnist(args.data_dir)
    xs, ys = jnp.asarray(train.x), jnp.asarray(fbp.one_hot(train.y))
    data = (xs, ys, jnp.asarray(test.x), jnp.asarray(test.y), (xs[:1000], ys[:1000]))
    seeds = range(args.seeds)
    common = dict(seeds=seeds, epochs=args.epochs, batch_size=args.batch_size)
    parts = args.parts.split(",")
    results = []
    shallow = dict(activation="sigmoid", output_activation="sigmoid", cost="cross_entropy")
    for rule in args.rules.split(",") if "shallow" in parts else ():
        decay = args.kp_weight_decay if rule == "kp" else 0.0
        results.append(
            train_rule(
                rule,
                [784, 1000, 10],
                data,
                weight_decay=decay,
                options=shallow,
                eta=args.eta,
                scale=args.feedback_scale,
                **common,
            )
        )
    deep = dict(activation="tanh", output_activation="sigmoid", cost="cross_entropy")
    for rule in ("bp", "dfa") if "deep" in parts else ():
        results.append(
            train_rule(
                rule,
                [784, 800, 800, 10],
                data,
                weight_decay=0.0,
                options=deep,
                eta=args.deep_eta,
                **common,
            )
        )
    lines = [
        f"MNIST, {args.epochs} epochs, batch {args.batch_size}, eta {args.eta} "
        f"([784, 1000, 10]) and {args.deep_eta} ([784, 800, 800, 10]), "
        f"{args.seeds} seeds per rule from the same initial weights (network2.py's "
        f"1/sqrt(n_in) init), cross-entropy, no dropout; kp with weight decay "
        f"{args.kp_weight_decay}; B ~ N(0, "
        + ("1/n_l" if args.feedback_scale is None else f"{args.feedback_scale}^2")
        + "). Command: `python scripts/feedback_alignment.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + "`.",
        "",
        "| network | rule | final test error, mean (%) | best seed (%) | lowest over epochs (%) "
        "| s per epoch, all seeds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        seconds = np.median([row["seconds"] for row in r["history"][2:]] or [0])  # after compiling
        lines.append(
            f"| {r['sizes']} | {r['rule']} | {100 * r['final_mean']:.2f} | "
            f"{100 * r['final_best']:.2f} | {100 * r['best_epoch_error']:.2f} | {seconds:.1f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(results, out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
