"""Backprop against feedback alignment and its relatives on MNIST, from the same initial
weights, several seeds of each rule trained at once (`functional_bp.runs`):

    python scripts/feedback_alignment.py --data-dir $MNIST

1. [784, 1000, 10], sigmoid hidden and output, cross-entropy: bp, fa, sign, kp and dfa
   (Lillicrap et al. 2016: BP 2.4 %, FA 2.1 % test error), with the alignment angles of
   fa and kp per epoch (their figure);
2. [784, 800, 800, 10], tanh hidden, sigmoid output, cross-entropy: bp and dfa
   (Nøkland 2016: 1.45 % with dropout), no dropout here.

Seed s draws the initial weights and the shuffles as `functional_bp train --seed s` does,
and B from key(s + 10**6). Writes out/feedback_alignment.{md,json,png} (--out).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from functional_bp import plots, runs


def train_rule(config: runs.Config, data: runs.Data) -> dict:
    """Every seed of one rule in one program; test error and alignment per epoch."""

    def report(epoch: runs.Epoch) -> None:
        errors = " ".join(f"{100 * (1 - row['eval_accuracy']):.2f}" for row in epoch.rows)
        print(
            f"{config.layer_sizes} {config.rule} epoch {epoch.epoch}: test error {errors} % "
            f"({epoch.seconds:.1f} s for {len(epoch.rows)} seeds)",
            flush=True,
        )

    record = runs.train(config, data, on_epoch=report).record
    done = [run for run in runs.per_run(record) if not run["diverged"]]
    finals = [run["final_accuracy"] for run in done]
    seconds = np.median([row["train_seconds"] for row in done[0]["history"][1:]] or [0])
    return dict(
        rule=config.rule,
        sizes=config.layer_sizes,
        record=record,
        final_mean=1 - float(np.mean(finals)),
        final_best=1 - max(finals),
        best_epoch_error=1 - max(run["peak_accuracy"] for run in done),
        seconds=float(seconds),  # per epoch for all seeds, after compiling
    )


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
    parser.add_argument("--out", default="out/feedback_alignment")
    args = parser.parse_args(argv)
    common = runs.Config(
        dataset="mnist",
        data_dir=args.data_dir,
        init="scaled_normal",
        output_activation="sigmoid",
        cost="cross_entropy",
        seeds=tuple(range(args.seeds)),
        epochs=args.epochs,
        batch_size=args.batch_size,
        track_examples=1000,
    )
    configs = []
    parts = args.parts.split(",")
    for rule in args.rules.split(",") if "shallow" in parts else ():
        configs.append(
            dataclasses.replace(
                common,
                sizes=(784, 1000, 10),
                activation="sigmoid",
                learning_rates=(args.eta,),
                rule=rule,
                weight_decay=args.kp_weight_decay if rule == "kp" else 0.0,
                feedback_scale=args.feedback_scale if rule in ("fa", "dfa", "kp") else None,
            )
        )
    for rule in ("bp", "dfa") if "deep" in parts else ():
        configs.append(
            dataclasses.replace(
                common,
                sizes=(784, 800, 800, 10),
                activation="tanh",
                learning_rates=(args.deep_eta,),
                rule=rule,
            )
        )
    for config in configs:  # every run checked before any trains
        runs.check(config)
    data = runs.load(common)
    results = [train_rule(config, data) for config in configs]
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
        lines.append(
            f"| {r['sizes']} | {r['rule']} | {100 * r['final_mean']:.2f} | "
            f"{100 * r['final_best']:.2f} | {100 * r['best_epoch_error']:.2f} | "
            f"{r['seconds']:.1f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.write_json(out.with_suffix(".json"), results)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plots.feedback_alignment(results, out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
