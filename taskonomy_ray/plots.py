"""Figures of steps 4-5: the supervision-budget curve and the taxonomy hypergraph.

Data in, file out: each function takes solved taxonomies (or their JSON dicts) and a path, so the
command line and the HTML report draw the same pictures. Drawing uses matplotlib's Agg canvas
directly (no pyplot state, no display) and the DOT text needs no Graphviz to be written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .errors import ConfigError
from .taxonomy import Taxonomy

# Fills in greys: the sources' own colours (outlines, edges) must not read as a fill's meaning.
SUPERVISED_TARGET = "#b3b3b3"  # a target that is itself supervised
SUPERVISED_SOURCE = "#e8e8e8"  # a supervised task that only serves others
TRANSFER_TARGET = "#ffffff"
ROW = 8  # transfer targets per row of the drawing
# One colour per supervised source (its box's outline and its edges): matplotlib's tab10 without
# its grey; black is the hyperedges' own. Beyond nine sources colours repeat.
SOURCE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#bcbd22", "#17becf")
EDGE_ALPHA = 0.8
EDGE_TOP = 0.9  # edges leave a supervised box at its bottom, not over its name


def _as_dict(item: Taxonomy | Mapping[str, Any]) -> Mapping[str, Any]:
    return item.to_json() if isinstance(item, Taxonomy) else item


def plot_budget_curve(points: Sequence[Taxonomy | Mapping[str, Any]], path: str | Path,
                      title: str | None = None) -> Path:
    """Objective, mean Gain and mean Quality against the budget, one line per maximum order.

    `points` are solved taxonomies or their `to_json()` dicts (keys budget, max_order,
    objective, gain, quality).
    """
    rows = sorted((_as_dict(p) for p in points), key=lambda d: (d["max_order"], d["budget"]))
    if not rows:
        raise ConfigError("no budget-curve points to plot; solve at least one budget")
    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for k, order in enumerate(sorted({d["max_order"] for d in rows})):
        line = [d for d in rows if d["max_order"] == order]
        b, color = [d["budget"] for d in line], f"C{k}"
        # Lower orders drawn wider: where a higher order adds nothing the lines coincide, and
        # each stays visible around the next.
        style = {"color": color, "markersize": max(9 - 2.5 * k, 3), "linewidth": max(3 - k, 1)}
        left.plot(b, [d["objective"] for d in line], marker="o", label=f"order <= {order}",
                  **style)
        right.plot(b, [d["gain"] for d in line], marker="o", label=f"Gain, order <= {order}",
                   **style)
        right.plot(b, [d["quality"] for d in line], marker="s", linestyle="--",
                   label=f"Quality, order <= {order}", **style)
    for ax in (left, right):  # budgets are whole tasks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set(xlabel="supervision budget", ylabel="objective (sum of weights)",
             title="BIP objective")
    right.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    right.set(xlabel="supervision budget", ylabel="mean win rate", ylim=(0, 1),
              title="mean Gain (vs scratch) and Quality (vs gold)")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def taxonomy_dot(taxonomy: Taxonomy | Mapping[str, Any], title: str | None = None) -> str:
    """Graphviz DOT text of a taxonomy: supervised tasks filled, k-source transfers as hyperedges.

    A transfer of order > 1 goes through a junction point, so its sources join before the one
    arrow into the target; arrows are labelled with the transfer's weight.
    """
    d = _as_dict(taxonomy)
    targets = {a["target"] for a in d["transfers"]}
    title = title or _title(d)
    lines = ["digraph taxonomy {", "  rankdir=TB;", f'  label="{title}"; labelloc=t;',
             '  node [fontname="Helvetica", fontsize=10];']
    for name in d["supervised"]:
        color = SUPERVISED_TARGET if name in targets else SUPERVISED_SOURCE
        lines.append(f'  "{name}" [shape=box, style="filled,bold", fillcolor="{color}", '
                     f'label="{name}\\n(supervised)"];')
    if d["supervised"]:
        lines.append("  { rank=same; " + " ".join(f'"{n}";' for n in d["supervised"]) + " }")
    for a in d["transfers"]:
        if a["supervised"]:
            continue
        t, weight = a["target"], f'{a["weight"]:.3f}'
        lines.append(f'  "{t}" [shape=ellipse];')
        if len(a["sources"]) == 1:
            lines.append(f'  "{a["sources"][0]}" -> "{t}" [label="{weight}"];')
            continue
        hub = f"hyperedge_{t}"
        lines.append(f'  "{hub}" [shape=point, width=0.08];')
        for s in a["sources"]:
            lines.append(f'  "{s}" -> "{hub}" [arrowhead=none];')
        lines.append(f'  "{hub}" -> "{t}" [label="{weight}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(taxonomy: Taxonomy | Mapping[str, Any], path: str | Path) -> Path:
    """Write `taxonomy_dot` to `path` (render elsewhere with `dot -Tpng`)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(taxonomy_dot(taxonomy))
    return out


def draw_taxonomy(taxonomy: Taxonomy | Mapping[str, Any], path: str | Path,
                  title: str | None = None) -> Path:
    """Draw a taxonomy as a two-layer hypergraph PNG with matplotlib (no system Graphviz).

    Supervised tasks sit on the top row (mid grey if also a target, light grey if only a source);
    transfer targets below, ordered by where their sources are to limit crossings. Each source
    has its own colour, on its box's outline and on every edge it starts, and edges are drawn
    over the boxes: an edge passing a box on its way to a lower row cannot be read as leaving
    it. A transfer of order > 1 is drawn as a hyperedge: its sources meet in a black junction.
    """
    return _save(taxonomy_figure(taxonomy, title), path)


def taxonomy_figure(taxonomy: Taxonomy | Mapping[str, Any], title: str | None = None) -> Figure:
    """The figure `draw_taxonomy` saves."""
    d = _as_dict(taxonomy)
    targets = {a["target"] for a in d["transfers"]}
    top = list(d["supervised"])
    served = [a for a in d["transfers"] if not a["supervised"]]
    x_top = {n: float(i) for i, n in enumerate(top)}
    served.sort(key=lambda a: sum(x_top.get(s, 0.0) for s in a["sources"]) / len(a["sources"]))
    rows = [served[i:i + ROW] for i in range(0, len(served), ROW)]  # long layers wrap
    span = max([len(top), *map(len, rows), 1])
    x_top = {n: x + (span - len(top)) / 2 for n, x in x_top.items()}
    at = {}
    for r, row in enumerate(rows):
        shift = (span - len(row)) / 2 + 0.5 * (r % 2)  # stagger rows so arrows pass between
        at.update({a["target"]: (shift + i, -0.8 * r) for i, a in enumerate(row)})
    fig = Figure(figsize=(max(6.0, 1.25 * span + 1), 3.2 + 1.3 * len(rows)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colour = {n: SOURCE_COLOURS[i % len(SOURCE_COLOURS)] for i, n in enumerate(top)}
    for a in served:
        (tx, ty) = at[a["target"]]
        srcs = [s for s in a["sources"] if s in x_top]
        start, arrow = (x_top[srcs[0]], EDGE_TOP), colour[srcs[0]]
        if len(srcs) > 1:  # hyperedge: the sources meet in a junction, one arrow leaves it
            start = ((sum(x_top[s] for s in srcs) + tx) / (len(srcs) + 1), 0.55)
            arrow = "black"
            for s in srcs:
                ax.plot([x_top[s], start[0]], [EDGE_TOP, start[1]], color=colour[s], linewidth=1.1,
                        alpha=EDGE_ALPHA, zorder=4)
            ax.plot(*start, marker="o", color="black", markersize=5, zorder=5)
        ax.annotate("", xy=(tx, ty + 0.08), xytext=start, zorder=4,
                    arrowprops={"arrowstyle": "-|>", "color": arrow, "lw": 1.1,
                                "alpha": EDGE_ALPHA})
    for n, x in x_top.items():
        _node(ax, x, 1.0, n, SUPERVISED_TARGET if n in targets else SUPERVISED_SOURCE, True,
              outline=colour[n])
    for a in served:
        _node(ax, *at[a["target"]], a["target"], TRANSFER_TARGET, False)
    ax.set_xlim(-0.8, span - 0.2 + 0.5 * (len(rows) > 1))
    ax.set_ylim(-0.8 * max(len(rows) - 1, 0) - 0.35, 1.3)
    ax.axis("off")
    ax.legend(handles=[
        Patch(facecolor=SUPERVISED_TARGET, edgecolor="black", label="supervised target"),
        Patch(facecolor=SUPERVISED_SOURCE, edgecolor="black", label="supervised source only"),
        Patch(facecolor=TRANSFER_TARGET, edgecolor="black", label="served by transfer"),
        Line2D([], [], marker="o", color="black", linestyle="", label="hyperedge (order > 1)"),
    ], loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=7, frameon=False)
    ax.set_title(title or _title(d), fontsize=9)
    fig.tight_layout()
    return fig


def _node(ax: Any, x: float, y: float, name: str, color: str, bold: bool,
          outline: str = "black") -> None:
    ax.text(x, y, name.replace("_", "\n"), ha="center", va="center", fontsize=7, zorder=3,
            fontweight="bold" if bold else "normal",
            bbox={"boxstyle": "round,pad=0.3", "facecolor": color, "edgecolor": outline,
                  "linewidth": 2.6 if bold else 0.8})


def _title(d: Mapping[str, Any]) -> str:
    return (f"taxonomy: regime {d['regime']}, budget {d['budget']}, order <= {d['max_order']}, "
            f"objective {d['objective']:.3f}, mean Gain {d['gain']:.2f}, "
            f"mean Quality {d['quality']:.2f}")


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
