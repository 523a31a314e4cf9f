"""The BIP taxonomy (step 4): proven optimal against exhaustive search, constraints, and errors."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pytest

from taskonomy_ray import evaluate, published, solve_text, tables, taxonomy
from taskonomy_ray.errors import ConfigError, SolverError, UnknownNameError


def _table(rows):
    """An affinities table from (target, sources, affinity[, quality, gain]) tuples."""
    out = []
    for r in rows:
        target, sources, aff, *rest = r
        quality, gain = rest or (0.3, 0.6)
        out.append({"regime": 1000, "target": target, "sources": list(sources),
                    "order": len(sources), "affinity": aff, "quality": quality, "gain": gain})
    return pa.Table.from_pylist(out, schema=tables.AFFINITIES_SCHEMA)


# Three targets; supervising normal serves the 3D targets well, autoencoding serves nothing.
SMALL = _table([
    ("normal", ["self"], 0.5), ("normal", ["reshading"], 0.2), ("normal", ["depth_zbuffer"], 0.1),
    ("reshading", ["self"], 0.4), ("reshading", ["normal"], 0.3),
    ("reshading", ["normal", "depth_zbuffer"], 0.36), ("reshading", ["depth_zbuffer"], 0.05),
    ("depth_zbuffer", ["self"], 0.6), ("depth_zbuffer", ["normal"], 0.2),
    ("depth_zbuffer", ["reshading"], 0.1), ("depth_zbuffer", ["depth_zbuffer"], 0.9),
    ("depth_zbuffer", ["normal", "pixels"], 0.9),
])


@pytest.fixture(scope="module")
def pub(published_csv):
    return published.read_published_csv(published_csv)


def _check_feasible(problem, result, budget):
    """Every constraint of the BIP holds in a returned taxonomy."""
    sup = set(result.supervised)
    assert sum(problem.costs[n] for n in sup) <= budget + 1e-9
    assert [a.target for a in result.transfers] == list(problem.targets)
    for a in result.transfers:
        if a.supervised:
            assert a.target in sup and a.sources == ("self",)
        else:
            assert set(a.sources) <= sup and a.target not in sup
            assert len(a.sources) <= problem.max_order and a.target not in a.sources
    total = sum(problem.importance[a.target] * a.weight for a in result.transfers)
    assert result.objective == pytest.approx(total, abs=1e-12)


def test_small_problem_has_the_hand_computed_optimum():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(max_order=2))
    # Budget 1: supervise normal -> sqrt(.5) + sqrt(.3) + sqrt(.2).
    one = taxonomy.solve(problem, 1)
    assert one.supervised == ("normal",)
    assert one.objective == pytest.approx(math.sqrt(0.5) + math.sqrt(0.3) + math.sqrt(0.2))
    # Budget 2: normal + depth_zbuffer, reshading served by the 2nd-order transfer.
    two = taxonomy.solve(problem, 2)
    assert set(two.supervised) == {"normal", "depth_zbuffer"}
    served = {a.target: a.sources for a in two.transfers}
    assert served["reshading"] == ("normal", "depth_zbuffer")


def test_rows_using_the_target_itself_self_or_pixels_as_a_source_are_not_candidates():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(max_order=2))
    candidates = {(e.target, e.sources) for e in problem.edges}
    assert ("depth_zbuffer", ("depth_zbuffer",)) not in candidates
    assert ("depth_zbuffer", ("normal", "pixels")) not in candidates
    assert all(e.sources != ("self",) for e in problem.edges)


def test_source_only_tasks_in_the_table_are_never_targets():
    odd = pa.concat_tables([SMALL, _table([("jigsaw", ["self"], 1.0),
                                           ("jigsaw", ["normal"], 0.5)])])
    problem = taxonomy.build_problem(odd, taxonomy.ProblemSpec())
    assert "jigsaw" not in problem.targets


def test_max_order_drops_higher_order_transfers():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(max_order=1))
    assert all(len(e.sources) == 1 for e in problem.edges)
    two = taxonomy.solve(problem, 2)
    assert all(len(a.sources) == 1 for a in two.transfers)


@pytest.mark.parametrize("regime", [1000, 16000])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_bip_optimum_equals_exhaustive_search_on_published_data(pub, regime, order):
    spec = taxonomy.ProblemSpec(max_order=order, regime=regime)
    problem = taxonomy.build_problem(pub, spec)  # dominated transfers pruned
    full = taxonomy.build_problem(pub, spec, prune=False)  # the search sees every transfer
    for budget in (1, 2, 3):
        result = taxonomy.solve(problem, budget)
        best, best_set = evaluate.exhaustive_optimum(full, budget)
        _check_feasible(full, result, budget)
        assert result.objective == pytest.approx(best, abs=1e-9), (regime, order, budget)
        # the exhaustive set, scored independently, reaches the same optimum
        again = evaluate.evaluate_policy(full, best_set)
        assert again is not None and again.objective == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("weight", ["affinity", "quality", "gain"])
def test_bip_is_optimal_for_every_weight_importance_and_target_subset(pub, weight):
    rng = np.random.default_rng(len(weight))
    names = taxonomy.build_problem(pub, taxonomy.ProblemSpec()).targets
    for _ in range(2):
        targets = tuple(rng.choice(names, size=8, replace=False))
        importance = {t: float(rng.uniform(0.2, 3.0)) for t in targets}
        spec = taxonomy.ProblemSpec(max_order=int(rng.integers(1, 5)), regime=16000,
                                    targets=targets, importance=importance, weight=weight)
        problem = taxonomy.build_problem(pub, spec)
        full = taxonomy.build_problem(pub, spec, prune=False)
        for budget in (2, 4):
            result = taxonomy.solve(problem, budget)
            _check_feasible(full, result, budget)
            best, _ = evaluate.exhaustive_optimum(full, budget)
            assert result.objective == pytest.approx(best, abs=1e-9)


def test_pruning_drops_only_dominated_transfers(pub):
    spec = taxonomy.ProblemSpec(max_order=4, regime=16000)
    pruned = taxonomy.build_problem(pub, spec)
    full = taxonomy.build_problem(pub, spec, prune=False)
    assert 0 < len(pruned.edges) < len(full.edges)
    kept = set(pruned.edges)
    for e in full.edges:
        if e not in kept:  # some kept transfer into the same target needs a subset of sources
            assert any(f.target == e.target and set(f.sources) <= set(e.sources)
                       and f.weight >= e.weight for f in kept)


@pytest.mark.filterwarnings("ignore:PULP_CBC_CMD is deprecated:DeprecationWarning")
def test_cbc_and_highs_back_ends_agree(pub):
    problem = taxonomy.build_problem(pub, taxonomy.ProblemSpec(max_order=3, regime=16000))
    highs, cbc = taxonomy.solve(problem, 4, "highs"), taxonomy.solve(problem, 4, "cbc")
    assert highs.objective == pytest.approx(cbc.objective, abs=1e-9)


def test_reproduces_the_papers_figure_1_example(pub):
    # Taskonomy, Fig. 1: features of a surface-normal estimator and an occlusion-edge detector
    # together serve reshading and point matching. Asking for exactly that (both targets novel,
    # two supervised tasks, order <= 2) on the published 16k affinities finds that structure.
    spec = taxonomy.ProblemSpec(max_order=2, regime=16000, targets=("reshading", "point_matching"),
                                novel=("reshading", "point_matching"))
    result = taxonomy.solve(taxonomy.build_problem(pub, spec), 2)
    assert set(result.supervised) == {"normal", "edge_occlusion"}
    assert {frozenset(a.sources) for a in result.transfers} == {
        frozenset({"normal", "edge_occlusion"})}


def test_default_uses_the_largest_regime_and_the_22_published_targets(pub):
    problem = taxonomy.build_problem(pub, taxonomy.ProblemSpec())
    assert problem.regime == 16000 and len(problem.targets) == 22
    assert "class_object_selected" not in problem.supervisable  # outside the dictionary
    wider = taxonomy.build_problem(pub, taxonomy.ProblemSpec(
        sources=("class_object_selected", "normal")))
    assert wider.supervisable == ("normal", "class_object_selected")


def test_unranked_published_transfers_are_left_out(pub):
    # Four published transfers have a gain but no affinity nor quality: whatever the weight,
    # they are not candidates, since a chosen transfer's three scores are all reported.
    for weight in ("sqrt_affinity", "gain"):
        problem = taxonomy.build_problem(pub, taxonomy.ProblemSpec(regime=16000, weight=weight),
                                         prune=False)
        assert all(math.isfinite(x) for e in problem.edges
                   for x in (e.weight, e.affinity, e.quality, e.gain))
        assert ("nonfixated_pose", ("egomotion", "room_layout")) not in {
            (e.target, e.sources) for e in problem.edges}


def test_importance_can_make_a_target_worth_supervising():
    plain = taxonomy.solve(taxonomy.build_problem(SMALL, taxonomy.ProblemSpec()), 1)
    heavy = taxonomy.solve(taxonomy.build_problem(
        SMALL, taxonomy.ProblemSpec(importance={"depth_zbuffer": 10.0})), 1)
    assert plain.supervised == ("normal",) and heavy.supervised == ("depth_zbuffer",)
    targets = sorted(set(SMALL.column("target").to_pylist()))
    with pytest.raises(ConfigError, match="every target's importance is 0"):  # (was solved)
        taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(importance=dict.fromkeys(targets, 0)))


def test_novel_targets_are_never_supervised_nor_sources():
    spec = taxonomy.ProblemSpec(novel=("normal",))
    problem = taxonomy.build_problem(SMALL, spec)
    assert "normal" not in problem.supervisable
    result = taxonomy.solve(problem, 2)
    assert "normal" not in result.supervised
    assert all("normal" not in a.sources for a in result.transfers)


def test_sources_restrict_what_may_be_supervised():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(sources=("depth_zbuffer",
                                                                           "reshading")))
    result = taxonomy.solve(problem, 2)
    assert set(result.supervised) <= {"depth_zbuffer", "reshading"}


def test_budget_too_small_says_the_smallest_that_works():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(novel=("reshading",)))
    with pytest.raises(SolverError, match="smallest budget that can is 1"):
        taxonomy.solve(problem, 0)


def test_unserveable_target_and_empty_sources_are_clear_errors():
    with pytest.raises(ConfigError, match="source set is empty"):
        taxonomy.ProblemSpec(sources=())
    only_pairs = _table([("normal", ["self"], 0.5), ("depth_zbuffer", ["self"], 0.5),
                         ("reshading", ["normal", "depth_zbuffer"], 0.3)])
    with pytest.raises(SolverError, match="'reshading' cannot be supervised.*--max-order"):
        taxonomy.build_problem(only_pairs, taxonomy.ProblemSpec(
            sources=("normal", "depth_zbuffer"), targets=("reshading",), max_order=1))


def test_unknown_and_source_only_names_are_refused_with_suggestions():
    with pytest.raises(UnknownNameError, match="did you mean 'normal'"):
        taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(targets=("normals",)))
    with pytest.raises(ConfigError, match="source-only"):
        taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(targets=("jigsaw",)))
    with pytest.raises(UnknownNameError, match=r"unknown target 'class_scene'\. Known: .* "
                       "'class_scene' is a task of the dictionary, but these results have none"):
        taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(targets=("class_scene",)))
    with pytest.raises(UnknownNameError):
        taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(importance={"nromal": 2.0}))
    # An importance only weighs a target's term: one on a task left out of --targets would
    # silently change nothing, so it is refused, naming the targets of this problem.
    with pytest.raises(UnknownNameError, match=r"target of this problem 'depth_zbuffer'.*"
                                               r"Known: normal, reshading\."):
        taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(
            targets=("normal", "reshading"), importance={"depth_zbuffer": 100.0}))
    with pytest.raises(ConfigError, match="regime 5 is not in the table"):
        taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(regime=5))


def test_problems_with_nothing_to_solve_and_bad_budgets_are_clear_errors():
    empty = SMALL.slice(0, 0)
    with pytest.raises(SolverError, match="affinities table is empty; compute affinities first"):
        taxonomy.build_problem(empty, taxonomy.ProblemSpec())
    with pytest.raises(ConfigError, match="affinities table is empty; nothing to solve"):
        taxonomy.pick_regime(empty, None)
    with pytest.raises(SolverError, match=r"no task may be supervised \(all are novel\)"):
        taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(
            novel=("normal", "reshading", "depth_zbuffer")))
    no_self = SMALL.filter(pa.compute.invert(pa.compute.and_(
        pa.compute.equal(SMALL.column("target"), "reshading"),
        pa.compute.equal(pa.compute.list_element(SMALL.column("sources"), 0), "self"))))
    with pytest.raises(SolverError, match=r"'reshading' has no `self` row in regime 1000.*--novel"):
        taxonomy.build_problem(no_self, taxonomy.ProblemSpec())
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec())
    for budget in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ConfigError, match=f"budget must be a finite number >= 0, got {budget}"):
            taxonomy.solve(problem, budget)
    with pytest.raises(ConfigError, match="backend must be one of .*got 'gurobi'"):
        taxonomy.solve(problem, 1, backend="gurobi")


def test_invalid_specs_are_refused_at_construction():
    with pytest.raises(ConfigError, match="max_order"):
        taxonomy.ProblemSpec(max_order=0)
    with pytest.raises(ConfigError, match="weight"):
        taxonomy.ProblemSpec(weight="sqrt")
    with pytest.raises(ConfigError, match=">= 0"):
        taxonomy.ProblemSpec(importance={"normal": -1.0})
    with pytest.raises(ConfigError, match="novel"):
        taxonomy.ProblemSpec(sources=("normal",), novel=("normal",))


def test_a_spare_budget_lists_no_supervised_task_that_serves_nothing(pub):
    # At budget 26 every task can be labelled; the solver may then also pick source-only tasks
    # that no chosen transfer reads (the objective does not see them). They are not listed.
    problem = taxonomy.build_problem(pub, taxonomy.ProblemSpec(regime=1000))
    result = taxonomy.solve(problem, 26)
    _check_feasible(problem, result, 26)
    used = {s for a in result.transfers for s in a.sources}
    for name in result.supervised:
        assert name in used or any(a.supervised and a.target == name for a in result.transfers)


def test_budget_curve_never_decreases_with_more_budget(pub):
    problem = taxonomy.build_problem(pub, taxonomy.ProblemSpec(max_order=2, regime=1000))
    objectives = [t.objective for t in taxonomy.budget_curve(problem, range(1, 9))]
    assert all(b >= a - 1e-12 for a, b in zip(objectives, objectives[1:]))


def test_json_output_has_the_design_contract_fields():
    result = taxonomy.solve(taxonomy.build_problem(SMALL, taxonomy.ProblemSpec()), 2)
    out = result.to_json()
    assert {"regime", "budget", "max_order", "objective", "supervised", "transfers", "quality",
            "gain"} <= set(out)
    assert out["budget"] == 2 and isinstance(out["budget"], int)
    assert set(out["transfers"][0]) == {"target", "sources", "supervised", "weight", "affinity",
                                        "quality", "gain"}


def test_parse_budgets_and_importance():
    assert solve_text.parse_budgets("1-3,8") == [1, 2, 3, 8]
    assert solve_text.parse_budgets("2,1") == [1, 2]
    with pytest.raises(ConfigError):
        solve_text.parse_budgets("one")
    # Budgets that slipped through: a NaN (dropped or misread), an empty entry, and a range
    # that made `solve --budgets 1-1000000` run for minutes (or exhaust memory).
    for spec, says in (("nan", "all finite and >= 0"), ("1,nan", "all finite"),
                       ("1,,2", "an empty entry"), ("1-1000000", "names 1000000 budgets")):
        with pytest.raises(ConfigError, match=says):
            solve_text.parse_budgets(spec)
    assert solve_text.parse_importance(["normal=2", "depth_zbuffer=0.5"]) == {
        "normal": 2.0, "depth_zbuffer": 0.5}
    with pytest.raises(ConfigError, match="TASK=WEIGHT"):
        solve_text.parse_importance(["normal"])
    with pytest.raises(ConfigError, match="importance of 'normal' given twice"):  # (the last
        solve_text.parse_importance(["normal=2", "normal=3"])  # one silently won)
    assert solve_text.parse_costs(["segment_semantic=3"]) == {"segment_semantic": 3.0}


def test_format_taxonomy_is_a_readable_table():
    text = solve_text.format_taxonomy(taxonomy.solve(taxonomy.build_problem(
        SMALL, taxonomy.ProblemSpec()), 1))
    assert "supervised (1): normal" in text and "(supervised)" in text


def test_random_encoder_is_never_supervised_unless_named(published_csv):
    from taskonomy_ray.published import load_published

    table = load_published(published_csv)
    problem = taxonomy.build_problem(table, taxonomy.ProblemSpec(max_order=1, regime=16000))
    assert "random" not in problem.supervisable
    named = taxonomy.build_problem(
        table, taxonomy.ProblemSpec(max_order=1, regime=16000, sources=("random", "normal")))
    assert "random" in named.supervisable
