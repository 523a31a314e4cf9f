"""The solver's text side: `solve` options parsed, taxonomies and budget curves printed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError
from .evaluate import NovelTask
from .taxonomy import Taxonomy, weighed_as

MAX_BUDGETS = 1000  # budgets one spec may name: above the task count, budgets change nothing


def parse_budgets(spec: str) -> list[float]:
    """Budgets from '1-8' (inclusive range), '1,2,5' or a mix such as '1-3,8'."""
    out: list[float] = []
    problems: list[str] = []
    try:
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                problems.append("an empty entry (two commas, or one at an end)")
            elif "-" in part[1:]:
                lo, hi = (int(b) for b in part.split("-", 1))
                if hi < lo:
                    problems.append(f"the range {part} runs backwards; write {hi}-{lo}")
                elif hi - lo >= MAX_BUDGETS:
                    problems.append(f"the range {part} names {hi - lo + 1} budgets, more than "
                                    f"{MAX_BUDGETS}; budgets above the number of tasks (26 in "
                                    "the full dictionary) give the same taxonomy")
                else:
                    out.extend(float(b) for b in range(lo, hi + 1))
            else:
                out.append(float(part))
    except ValueError:
        raise ConfigError(f"cannot read budgets {spec!r}; write e.g. '1-8' or '1,2,5'") from None
    if problems:
        raise ConfigError(f"budgets {spec!r}: {problems[0]}")
    if not out or any(not (math.isfinite(b) and b >= 0) for b in out):
        raise ConfigError(f"budgets {spec!r}: give at least one budget, all finite and >= 0")
    return sorted(set(out))


def parse_importance(items: Sequence[str]) -> dict[str, float]:
    """Per-target importance from 'TASK=W' strings."""
    return _task_values(items, "importance", "TASK=WEIGHT, e.g. normal=2")


def parse_costs(items: Sequence[str]) -> dict[str, float]:
    """Per-task supervision cost from 'TASK=C' strings (the paper's r_i; default 1)."""
    return _task_values(items, "cost", "TASK=COST, e.g. segment_semantic=3")


def solved_otherwise(doc: Mapping[str, Any] | None, costs: Mapping[str, float],
                     importance: Mapping[str, float]) -> str | None:
    """A note when a sweep's own taxonomy (`doc`) was weighed otherwise than these, else None.

    Its workflow's `solve` section may set costs and importance; one re-solving the sweep by
    hand would otherwise compare taxonomies solved under different costs without knowing it.
    """
    if not doc:
        return None
    theirs = {k: dict(doc.get(k) or {}) for k in ("costs", "importance")}
    if not any(theirs.values()) or weighed_as(doc, costs, importance):
        return None
    flags = " ".join(f"{flag} " + " ".join(f"{n}={v:g}" for n, v in theirs[k].items())
                     for k, flag in (("costs", "--cost"), ("importance", "--importance"))
                     if theirs[k])
    return (f"the sweep's own taxonomy.json was solved under its workflow's solve settings "
            f"({flags}); this one is not: add them to solve as it was")


def _task_values(items: Sequence[str], what: str, form: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ConfigError(f"cannot read {what} {item!r}; write {form}")
        if name in out:
            raise ConfigError(f"{what} of {name!r} given twice ({item!r}); give it once")
        out[name] = number
    return out


def format_taxonomy(result: Taxonomy) -> str:
    """A readable table of a solved taxonomy, for `taskonomy-ray solve`."""
    weighed = ", ".join(f"{t}={w:g}" for t, w in result.importance.items())
    costs = ", ".join(f"{t}={c:g}" for t, c in result.costs.items())
    spent = f", cost {result.spent:g}" if costs else ""
    head = (f"regime {result.regime}, budget {result.budget:g}, max order {result.max_order}, "
            f"weight {result.weight}" + (f", importance {weighed}" if weighed else "")
            + (f", costs {costs} (others 1)" if costs else "")
            + f"\nobjective {result.objective:.4f}, mean gain {result.gain:.3f}, mean "
            f"quality {result.quality:.3f}\nsupervised "
            f"({len(result.supervised)}{spent}): {', '.join(result.supervised)}\n")
    rows = [("target", "served by", "weight", "affinity", "gain", "quality")]
    for a in result.transfers:
        rows.append((a.target, "(supervised)" if a.supervised else " + ".join(a.sources),
                     f"{a.weight:.4f}", f"{a.affinity:.5f}", f"{a.gain:.3f}",
                     f"{a.quality:.3f}"))
    return head + "\n" + _columns(rows)


def format_curve(curve: Sequence[Taxonomy]) -> str:
    """A readable table of a budget curve: objective and mean win rates per budget."""
    first = curve[0] if curve else None
    costs = ", ".join(f"{n}={c:g}" for n, c in first.costs.items()) if first else ""
    costed = bool(costs)  # then the budget is not a count: show what was spent
    rows = [("budget", *(("cost",) if costed else ()), "objective", "gain", "quality",
             "supervised")]
    rows += [(f"{t.budget:g}", *((f"{t.spent:g}",) if costed else ()), f"{t.objective:.4f}",
              f"{t.gain:.3f}", f"{t.quality:.3f}", ", ".join(t.supervised)) for t in curve]
    head = (f"regime {first.regime}, max order {first.max_order}, weight {first.weight}"
            + (f", costs {costs} (others 1)" if costs else "") + "\n\n" if first else "")
    return head + _columns(rows)


def curve_json(curve: Sequence[Taxonomy]) -> dict[str, Any]:
    """The `solve --budgets --json` object: one entry per budget."""
    first = curve[0]
    return {"regime": first.regime, "max_order": first.max_order, "weight": first.weight,
            "costs": dict(first.costs),
            "curve": [{"budget": t.to_json()["budget"], "cost": t.to_json()["cost"],
                       "objective": t.objective, "quality": t.quality, "gain": t.gain,
                       "supervised": list(t.supervised)} for t in curve]}


def format_novel(found: Sequence[NovelTask], regime: int) -> str:
    """A readable table of `solve --all-for-one`: each novel task's transfer per order."""
    rows = [("target", "order", "gain", "quality", "served by")]
    rows += [(n.target, str(n.max_order), f"{n.gain:.3f}", f"{n.quality:.3f}",
              " + ".join(n.sources)) for n in found]
    orders = sorted({n.max_order for n in found})
    means = "; ".join(f"order <= {k}: gain {_mean(found, k, 'gain'):.3f}, "
                      f"quality {_mean(found, k, 'quality'):.3f}" for k in orders)
    return (f"novel tasks, all-for-one (every other task supervised), regime {regime}\n"
            f"means: {means}\n\n" + _columns(rows))


def novel_json(found: Sequence[NovelTask], regime: int) -> dict[str, Any]:
    """The `solve --all-for-one --json` object: one entry per (target, order), and the means."""
    orders = sorted({n.max_order for n in found})
    return {"regime": regime, "novel": [n.to_json() for n in found],
            "means": [{"max_order": k, "quality": _mean(found, k, "quality"),
                       "gain": _mean(found, k, "gain")} for k in orders]}


def _mean(found: Sequence[NovelTask], order: int, metric: str) -> float:
    values = [getattr(n, metric) for n in found if n.max_order == order]
    return sum(values) / len(values)


def _columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1]
                     for r in rows)
