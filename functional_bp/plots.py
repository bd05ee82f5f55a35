"""Figures of the records `functional_bp.runs` returns, written to files (matplotlib's Agg
backend: no display needed).

matplotlib is imported inside each function: it is in the optional ``cli`` extra
(``pip install "functional_bp[cli]"``), and importing this module does not need it.
Every figure is written atomically, in the format the path's suffix names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from functional_bp._files import atomic_write
from functional_bp.runs import series

__all__ = [
    "MNIST_NOISE_SCALE",
    "alignment",
    "feedback_alignment",
    "figure_format",
    "history",
    "layer_norms",
    "sweep",
    "training",
]

MNIST_NOISE_SCALE = 900
"""The simple noise scale McCandlish et al. (2018) report for MNIST."""


def _pyplot():
    """matplotlib.pyplot drawing to files only."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError('plots need matplotlib: pip install "functional_bp[cli]"') from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_format(path: str | os.PathLike) -> str:
    """The format a figure is written in: its suffix, if matplotlib can write it.

    Raises:
      ValueError: the suffix is not a format matplotlib writes (the formats listed).
    """
    _pyplot()
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in supported:
        raise ValueError(
            f"--plot {path}: the suffix {('.' + suffix) if suffix else '(none)'} is not a "
            f"figure format; use one of {', '.join('.' + s for s in sorted(supported))}"
        )
    return suffix


def _save(fig, path: str | os.PathLike) -> Path:
    """Writes the figure atomically and closes it."""
    plt = _pyplot()
    fig.tight_layout()
    try:
        return atomic_write(
            path, lambda f: fig.savefig(f, format=figure_format(path), dpi=100), "--plot"
        )
    finally:
        plt.close(fig)


def _finish(axes, fig, title: str, path) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def history(rows: list[dict], path: str | os.PathLike, *, title: str, eval_name: str) -> Path:
    """One run: training and evaluation cost and accuracy per epoch, and the noise scale
    when the rows have it."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in rows]
    tracked = "noise_scale" in rows[0]
    fig, axes = plt.subplots(1, 2 + tracked, figsize=(5 * (2 + tracked), 4))
    cost_ax, acc_ax = axes[:2]
    if tracked:
        axes[2].semilogy(epochs, [row["noise_scale"] for row in rows], label="B_simple")
        axes[2].axhline(
            MNIST_NOISE_SCALE, color="gray", ls="--", label="McCandlish et al. 2018, MNIST"
        )
        axes[2].set(xlabel="epoch", ylabel="B_simple", title="gradient noise scale")
    for prefix, label in (("train", "training"), ("eval", eval_name)):
        cost_ax.plot(epochs, [row[f"{prefix}_cost"] for row in rows], label=label)
        acc_ax.plot(epochs, [100 * row[f"{prefix}_accuracy"] for row in rows], label=label)
    cost_ax.set(xlabel="epoch", ylabel="cost", title="cost")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    return _finish(axes, fig, title, path)


def sweep(record: dict, path: str | os.PathLike, *, title: str) -> Path:
    """Several runs: per learning rate, the mean evaluation cost and accuracy over the
    seeds, with a band from the worst run to the best (diverged runs left out)."""
    plt = _pyplot()
    fig, (cost_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for lr in sorted({run["learning_rate"] for run in record["runs"]}):
        runs = [r for r in record["runs"] if r["learning_rate"] == lr and not r["diverged"]]
        if not runs or not runs[0]["history"]:
            continue
        epochs = [row["epoch"] for row in runs[0]["history"]]
        for ax, key, scale in ((cost_ax, "eval_cost", 1), (acc_ax, "eval_accuracy", 100)):
            values = scale * np.array([[row[key] for row in r["history"]] for r in runs])
            line = ax.plot(epochs, values.mean(axis=0), label=f"eta {lr:g} ({len(runs)} runs)")
            ax.fill_between(
                epochs, values.min(axis=0), values.max(axis=0), alpha=0.2, color=line[0].get_color()
            )
    name = record["eval_set"]
    cost_ax.set(xlabel="epoch", ylabel="cost", title=f"{name} cost")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{name} accuracy")
    return _finish(
        (cost_ax, acc_ax), fig, f"{title}: mean over seeds, band from worst to best", path
    )


def training(record: dict, path: str | os.PathLike, *, title: str) -> Path:
    """`history` for the record of one run, `sweep` for several."""
    if "runs" in record:
        return sweep(record, path, title=title)
    return history(record["history"], path, title=title, eval_name=record["eval_set"])


def layer_norms(records: dict[str, dict], path: str | os.PathLike, sizes: list[int]) -> Path:
    """||delta^l|| per layer across training (epoch 0 first), one panel per record: the
    book's chapter 5 picture of vanishing gradients. Each record tracked "layer-norms"."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(records), figsize=(5 * len(records), 4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (name, record) in zip(axes, records.items()):
        per_layer = series(record, "delta_norms")  # (epochs + 1, L)
        for l in range(per_layer.shape[1]):
            ax.semilogy(per_layer[:, l], label=f"layer {l + 1}")
        ax.set(title=f"{name} hidden layers", xlabel="epoch", ylabel="||delta^l||")
    return _finish(axes, fig, f"speed of learning per layer, {sizes}", path)


def alignment(records: dict[str, dict], path: str | os.PathLike, sizes: list[int]) -> Path:
    """Lillicrap et al.'s figure: per hidden layer, the angle between each rule's update
    and the gradient, and between B and w^{l+1}, across training (epoch 0 first)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    panels = ((axes[0], "update_angles", "update vs gradient"), (axes[1], "feedback_angles"))
    for ax, field, *name in panels:
        for rule, record in records.items():
            per_layer = series(record, field)
            for l in range(len(sizes) - 2):
                ax.plot(per_layer[:, l], label=f"{rule}, hidden layer {l + 1}")
        ax.axhline(90, color="gray", lw=0.5)
        ax.set(title=name[0] if name else "B vs w^{l+1}", xlabel="epoch", ylabel="degrees")
    return _finish(axes, fig, f"alignment with backprop, {sizes}", path)


def feedback_alignment(results: list[dict], path: str | os.PathLike) -> Path:
    """scripts/feedback_alignment.py's figure: each rule's test error (mean over seeds,
    band from worst to best) and, for fa and kp on one hidden layer, the alignment of
    hidden layer 1. ``results``: ``{"rule", "sizes", "record"}`` per rule."""
    plt = _pyplot()
    fig, (err_ax, angle_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for result in results:
        runs = [run for run in _runs(result["record"]) if not run["diverged"]]
        epochs = [row["epoch"] for row in runs[0]["history"]]
        errors = 100 * (
            1 - np.array([[row["eval_accuracy"] for row in r["history"]] for r in runs])
        )
        line = err_ax.plot(
            epochs, errors.mean(axis=0), label=f"{result['rule']} {result['sizes'][1:-1]}"
        )
        err_ax.fill_between(
            epochs, errors.min(axis=0), errors.max(axis=0), alpha=0.2, color=line[0].get_color()
        )
        if result["rule"] in ("fa", "kp") and len(result["sizes"]) == 3:
            update = np.mean([series(r, "update_angles")[:, 0] for r in runs], axis=0)
            between = np.mean([series(r, "feedback_angles")[:, 0] for r in runs], axis=0)
            angle_ax.plot(update, label=f"{result['rule']}: update of layer 1 vs gradient")
            angle_ax.plot(between, ls="--", label=f"{result['rule']}: B vs w^2")
    angle_ax.axhline(90, color="gray", lw=0.5)
    err_ax.set(xlabel="epoch", ylabel="test error (%)", title="MNIST test error (mean, band)")
    err_ax.set_ylim(0, 6)
    angle_ax.set(xlabel="epoch", ylabel="degrees", title="alignment, one hidden layer")
    return _finish((err_ax, angle_ax), fig, "feedback alignment and its relatives", path)


def _runs(record: dict) -> list[dict]:
    return record["runs"] if "runs" in record else [record]
