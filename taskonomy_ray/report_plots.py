"""Figures of the HTML report (steps 3-5): affinity heat maps, the task tree, novel tasks, samples.

Arrays in, PNG out, with matplotlib's Agg canvas (no pyplot state). The numbers are computed in
`report` / `report_sweep`; these functions only draw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from . import tasks

# One colour per task group (TaskSpec.group), for tick labels and tree leaves.
GROUP_COLOURS = {"2d": "#1f77b4", "3d": "#d62728", "low_dim_geometric": "#2ca02c",
                 "semantic": "#9467bd", "random": "#7f7f7f"}
OTHER_COLOUR = "#000000"  # a name outside the registry (e.g. the published class_object_selected)


def group_colour(name: str) -> str:
    """The colour of a task's group; black for names outside the dictionary."""
    spec = tasks.BY_NAME.get(name)
    return GROUP_COLOURS.get(spec.group, OTHER_COLOUR) if spec else OTHER_COLOUR


def _colour_ticks(labels: Sequence[Any]) -> None:
    for label in labels:
        label.set_color(group_colour(label.get_text()))


def _legend_handles(names: Sequence[str]) -> list[Patch]:
    """One patch per task group among `names` (a group with no task drawn is not listed)."""
    groups = {tasks.BY_NAME[n].group for n in names if n in tasks.BY_NAME}
    return [Patch(color=c, label=g.replace("_", " ")) for g, c in GROUP_COLOURS.items()
            if g in groups]


def plot_affinity_matrices(targets: Sequence[str], sources: Sequence[str], quality: np.ndarray,
                           affinity: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Two heat maps of first-order transfers, rows targets and columns sources.

    Left: Quality, the raw win rate of each transfer against the target's gold network (before
    AHP). Right: the AHP affinity (log colour scale: affinities span orders of magnitude). NaN
    cells (a transfer not measured) are left grey.
    """
    fig = Figure(figsize=(2.2 + 0.62 * len(sources), 1.6 + 0.28 * len(targets)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    positive = affinity[np.isfinite(affinity) & (affinity > 0)]
    lo, hi = (positive.min(), positive.max()) if positive.size else (1e-3, 1.0)
    panels: list[tuple[np.ndarray, str, dict[str, Any]]] = [
        (quality, "Quality: win rate vs gold (before AHP)", {"vmin": 0.0, "vmax": 1.0}),
        (affinity, "AHP affinity (after, log scale)",
         {"norm": LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001))})]
    for ax, (values, name, scale) in zip(axes, panels):
        ax.set_facecolor("#dddddd")
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", **scale)
        ax.set_xticks(range(len(sources)), sources, rotation=90, fontsize=7)
        ax.set_yticks(range(len(targets)), targets, fontsize=7)
        _colour_ticks(ax.get_xticklabels())
        _colour_ticks(ax.get_yticklabels())
        ax.set(xlabel="source", ylabel="target", title=name)
        ax.title.set_fontsize(9)
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    handles = _legend_handles([*targets, *sources])
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)


def plot_task_tree(names: Sequence[str], icoord: Sequence[Sequence[float]],
                   dcoord: Sequence[Sequence[float]], leaves: Sequence[int], path: str | Path,
                   title: str = "") -> Path:
    """Draw a dendrogram from scipy's `dendrogram(..., no_plot=True)` coordinates.

    `leaves` are indices into `names` in drawing order (leaf i sits at x = 5 + 10 i).
    """
    fig = Figure(figsize=(max(6.0, 0.42 * len(names) + 1.5), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for xs, ys in zip(icoord, dcoord):
        ax.plot(xs, ys, color="#444444", linewidth=1.0)
    ax.set_xticks([5.0 + 10.0 * i for i in range(len(leaves))],
                  [names[i] for i in leaves], rotation=90, fontsize=8)
    _colour_ticks(ax.get_xticklabels())
    ax.set_xlim(0, 10.0 * len(leaves))
    ax.set_ylabel("distance between transfer-out patterns", fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = _legend_handles(names)
    if handles:
        ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper right")
    ax.set_title(title or "task similarity tree", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_novel_tasks(targets: Sequence[str], orders: Sequence[int], gain: np.ndarray,
                     quality: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Gain and Quality of each novel task's all-for-one transfer, rows targets, columns orders.

    Cells carry their value (0.5 = break-even against scratch / as good as the gold network);
    a target with no transfer of an order is grey.
    """
    fig = Figure(figsize=(2.4 + 1.1 * len(orders), 1.4 + 0.3 * len(targets)), dpi=100)
    FigureCanvasAgg(fig)
    for ax, values, name in zip(fig.subplots(1, 2), (gain, quality),
                                ("Gain: win rate vs scratch", "Quality: win rate vs gold")):
        ax.set_facecolor("#dddddd")
        image = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0.0, vmax=1.0,
                          aspect="auto")
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(orders)), [f"order {k}" for k in orders], fontsize=7)
        ax.set_yticks(range(len(targets)), targets, fontsize=7)
        _colour_ticks(ax.get_yticklabels())
        ax.set_title(name, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_samples(task: str, rows: Sequence[Sequence[np.ndarray | str]], path: str | Path,
                 columns: Sequence[str] = ("input", "gold prediction", "ground truth")) -> Path:
    """A grid of test samples: one row per image, one panel per column.

    A panel is an (H, W, 3) float image in [0, 1] or a short text (for vector and class outputs).
    """
    n = max(1, len(rows))
    fig = Figure(figsize=(1.9 * len(columns), 1.9 * n + 0.4), dpi=90)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(n, len(columns), squeeze=False))
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if isinstance(panel, str):
                ax.text(0.5, 0.5, panel, ha="center", va="center", fontsize=7, wrap=True,
                        family="monospace", transform=ax.transAxes)
            else:
                ax.imshow(np.clip(panel, 0.0, 1.0), interpolation="nearest")
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
    fig.suptitle(task, fontsize=10, color=group_colour(task))
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
