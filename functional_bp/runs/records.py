"""What a run leaves: its record (a JSON-able dict), the summaries in it, and the files.

The record of one run::

    {"config": {...}, "eval_set": "test", "history": [row, ...], "diverged": None,
     "final_accuracy": ..., "peak_accuracy": ..., "peak_epoch": ...,
     "median_train_seconds_per_epoch": ..., "first_epoch_seconds": ...}

with one row per epoch (``epoch``, ``train_seconds``, ``train_cost``,
``train_accuracy``, ``eval_cost``, ``eval_accuracy``, and what is tracked:
``update_angles`` and ``feedback_angles`` under a rule, ``noise_scale``,
``noise_trace``, ``noise_grad_norm_sq``, ``delta_norms``, ``weight_grad_norms``; under
dp, ``epsilon``: the privacy spent after that epoch) and, when something is tracked,
``initial``: the tracked values before training. A private run (dp) also has
``epsilon`` (after its last epoch) and ``privacy``: the clip, the noise_multiplier sigma
trained with, delta, the accountant, the sample_rate q, steps_per_epoch, max_batch and
the epsilon after all the config's epochs. Several runs
have ``runs``: one such record per run (without ``config``, with ``seed`` and
``learning_rate``), and ``summary``: per learning rate the mean, std and best accuracies.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from functional_bp import io
from functional_bp._files import atomic_write

__all__ = [
    "Epoch",
    "Interrupted",
    "Result",
    "per_run",
    "run_path",
    "save_params",
    "series",
    "strict_json",
    "summary",
    "sweep_summary",
    "write_json",
]


class Epoch(NamedTuple):
    """What `train` passes its ``on_epoch`` callback after every epoch.

    Attributes:
      epoch: the epoch just finished, 1 first.
      seconds: its training time (compilation included in the first).
      rows: the history row of each run.
      diverged: ``{run index: message}`` of every run that has diverged so far.
    """

    epoch: int
    seconds: float
    rows: list[dict]
    diverged: dict[int, str]


class Result(NamedTuple):
    """What `train` returns.

    Attributes:
      record: the JSON-able record (module docstring).
      params: the network's params after training; with several runs, every leaf has a
        leading run axis.
      feedback: a rule's feedback matrices likewise (None for "bp" and "sign").
    """

    record: dict
    params: Any
    feedback: Any


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `train`: ``result`` holds the epochs that finished."""

    def __init__(self, result: Result):
        super().__init__("training interrupted")
        self.result = result


def summary(history: list[dict]) -> dict:
    """Final and peak accuracy, and the time per epoch, of one run's history (and the
    epsilon spent, of a private one)."""
    if not history:
        return {}
    times = [row["train_seconds"] for row in history]
    best = max(history, key=lambda row: row["eval_accuracy"])
    private = {"epsilon": history[-1]["epsilon"]} if "epsilon" in history[-1] else {}
    return dict(
        **private,
        final_accuracy=history[-1]["eval_accuracy"],
        peak_accuracy=best["eval_accuracy"],
        peak_epoch=best["epoch"],
        # The first epoch includes compilation.
        median_train_seconds_per_epoch=statistics.median(times[1:] or times),
        first_epoch_seconds=times[0],
    )


def sweep_summary(runs: list[dict], learning_rates) -> list[dict]:
    """Per learning rate, over the runs that did not diverge: the mean, std (ddof 1) and
    best final accuracy and the mean and best peak accuracy."""
    rows = []
    for lr in learning_rates:
        done = [r for r in runs if r["learning_rate"] == lr and not r["diverged"] and r["history"]]
        if not done:
            continue
        finals = [r["final_accuracy"] for r in done]
        peaks = [r["peak_accuracy"] for r in done]
        rows.append(
            dict(
                learning_rate=lr,
                runs=len(done),
                final_mean=float(np.mean(finals)),
                final_std=float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                final_best=max(finals),
                peak_mean=float(np.mean(peaks)),
                peak_best=max(peaks),
            )
        )
    return rows


def per_run(record: dict) -> list[dict]:
    """The record of each run: ``record["runs"]``, or ``[record]`` for one run."""
    return record["runs"] if "runs" in record else [record]


def series(record: dict, field: str) -> np.ndarray:
    """A tracked field of one run, epoch 0 (before training) first: shape (epochs + 1,
    ...)."""
    rows = [record["initial"], *record["history"]]
    return np.array([row[field] for row in rows], dtype=float)


def strict_json(value):
    """NaN and infinities (of a diverged run) as None: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: str | os.PathLike, record: dict) -> Path:
    """Writes the record as strict JSON, atomically (an earlier file stays intact if the
    write fails)."""
    text = json.dumps(strict_json(record), indent=2, allow_nan=False)
    return atomic_write(path, lambda f: f.write(text.encode()), "--json")


def run_path(path: str | os.PathLike, seed: int, learning_rate: float) -> Path:
    """Where `save_params` writes one run of several: NAME-seed{S}-lr{LR}.npz."""
    path = Path(path)
    return path.with_name(f"{path.stem}-seed{seed}-lr{learning_rate:g}{path.suffix}")


def save_params(path: str | os.PathLike, result: Result, config) -> list[Path]:
    """Writes the params (and a rule's feedback) with the network's description.

    One run goes to ``path``; several go one file per run to `run_path`, except the runs
    that diverged. Returns the paths written."""
    meta = dict(
        activation=config.activation,
        output_activation=config.output_activation,
        cost=config.cost,
        dataset=config.dataset,
        rule=config.rule,
    )
    if config.layers is not None:  # the network's layer types, as --layers gives them
        meta.update(layers=config.layers, dropout=config.dropout)
    if "runs" not in result.record:
        return [io.save_params(path, result.params, feedback=result.feedback, **meta)]
    written = []
    for r, run in enumerate(result.record["runs"]):
        if run["diverged"]:
            continue
        params, feedback = jax.tree.map(lambda a, r=r: a[r], (result.params, result.feedback))
        target = run_path(path, run["seed"], run["learning_rate"])
        extra = dict(seed=run["seed"], learning_rate=run["learning_rate"])
        written.append(io.save_params(target, params, feedback=feedback, **meta, **extra))
    return written
