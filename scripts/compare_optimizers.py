"""Diagonal Gauss-Newton descent against plain SGD and Adam on MNIST [784, 100, 10]:
epochs to reach a test accuracy (97 % by default), every run through the CLI.

    python scripts/compare_optimizers.py --data-dir ../shared/data/mnist

Writes results/optimizers.md and results/optimizers.json (each run's history).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from functional_bp.cli import build_parser, train

# Sigmoid hidden layer, softmax output and log-likelihood, network2.py's initialisation.
COMMON = "--sizes 784,100,10 --output-activation softmax --cost log_likelihood"
COMMON += " --init scaled_normal --batch-size 10 --no-progress"
# The diag GGN settings were picked from 4-epoch probes of (eta, damping) in
# {(0.1, 0.1), (0.3, 0.03), (0.3, 0.3), (1, 1)}; SGD and Adam were not tuned.
RUNS = {
    "SGD (eta 0.1)": "--optimizer sgd --eta 0.1",
    "SGD (eta 0.5)": "--optimizer sgd --eta 0.5",
    "Adam (1e-3)": "--optimizer adam --eta 1e-3",
    "diag GGN (eta 0.3, damping 0.1)": "--optimizer diag_ggn --eta 0.3 --damping 0.1",
    "diag GGN (eta 1, damping 1)": "--optimizer diag_ggn --eta 1 --damping 1",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST directory")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--out", default="results/optimizers")
    args = parser.parse_args(argv)
    records = {}
    for name, options in RUNS.items():
        argv = ["train", "--dataset", "mnist", "--epochs", str(args.epochs)]
        argv += COMMON.split() + options.split()
        if args.data_dir:
            argv += ["--data-dir", args.data_dir]
        print(f"== {name}: {' '.join(argv)}", flush=True)
        records[name] = train(build_parser().parse_args(argv))
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
    out.with_suffix(".json").write_text(json.dumps(records, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
