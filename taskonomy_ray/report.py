"""Steps 3-5 as a page: the HTML report of a sweep or of the published Taskonomy results.

`write_report` computes every number (affinity matrices, task tree, taxonomies, budget curves,
significance against random policies; for a sweep also samples, sanity and run facts), draws the
figures next to `index.html`, and renders a Jinja2 template that only lays the numbers out.
"""

from __future__ import annotations

import fnmatch
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import __version__, evaluate, plots, report_flags, report_plots, tasks, taxonomy
from .errors import ConfigError, SolverError, TaskonomyError
from .report_flags import PSEUDO_COLUMNS
from .tables import REPORT_DIR, REPORT_ERROR, RUN_FILE, Storage
from .taxonomy import pick_regime

DEFAULT_BUDGETS = (1, 2, 3, 4, 6, 8, 12)
DEFAULT_ORDERS = (1, 2, 4)
DEFAULT_DRAWN = (3, 8)  # budgets drawn as graphs, for every order
DEFAULT_POLICIES = 100  # random feasible policies per significance test
PUBLISHED_OUT = "report-published"
TEMPLATE = "report.html.j2"
# Every file name the report writes besides index.html.
FIGURES = ("affinity.png", "task_tree.png", "budget_curve.png", "taxonomy_o*_b*.png",
           "novel_tasks.png", "samples_*.png")


@dataclass(frozen=True)
class ReportConfig:
    """What the report solves and shows; validated here so the command line fails early."""

    budgets: tuple[float, ...] = DEFAULT_BUDGETS  # points of the budget curves
    orders: tuple[int, ...] = DEFAULT_ORDERS  # one curve per maximum transfer order
    drawn: tuple[float, ...] = DEFAULT_DRAWN  # budgets drawn as graphs, per order
    random_policies: int = DEFAULT_POLICIES
    seed: int = 0
    regime: int | None = None  # None: the table's largest
    samples: int = 3  # test images per gold network (sweep only)
    data_root: str | None = None  # overrides the dataset root of run.json (sweep only)
    importance: Mapping[str, float] = field(default_factory=dict)  # per target, default 1
    costs: Mapping[str, float] = field(default_factory=dict)  # supervision costs, default 1

    def __post_init__(self) -> None:
        for name in ("budgets", "orders", "drawn"):
            object.__setattr__(self, name, tuple(sorted(set(getattr(self, name)))))
        if not self.budgets or any(not (math.isfinite(b) and b >= 0) for b in self.budgets):
            raise ConfigError(f"report budgets must be finite numbers >= 0, got {self.budgets}")
        if any(not (math.isfinite(b) and b >= 0) for b in self.drawn):
            raise ConfigError(f"drawn budgets must be finite numbers >= 0, got {self.drawn}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0 (it seeds the random policies), got "
                              f"{self.seed}")
        if not self.orders or min(self.orders) < 1:
            raise ConfigError(f"report orders must be integers >= 1, got {self.orders}")
        if self.random_policies < 1 or self.samples < 0:
            raise ConfigError(f"the significance test needs >= 1 random policy (--policies, "
                              f"got {self.random_policies}) and samples must be >= 0 "
                              f"(--samples, got {self.samples})")


def write_report(source: str | Path, out_dir: str | Path | None = None, *,
                 published: bool = False, budgets: Sequence[float] = DEFAULT_BUDGETS,
                 orders: Sequence[int] = DEFAULT_ORDERS, drawn: Sequence[float] = DEFAULT_DRAWN,
                 random_policies: int = DEFAULT_POLICIES, regime: int | None = None,
                 samples: int = 3, data_root: str | None = None, seed: int = 0,
                 importance: Mapping[str, float] | None = None,
                 costs: Mapping[str, float] | None = None) -> Path | str:
    """Write the report of a sweep's storage (or of the published CSV); return its index.html.

    A path, or a URI for a sweep on an object store. Default folder: `<storage>/report` for a
    sweep (staged locally, then uploaded, when the storage is an object store),
    `report-published/` for the published results.
    """
    cfg = ReportConfig(tuple(budgets), tuple(orders), tuple(drawn), random_policies, seed,
                       regime, samples, data_root, dict(importance or {}), dict(costs or {}))
    if published:
        from .published import load_published

        out = Path(out_dir or PUBLISHED_OUT)
        table = load_published(source)
        return _render(out, table, cfg, f"published Taskonomy results ({Path(source).name})",
                       str(source), None)
    storage = Storage(str(source))
    missing = storage.affinities_missing()
    if missing:  # (a wrong argument, not damaged storage)
        raise ConfigError(missing)
    title = _sweep_title(storage)
    if out_dir is not None:
        return _render(Path(out_dir), storage.read_affinities(), cfg, title, storage.display,
                       storage)
    index: Path | str
    if storage.local:
        index = _render(Path(storage.path(REPORT_DIR)), storage.read_affinities(), cfg,
                        title, storage.display, storage)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            staged = _render(Path(tmp), storage.read_affinities(), cfg, title,
                             storage.display, storage)
            new = sorted(f.name for f in Path(tmp).iterdir())
            for name in new:
                storage.write_bytes(f"{REPORT_DIR}/{name}", (Path(tmp) / name).read_bytes())
        for name in storage.list(REPORT_DIR):  # an earlier report's figures that this one lacks
            if name not in new and any(fnmatch.fnmatch(name, p) for p in FIGURES):
                storage.delete(f"{REPORT_DIR}/{name}")
        index = storage.uri_for(f"{REPORT_DIR}/{staged.name}")  # a URI: a Path would mangle //
    storage.delete(REPORT_ERROR)  # an earlier failed report's traceback no longer describes it
    return index


def _sweep_title(storage: Storage) -> str:
    """`sweep <name>`: the workflow's name from run.json (the storage path is shown beside it)."""
    try:
        name = storage.read_json(RUN_FILE)["config"]["name"] if storage.exists(RUN_FILE) else None
    except (TaskonomyError, KeyError, TypeError):  # (the run-facts section says what is wrong)
        name = None
    return f"sweep {name}" if name else f"sweep {storage.display}"


def _render(out: Path, table: pa.Table, cfg: ReportConfig, title: str, source: str,
            storage: Storage | None) -> Path:
    """Compute every section in a staging folder, then swap its files into `out`.

    An earlier report in `out` stays whole until the new one is complete: a run that fails
    (a bad --regime, a solver error) leaves it as it was. Then the earlier report's figures,
    and only those (`FIGURES`), are replaced by the new ones.
    """
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging-") as tmp:
        stage = Path(tmp)
        _render_into(stage, table, cfg, title, source, storage)
        for pattern in FIGURES:
            for old in out.glob(pattern):
                old.unlink()
        for f in sorted(stage.iterdir()):  # index.html last: it links the figures
            if f.name != "index.html":
                os.replace(f, out / f.name)
        os.replace(stage / "index.html", out / "index.html")
    return out / "index.html"


def _render_into(out: Path, table: pa.Table, cfg: ReportConfig, title: str, source: str,
                 storage: Storage | None) -> None:
    """Compute every section, draw the figures into `out`, render index.html."""
    t0 = time.perf_counter()
    regime = pick_regime(table, cfg.regime)
    context: dict[str, Any] = {
        "title": title, "source": source, "version": __version__, "regime": regime,
        "regimes": sorted(set(table.column("regime").to_pylist())),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "affinity": affinity_section(table, regime, out),
    }
    pinned = None  # the sweep's own taxonomy, when solved under this report's costs and weights
    if storage is not None and storage.exists("taxonomy.json"):
        doc = storage.read_json("taxonomy.json")
        if taxonomy.weighed_as(doc, cfg.costs, cfg.importance):
            pinned = doc
    context.update(taxonomy_sections(table, regime, cfg, out, pinned))
    context["novel"] = novel_section(table, regime, cfg, out)
    if storage is not None:
        from .report_sweep import sweep_sections

        context["sweep"] = sweep_sections(storage, cfg, out)
    context["seconds"] = f"{time.perf_counter() - t0:.1f}"
    (out / "index.html").write_text(render_html(context))


def render_html(context: dict[str, Any]) -> str:
    """The page: the packaged Jinja2 template filled with `context` (autoescaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("taskonomy_ray", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(**context)


# --- step 3: first-order affinities and the task similarity tree ---------------------------


def first_order(table: pa.Table, regime: int, column: str
                ) -> tuple[list[str], list[str], np.ndarray]:
    """(targets, sources, matrix[target, source]) of one column over first-order transfers."""
    rows = [r for r in table.to_pylist() if r["regime"] == regime and r["order"] == 1
            and r["sources"][0] not in PSEUDO_COLUMNS]
    names = tasks.task_names()
    rank = {n: i for i, n in enumerate(names)}
    targets = sorted({r["target"] for r in rows}, key=lambda n: (rank.get(n, len(rank)), n))
    sources = sorted({r["sources"][0] for r in rows}, key=lambda n: (rank.get(n, len(rank)), n))
    matrix = np.full((len(targets), len(sources)), np.nan)
    ti, si = {t: i for i, t in enumerate(targets)}, {s: j for j, s in enumerate(sources)}
    for r in rows:
        if r[column] is not None:
            matrix[ti[r["target"]], si[r["sources"][0]]] = r[column]
    return targets, sources, matrix


def task_tree(affinity: np.ndarray) -> dict[str, Any]:
    """Agglomerative clustering of sources by their transfer-out patterns (matrix columns).

    Each source is described by its affinities into every target, each target's row scaled to a
    maximum of 1 so that targets with flat affinities weigh as much as peaked ones; unmeasured
    transfers count as 0. Average linkage on Euclidean distance.
    """
    from scipy.cluster.hierarchy import dendrogram, linkage

    x = np.nan_to_num(affinity, nan=0.0)
    x = x / np.maximum(x.max(axis=1, keepdims=True), 1e-12)
    z = linkage(x.T, method="average", metric="euclidean")
    d = dendrogram(z, no_plot=True)
    return {"icoord": d["icoord"], "dcoord": d["dcoord"], "leaves": [int(i) for i in d["leaves"]]}


def affinity_section(table: pa.Table, regime: int, out: Path) -> dict[str, Any]:
    """Heat maps (before and after AHP) ordered by the task tree, and the tree itself."""
    targets, sources, affinity = first_order(table, regime, "affinity")
    _, _, quality = first_order(table, regime, "quality")
    if len(sources) < 2 or not targets:
        return {"note": f"regime {regime} has fewer than two first-order sources: no matrix "
                        "or tree to draw", "matrix": None, "tree": None}
    tree = task_tree(affinity)
    order = [sources[i] for i in tree["leaves"]]
    rows = [t for t in order if t in targets] + [t for t in targets if t not in order]
    pick = [targets.index(t) for t in rows], [sources.index(s) for s in order]
    report_plots.plot_affinity_matrices(
        rows, order, quality[np.ix_(*pick)], affinity[np.ix_(*pick)], out / "affinity.png",
        f"first-order transfers, regime {regime}: {len(rows)} targets x {len(order)} sources")
    report_plots.plot_task_tree(sources, tree["icoord"], tree["dcoord"], tree["leaves"],
                                out / "task_tree.png", f"task similarity tree (regime {regime})")
    return {"note": None, "matrix": "affinity.png", "tree": "task_tree.png",
            "targets": len(rows), "sources": len(order), "leaf_order": ", ".join(order),
            "hopeless": report_flags.hopeless_targets(table, regime),
            "random_led": report_flags.random_led_targets(table, regime)}


# --- steps 4-5: taxonomies, budget curves, significance ------------------------------------


def taxonomy_sections(table: pa.Table, regime: int, cfg: ReportConfig, out: Path,
                      pinned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Budget curves per order, and drawn taxonomies with per-target tables and significance.

    The notes say what was left out: orders above the table's, budgets that cannot serve every
    target or that exceed the number of tasks.
    """
    top = taxonomy.largest_order(table, regime)
    orders = [o for o in cfg.orders if o <= top] or [top]
    above = [str(o) for o in cfg.orders if o > top]
    many = len(above) > 1
    notes = [f"order{'s' if many else ''} {', '.join(above)} exceed{'' if many else 's'} the "
             f"table's largest order ({top}) and would repeat it"] if above else []
    for what, values, unit in (("supervision costs", cfg.costs, ": a budget limits the "
                                "supervised tasks' summed cost"),
                               ("target importance", cfg.importance, "")):
        if values:
            given = ", ".join(f"{n}={v:g}" for n, v in values.items())
            notes.append(f"{what} {given} (others 1){unit}")
    pairs = {(o, b) for o in orders for b in cfg.drawn}
    if pinned is not None and pinned.get("regime") == regime:
        pairs.add((int(pinned["max_order"]), float(pinned["budget"])))
    curve, points, drawn = [], [], []
    for order in sorted({*orders, *(o for o, _ in pairs)}):
        problem = taxonomy.build_problem(table, taxonomy.ProblemSpec(
            max_order=order, regime=regime, importance=cfg.importance, costs=cfg.costs))
        least, most = taxonomy.min_budget(problem), taxonomy.max_budget(problem)
        wanted = sorted({*(cfg.budgets if order in orders else ()),
                         *(b for o, b in pairs if o == order)})
        usable = [b for b in wanted if least - 1e-9 <= b <= most + 1e-9]
        if len(usable) < len(wanted):
            left = ", ".join(f"{b:g}" for b in wanted if b not in usable)
            notes.append(f"order {order}: budgets {left} are outside [{least:g}, {most:g}] "
                         "(below, no policy serves every target; above, every task is already "
                         "supervised)")
        for budget in usable:
            solved = taxonomy.solve(problem, budget)
            try:
                sig: dict[str, evaluate.Significance] | None = evaluate.significance(
                    problem, solved, cfg.random_policies, cfg.seed)
            except SolverError as e:  # too few feasible random policies: this row goes without
                sig = None
                notes.append(f"order {order}, budget {budget:g}: no significance test ({e})")
            if order in orders and budget in cfg.budgets:
                curve.append(solved)
                points.append(_curve_row(solved, sig))
            if (order, budget) in pairs:
                drawn.append(_drawn(solved, sig, out, pinned, drawn))
    if curve:
        plots.plot_budget_curve(curve, out / "budget_curve.png",
                                f"budget curves, regime {regime}")
    weight = curve[0].weight if curve else ""  # (no curve: the page says nothing of it)
    return {"curve": {"image": "budget_curve.png" if curve else None, "rows": points,
                      "policies": cfg.random_policies, "weight": WEIGHT_WORDS.get(weight, weight)},
            "taxonomies": drawn, "notes": notes}


def novel_section(table: pa.Table, regime: int, cfg: ReportConfig, out: Path
                  ) -> dict[str, Any]:
    """Generalisation to novel tasks (all-for-one): each target's transfer per order, drawn."""
    top = taxonomy.largest_order(table, regime)
    orders = [o for o in cfg.orders if o <= top] or [top]
    found = evaluate.novel_tasks(table, orders, regime)
    targets = list(dict.fromkeys(n.target for n in found))
    gain, quality = (np.full((len(targets), len(orders)), np.nan) for _ in range(2))
    for n in found:
        i, j = targets.index(n.target), orders.index(n.max_order)
        gain[i, j], quality[i, j] = n.gain, n.quality
    if targets:
        report_plots.plot_novel_tasks(targets, orders, gain, quality, out / "novel_tasks.png",
                                      f"novel tasks, all-for-one, regime {regime}")
    last = {n.target: n for n in found if n.max_order == orders[-1]}
    rows = [{"target": t, "sources": " + ".join(last[t].sources) if t in last else "-",
             "gain": [_fmt(g) for g in gain[i]], "quality": [_fmt(q) for q in quality[i]]}
            for i, t in enumerate(targets)]
    means = [{"order": k, "gain": _fmt(float(np.nanmean(gain[:, j]))),
              "quality": _fmt(float(np.nanmean(quality[:, j])))}
             for j, k in enumerate(orders)] if targets else []
    return {"image": "novel_tasks.png" if targets else None, "orders": orders,
            "rows": rows, "means": means}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _transferred_mean(t: taxonomy.Taxonomy, metric: str) -> float | None:
    """The mean Gain or Quality over the targets served by transfer (None if all supervised)."""
    values = [getattr(a, metric) for a in t.transfers if not a.supervised]
    return float(np.mean(values)) if values else None


# What the BIP sums per target, as the page says it (taxonomy.WEIGHTS).
WEIGHT_WORDS = {"sqrt_affinity": "the square root of its affinity, as the published solver",
                "affinity": "its affinity", "quality": "its Quality", "gain": "its Gain"}


def _curve_row(t: taxonomy.Taxonomy, sig: dict[str, evaluate.Significance] | None
               ) -> dict[str, str]:
    return {"order": str(t.max_order), "budget": f"{t.budget:g}", "objective": _fmt(t.objective),
            "gain": _fmt(t.gain), "quality": _fmt(t.quality),
            "gain_transferred": _fmt(_transferred_mean(t, "gain")),
            "quality_transferred": _fmt(_transferred_mean(t, "quality")),
            "percentile": _fmt(sig["objective"].percentile if sig else None, 1),
            "p_value": _fmt(sig["objective"].p_value if sig else None),
            "supervised": ", ".join(t.supervised)}


def _policy(t: taxonomy.Taxonomy) -> tuple[Any, ...]:
    """What a taxonomy decides: the supervised tasks and how each target is served."""
    return tuple(sorted((a.target, a.supervised, tuple(a.sources)) for a in t.transfers))


def _drawn(t: taxonomy.Taxonomy, sig: dict[str, evaluate.Significance] | None, out: Path,
           pinned: dict[str, Any] | None, before: list[dict[str, Any]]) -> dict[str, Any]:
    """One taxonomy: its graph, per-target rows and its significance against random policies.

    One the same as a taxonomy drawn `before` (a higher order that chose no higher-order
    transfer) points to it instead of drawing it again; its significance is its own (random
    policies of a higher order are other policies).
    """
    name = f"taxonomy_o{t.max_order}_b{t.budget:g}".replace(".", "p") + ".png"
    same = next((d for d in before if d["policy"] == _policy(t) and not d["same_as"]), None)
    if same is None:  # the page states objective and means above; a short title fits
        plots.draw_taxonomy(t, out / name, f"order <= {t.max_order}, budget {t.budget:g}, "
                                           f"regime {t.regime}")
    is_pinned = pinned is not None and (pinned["max_order"], float(pinned["budget"])) == (
        t.max_order, float(t.budget))
    rows = [{"target": a.target, "served_by": "supervised" if a.supervised
             else " + ".join(a.sources), "supervised": a.supervised,
             "order": "-" if a.supervised else str(len(a.sources)),
             "affinity": _fmt(a.affinity, 4), "gain": _fmt(a.gain), "quality": _fmt(a.quality)}
            for a in t.transfers]
    significance = [{"metric": k, "value": _fmt(s.taxonomy), "percentile": _fmt(s.percentile, 1),
                     "p_value": _fmt(s.p_value), "random_mean": _fmt(float(s.random.mean())),
                     "random_p95": _fmt(float(np.quantile(s.random, 0.95)))}
                    for k, s in (sig or {}).items()]
    return {"image": name, "order": str(t.max_order), "budget": f"{t.budget:g}",
            "pinned": is_pinned, "objective": _fmt(t.objective), "gain": _fmt(t.gain),
            "quality": _fmt(t.quality), "supervised": ", ".join(t.supervised), "rows": rows,
            "significance": significance, "anchor": name.removesuffix(".png"),
            "policy": _policy(t), "same_as": None if same is None else {
                "anchor": same["anchor"], "order": same["order"], "budget": same["budget"]},
            "significance_note": "too few feasible random policies at this budget for the "
                                 "significance test (see the notes above)"}


def default_out(source: str | Path, published: bool) -> str:
    """Where `taskonomy-ray report` writes when --out is not given (for messages)."""
    return PUBLISHED_OUT if published else Storage(str(source)).path(REPORT_DIR)


__all__ = ["ReportConfig", "affinity_section", "first_order", "pick_regime", "render_html",
           "task_tree", "taxonomy_sections", "write_report"]
