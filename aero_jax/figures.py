"""The papers' figures from runs' saved data (matplotlib): one function per figure, runs side by side.

Each function takes {run label: data} and returns a Figure, so tests can read the plotted values and a
notebook shows it inline. Commands that only write files call `files_only()` first.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from aero_jax.entropy import ENTROPY_RANGE_EDGES

RANGE_LABELS = tuple(f"[{lo:g}M, {hi:g}M{']' if hi == 1 else ')'}"
                     for lo, hi in zip(ENTROPY_RANGE_EDGES[:-1], ENTROPY_RANGE_EDGES[1:]))


def _side_by_side(count: int, width: float = 5.5, height: float = 4.0):
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return fig, list(axes[0])


def heatmaps(matrices: Dict[str, np.ndarray], *, title: str, value_label: str, fmt: str = "{:.2f}"):
    """One layers x heads heatmap per run, the value printed in every cell."""
    fig, axes = _side_by_side(len(matrices))
    for ax, (label, matrix) in zip(axes, matrices.items()):
        matrix = np.asarray(matrix, float)
        image = ax.imshow(matrix, cmap="viridis", aspect="auto")
        for (row, col), value in np.ndenumerate(matrix):
            ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=7, color="white")
        ax.set(title=label, xlabel="head", ylabel="layer", xticks=range(matrix.shape[1]),
               yticks=range(matrix.shape[0]))
        fig.colorbar(image, ax=ax, label=value_label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def range_shares(shares: Dict[str, np.ndarray], *, title: str,
                 legend_title: str = "entropy range (M: largest head entropy)"):
    """Share of heads in each entropy range, one bar group per run."""
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(shares), 3.8))
    width = 0.8 / len(RANGE_LABELS)
    for i, label in enumerate(RANGE_LABELS):
        values = [100 * np.asarray(s)[i] for s in shares.values()]
        ax.bar(np.arange(len(shares)) + (i - 1.5) * width, values, width, label=label)
    ax.set(xticks=range(len(shares)), xticklabels=list(shares), ylabel="share of heads (%)", title=title)
    ax.legend(title=legend_title, fontsize=7)
    fig.tight_layout()
    return fig


def per_layer_curves(series: Dict[str, Tuple[List[int], np.ndarray]], *, title: str, value_label: str):
    """One panel per run: a line per layer over training steps (values [steps, layers])."""
    fig, axes = _side_by_side(len(series))
    for ax, (label, (steps, values)) in zip(axes, series.items()):
        values = np.asarray(values, float)
        for layer in range(values.shape[1]):
            ax.plot(steps, values[:, layer], label=f"layer {layer}")
        ax.set(title=label, xlabel="training step", ylabel=value_label)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def temperature_summary(temperatures: Dict[str, np.ndarray], *, title: str):
    """Learned temperatures t [layers, heads, positions]: mean over positions per head, with the range."""
    fig, axes = _side_by_side(len(temperatures))
    for ax, (label, t_LxHxT) in zip(axes, temperatures.items()):
        t = np.asarray(t_LxHxT, float)
        layers = np.arange(t.shape[0])
        for head in range(t.shape[1]):
            ax.errorbar(layers + 0.08 * head, t[:, head].mean(-1),
                        yerr=[t[:, head].mean(-1) - t[:, head].min(-1), t[:, head].max(-1) - t[:, head].mean(-1)],
                        fmt="o", capsize=2, label=f"head {head}")
        ax.set(title=label, xlabel="layer", ylabel="temperature t (mean, min-max over positions)", yscale="log",
               xticks=layers)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def validation_curves(curves: Dict[str, List[Tuple[List[int], List[float]]]], *, title: str):
    """Validation perplexity over training, one line per run: the mean over its seeds, the range shaded."""
    fig, ax = plt.subplots(figsize=(9.0, 4.8))
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(curves), 2)))  # one distinct colour per run
    for color, (label, seeds) in zip(colors, curves.items()):
        length = min(len(steps) for steps, _ in seeds)
        steps = np.asarray(seeds[0][0][:length])
        values = np.asarray([v[:length] for _, v in seeds], float)
        ax.plot(steps, values.mean(0), marker="o", markersize=3, label=label, color=color)
        if len(seeds) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.2)
    ax.set(xlabel="training step", ylabel="validation perplexity", yscale="log", title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def temperature_evolution(snapshots: Dict[int, np.ndarray], *, title: str):
    """Learned temperatures over training: one panel per layer, t (mean over heads) against the query position,
    one line per saved step."""
    steps = sorted(snapshots)
    num_layers = np.asarray(snapshots[steps[0]]).shape[0]
    fig, axes = _side_by_side(num_layers, width=4.0, height=3.5)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(steps)))
    for layer, ax in enumerate(axes):
        for step, color in zip(steps, colors):
            t_HxT = np.asarray(snapshots[step], float)[layer]
            ax.plot(np.arange(t_HxT.shape[1]), t_HxT.mean(0), color=color, label=f"step {step}")
        ax.set(title=f"layer {layer}", xlabel="query position", ylabel="t (mean over heads)", yscale="log")
    axes[-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def bars(values: Dict[str, float], *, title: str, value_label: str):
    """One labelled bar per entry, its value printed on top."""
    fig, ax = plt.subplots(figsize=(1.5 + 1.4 * len(values), 3.8))
    positions = np.arange(len(values))
    ax.bar(positions, list(values.values()), color="C0")
    for x, value in zip(positions, values.values()):
        ax.annotate(f"{value:.3f}", (x, value), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax.set(xticks=positions, xticklabels=list(values), ylabel=value_label, title=title)
    fig.tight_layout()
    return fig


def trade_off(points: List[Tuple[str, float, float]], front: List[str], *, x_label: str):
    """Perplexity against a cost, one labelled point per run, the Pareto front joined by a line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, x, y in points:
        on_front = name in front
        ax.scatter([x], [y], color="C3" if on_front else "C0", zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    frontier = sorted((x, y) for name, x, y in points if name in front)
    if len(frontier) > 1:
        ax.plot(*zip(*frontier), color="C3", linestyle="--", label="Pareto front")
        ax.legend()
    ax.set(xlabel=x_label, ylabel="validation perplexity", title="Perplexity against private-inference cost")
    fig.tight_layout()
    return fig


def files_only() -> None:
    """Draw without a display (Agg): figures go to files, never to a window."""
    matplotlib.use("Agg")


def save(fig, path: str) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
