"""The papers' figures from runs' saved data (matplotlib): one function per figure, runs side by side.

Each function takes {run label: data} and returns a Figure, so tests can read the plotted values and a
notebook shows it inline. Commands that only write files call `files_only()` first.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Tuple

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.transforms import Bbox
import numpy as np

from aero_jax.entropy import ENTROPY_RANGE_EDGES

RANGE_LABELS = tuple(f"[{lo:g}M, {hi:g}M{']' if hi == 1 else ')'}"
                     for lo, hi in zip(ENTROPY_RANGE_EDGES[:-1], ENTROPY_RANGE_EDGES[1:]))


def _side_by_side(count: int, width: float = 5.5, height: float = 4.0, max_columns: Optional[int] = None):
    """`count` panels in a row, or in rows of `max_columns` (empty grid cells removed)."""
    columns = min(count, max_columns or count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.remove()
    return fig, list(axes.flat[:count])


def _joint_range(matrices) -> Tuple[float, float]:
    """The smallest and largest finite value over every matrix together (0, 0 when none is finite)."""
    values = np.concatenate([np.asarray(m, float).reshape(-1) for m in matrices])
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def heatmaps(matrices: Dict[str, np.ndarray], *, title: str, value_label: str, fmt: str = "{:.2f}",
             vmin: Optional[float] = None, vmax: Optional[float] = None):
    """One layers x heads heatmap per run, the value printed in every cell; every panel shares one colour scale
    (by default the joint min..max), so one colour means one value across runs."""
    low, high = _joint_range(matrices.values())
    vmin, vmax = low if vmin is None else vmin, high if vmax is None else vmax
    fig, axes = _side_by_side(len(matrices))
    for ax, (label, matrix) in zip(axes, matrices.items()):
        matrix = np.asarray(matrix, float)
        image = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax)
        for (row, col), value in np.ndenumerate(matrix):
            ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=7,
                    color="white" if image.norm(value) < 0.5 else "black")  # readable on viridis' dark and light
        ax.set(title=label, xlabel="head", ylabel="layer", xticks=range(matrix.shape[1]),
               yticks=range(matrix.shape[0]))
        fig.colorbar(image, ax=ax, label=value_label)
    fig.suptitle(f"{title}\n(one colour scale for every panel: {fmt.format(vmin)} to {fmt.format(vmax)} "
                 f"{value_label})", fontsize=10)
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


def versus_paper(ours: Dict[str, float], paper: Dict[str, Optional[float]], *, title: str, value_label: str,
                 ours_label: str = "this study", paper_label: str = "the papers", fmt: str = "{:.3g}",
                 ours_extra: Optional[Dict[str, float]] = None, extra_label: str = ""):
    """Our measured value beside the papers' published one for each label (grouped bars, values on top), so a
    claim's figure shows both; a label of either side only (no published value, or no measurement here: a run
    that diverged or never evaluated) says so in the empty slot."""
    series = [(ours_label, ours, "C0")] + ([(extra_label, ours_extra, "C2")] if ours_extra is not None else []) + [
        (paper_label, paper, "0.6")]
    labels = list(dict.fromkeys([*ours, *paper]))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(2.0 + 0.6 * len(series) * len(labels), 4.0))
    for i, (name, values, color) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        shown = [(x + offset, values[label]) for x, label in enumerate(labels)
                 if values.get(label) is not None and np.isfinite(values[label])]
        ax.bar([x for x, _ in shown], [v for _, v in shown], width, color=color, label=name)
        for x, value in shown:
            ax.annotate(fmt.format(value), (x, value), textcoords="offset points", xytext=(0, 2), ha="center",
                        fontsize=7)
        for x, label in enumerate(labels):
            if values is not ours_extra and (values.get(label) is None or not np.isfinite(values[label])):
                ax.text(x + offset, 0, "no published value" if values is paper else "not measured", rotation=90,
                        ha="center", va="bottom", fontsize=6, color="0.4")
    ax.margins(y=0.12)  # room for the values printed on the tallest bars
    ax.set(xlim=(-0.5, len(labels) - 0.5), xticks=range(len(labels)), xticklabels=labels, ylabel=value_label,
           title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _place_labels(ax, points: List[Tuple[str, float, float]], step_pt: float = 2.0, pad_px: float = 2.0):
    """Name every point beside it, top to bottom, pushing a label down or up in `step_pt` steps until its box
    clears every marker and every label placed before (deterministic); a moved label gets a leader line."""
    fig = ax.figure
    fig.canvas.draw()  # final limits and layout: the boxes below are where the labels will be drawn
    renderer, px_per_pt = fig.canvas.get_renderer(), fig.dpi / 72
    radius = plt.rcParams["lines.markersize"] / 2 * px_per_pt  # a scatter marker's default size
    placed = [Bbox.from_bounds(px - radius, py - radius, 2 * radius, 2 * radius)
              for px, py in ax.transData.transform([(x, y) for _, x, y in points])]
    for name, x, y in sorted(points, key=lambda p: -p[2]):
        probe = ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7)
        box = probe.get_window_extent(renderer).padded(pad_px)
        probe.remove()
        dy = next(d for k in itertools.count() for d in (-k * step_pt, k * step_pt)
                  if not any(box.translated(0, d * px_per_pt).overlaps(other) for other in placed))
        placed.append(box.translated(0, dy * px_per_pt))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 3 + dy), fontsize=7,
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="0.4", relpos=(0, 0.5), shrinkA=0, shrinkB=3)
                    if dy else None)


def trade_off(points: List[Tuple[str, float, float]], front: List[str], *, x_label: str):
    """Perplexity against a cost, one labelled point per run (labels never overlap), the Pareto front joined by a
    line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, x, y in points:
        ax.scatter([x], [y], color="C3" if name in front else "C0", zorder=3)
    frontier = sorted((x, y) for name, x, y in points if name in front)
    if len(frontier) > 1:
        ax.plot(*zip(*frontier), color="C3", linestyle="--", label="Pareto front")
        ax.legend()
    ax.margins(x=0.15, y=0.1)  # room for the labels right of the outermost points
    ax.set(xlabel=x_label, ylabel="validation perplexity", title="Perplexity against private-inference cost")
    fig.tight_layout()
    _place_labels(ax, points)
    return fig


def intervention(entropy_by_scale: Dict[float, np.ndarray], *, title: str):
    """Head entropy against the temperature scale factor c ({c: [layers, heads]}): one panel per layer (rows of
    up to 6), one line per head, so every head's entropy is seen moving with c."""
    scales = sorted(entropy_by_scale)
    entropy_CxLxH = np.stack([np.asarray(entropy_by_scale[c], float) for c in scales])
    fig, axes = _side_by_side(entropy_CxLxH.shape[1], width=3.6, height=3.2, max_columns=6)
    for layer, ax in enumerate(axes):
        for head in range(entropy_CxLxH.shape[2]):
            ax.plot(scales, entropy_CxLxH[:, layer, head], marker="o", markersize=3, label=f"head {head}")
        ax.set_xscale("log", base=2)
        ax.set(title=f"layer {layer}", xlabel="temperature scale c", ylabel="head entropy (nats)", xticks=scales,
               xticklabels=[f"{c:g}" for c in scales])
    axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def files_only() -> None:
    """Draw without a display (Agg): figures go to files, never to a window."""
    matplotlib.use("Agg")


def save(fig, path: str) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
