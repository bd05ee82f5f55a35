"""What a training job does, for the command line, the scripts and you: a `Config`,
`check` (refuses what cannot train, before any data is loaded), `load`, `train` (one
run, or every seed and learning rate in one program), the record it returns (per-epoch
history, summaries, tracked statistics) and the files it writes. Nothing here prints:
progress goes through ``train``'s ``on_epoch`` callback.

Example::

    from functional_bp import runs

    config = runs.Config(dataset="digits", seeds=(0, 1, 2), learning_rates=(0.5, 3.0),
                         rule="fa", track=("noise-scale",), epochs=10)
    runs.check(config)
    result = runs.train(config, runs.load(config), on_epoch=lambda e: print(e.epoch))
    for row in result.record["summary"]:
        print(row["learning_rate"], row["final_mean"], row["final_std"])
    runs.write_json("runs.json", result.record)

Private training (DP-SGD, Poisson sampling, epsilon per epoch in the history)::

    config = runs.Config(dataset="digits", dp=True, clip=1.0, target_epsilon=2.0,
                         batch_size=64, learning_rates=(0.5,), epochs=10)
"""

from functional_bp.runs.config import (
    ACCOUNTANTS,
    DATASETS,
    OPTIMIZERS,
    RULES,
    TRACKS,
    Config,
    Data,
    Privacy,
    check,
    check_outputs,
    load,
    optimizer,
    privacy_setting,
    privacy_warnings,
)
from functional_bp.runs.gradcheck import GradientReport, gradient_check, random_batch
from functional_bp.runs.loop import FEEDBACK_SEED_OFFSET, train
from functional_bp.runs.records import (
    Epoch,
    Interrupted,
    Result,
    per_run,
    run_path,
    save_params,
    series,
    strict_json,
    summary,
    sweep_summary,
    write_json,
)

__all__ = [
    "ACCOUNTANTS",
    "DATASETS",
    "FEEDBACK_SEED_OFFSET",
    "OPTIMIZERS",
    "RULES",
    "TRACKS",
    "Config",
    "Data",
    "Epoch",
    "GradientReport",
    "Interrupted",
    "Privacy",
    "Result",
    "check",
    "check_outputs",
    "gradient_check",
    "load",
    "optimizer",
    "per_run",
    "privacy_setting",
    "privacy_warnings",
    "random_batch",
    "run_path",
    "save_params",
    "series",
    "strict_json",
    "summary",
    "sweep_summary",
    "train",
    "write_json",
]
