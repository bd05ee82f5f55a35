"""Diagonal Gauss-Newton descent against plain SGD and Adam on MNIST [784, 100, 10]:
epochs to reach a test accuracy (97 % by default), every run a `functional_bp.runs.Config`.

    python scripts/compare_optimizers.py --data-dir $MNIST

Writes out/optimizers.md and out/optimizers.json (each run's record; --out).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from functional_bp import runs

# Sigmoid hidden layer, softmax output and log-likelihood, network2.py's initialisation.
COMMON = runs.Config(
    dataset="mnist",
    sizes=(784, 100, 10),
    output_activation="softmax",
    cost="log_likelihood",
    init="scaled_normal",
    batch_size=10,
)
# The diag GGN settings were picked from 4-epoch probes of (eta, damping) in
# {(0.1, 0.1), (0.3, 0.03), (0.3, 0.3), (1, 1)}; SGD and Adam were not tuned.
RUNS = {
    "SGD (eta 0.1)": dict(optimizer="sgd", learning_rates=(0.1,)),
    "SGD (eta 0.5)": dict(optimizer="sgd", learning_rates=(0.5,)),
    "Adam (1e-3)": dict(optimizer="adam", learning_rates=(1e-3,)),
    "diag GGN (eta 0.3, damping 0.1)": dict(
        optimizer="diag_ggn", learning_rates=(0.3,), damping=0.1
    ),
    "diag GGN (eta 1, damping 1)": dict(optimizer="diag_ggn", learning_rates=(1.0,), damping=1.0),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST directory")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--out", default="out/optimizers")
    args = parser.parse_args(argv)
    configs = {
        name: dataclasses.replace(COMMON, data_dir=args.data_dir, epochs=args.epochs, **options)
        for name, options in RUNS.items()
    }
    for config in configs.values():  # every run checked before any trains
        runs.check(config)
    data = runs.load(next(iter(configs.values())))  # one data set for all
    records = {}
    for name, config in configs.items():
        print(f"== {name}: {config}", flush=True)

        def report(epoch: runs.Epoch) -> None:
            row = epoch.rows[0]
            print(f"epoch {epoch.epoch}: test accuracy {row['eval_accuracy']:.2%}", flush=True)

        records[name] = runs.train(config, data, on_epoch=report).record
    lines = [
        f"MNIST [784, 100, 10], sigmoid/softmax/log-likelihood, batch 10, {args.epochs} "
        "epochs, test accuracy; diag GGN with the curvature's running average decay 0.9. "
        "Command: `python scripts/compare_optimizers.py`.",
        "",
        f"| optimizer | epochs to {args.target:.0%} | final | peak (epoch) | s per epoch |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, record in records.items():
        reached = [r["epoch"] for r in record["history"] if r["eval_accuracy"] >= args.target]
        lines.append(
            f"| {name} | {reached[0] if reached else 'not reached'} | "
            f"{record['final_accuracy']:.2%} | {record['peak_accuracy']:.2%} "
            f"({record['peak_epoch']}) | {record['median_train_seconds_per_epoch']:.2f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.write_json(out.with_suffix(".json"), records)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
