"""Figures of a training run, from plain arrays: training curves, confusion matrix, per-class
accuracy (from :func:`octvideo.train.evaluate.confusion_matrix`). Each returns a matplotlib
``Figure`` for ``tracker.log_figure(figure, "plots/x.png")``.

Figures are made without pyplot: no display or global backend is needed (they render with Agg),
and they are freed like any object instead of staying in pyplot's figure list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure


def plot_training_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], x_label: str = "step"
) -> Figure:
    """One panel per curve: ``{"loss": (steps, values), "lr": (...), "top1": (...)}``."""
    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(7, 2.4 * len(curves)), layout="constrained")
    axes = fig.subplots(len(curves), 1, sharex=True, squeeze=False)
    for ax, (name, (xs, ys)) in zip(axes[:, 0], curves.items()):
        if len(xs) != len(ys):
            raise ValueError(f"curve {name!r}: {len(xs)} x values but {len(ys)} y values")
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(x_label)
    return fig


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> Figure:
    """Rows normalised to the share of each true class; class names shown up to 40 classes."""
    matrix = np.asarray(matrix, dtype=np.float64)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(matrix)
    size = min(4 + 0.3 * n, 20)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    if class_names is not None and n <= 40:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
    if n <= 15:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{int(value)}", ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig


def plot_per_class_accuracy(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> Figure:
    """Accuracy of each class from a confusion matrix, sorted worst first (the ones to look at)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    accuracy = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(matrix))]
    order = np.argsort(accuracy, kind="stable")
    fig = Figure(figsize=(7, max(2.5, 0.25 * len(order) + 1)), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(range(len(order)), accuracy[order])
    ax.bar_label(bars, fmt="%.2f", padding=2)
    ax.set_yticks(range(len(order)), [names[i] for i in order])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 accuracy")
    ax.grid(axis="x", alpha=0.3)
    return fig
