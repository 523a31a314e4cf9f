"""Evaluation (step 5): per-target win rates, means, and significance against random policies."""

from __future__ import annotations

import numpy as np
import pytest
from test_taxonomy import SMALL, _table

from taskonomy_ray import evaluate, published, taxonomy
from taskonomy_ray.errors import ConfigError, SolverError


@pytest.fixture(scope="module")
def pub_problem(published_csv):
    table = published.read_published_csv(published_csv)
    return taxonomy.build_problem(table, taxonomy.ProblemSpec(max_order=3, regime=16000))


def test_target_scores_and_means_come_from_the_table():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec())
    result = taxonomy.solve(problem, 1)
    rows = evaluate.target_scores(result)
    assert [r["target"] for r in rows] == list(problem.targets)
    assert all(r["gain"] == 0.6 and r["quality"] == 0.3 for r in rows)  # SMALL's constants
    m = evaluate.means(result)
    assert m == {"gain": pytest.approx(0.6), "quality": pytest.approx(0.3), "targets": 3}
    only = evaluate.means(result, transfers_only=True)
    assert only["targets"] == 2  # normal is supervised


# SMALL's transfers with a Quality and a Gain of their own: every Quality lies in [0.11, 0.30]
# and every Gain in [0.71, 0.90], so a mean taken of the wrong column cannot pass for the other.
DISTINCT = _table([
    ("normal", ["self"], 0.5, 0.30, 0.90), ("normal", ["reshading"], 0.2, 0.12, 0.72),
    ("normal", ["depth_zbuffer"], 0.1, 0.11, 0.71),
    ("reshading", ["self"], 0.4, 0.29, 0.89), ("reshading", ["normal"], 0.3, 0.15, 0.75),
    ("reshading", ["normal", "depth_zbuffer"], 0.36, 0.16, 0.76),
    ("reshading", ["depth_zbuffer"], 0.05, 0.13, 0.73),
    ("depth_zbuffer", ["self"], 0.6, 0.28, 0.88), ("depth_zbuffer", ["normal"], 0.2, 0.14, 0.74),
    ("depth_zbuffer", ["reshading"], 0.1, 0.17, 0.77),
])


def test_a_taxonomys_quality_and_gain_are_the_means_over_its_targets():
    result = taxonomy.solve(taxonomy.build_problem(DISTINCT, taxonomy.ProblemSpec()), 1)
    # normal supervised (0.30, 0.90); reshading and depth_zbuffer from normal
    assert result.supervised == ("normal",)
    assert result.quality == pytest.approx((0.30 + 0.15 + 0.14) / 3)
    assert result.gain == pytest.approx((0.90 + 0.75 + 0.74) / 3)
    assert evaluate.means(result, transfers_only=True) == {
        "quality": pytest.approx((0.15 + 0.14) / 2), "gain": pytest.approx((0.75 + 0.74) / 2),
        "targets": 2}


def test_random_policies_score_quality_and_gain_each_from_its_own_column():
    problem = taxonomy.build_problem(DISTINCT, taxonomy.ProblemSpec(max_order=2))
    scores = evaluate.random_policies(problem, 2, n=100, seed=0)
    assert np.all((scores[:, 1] >= 0.11) & (scores[:, 1] <= 0.30))
    assert np.all((scores[:, 2] >= 0.71) & (scores[:, 2] <= 0.90))
    result = taxonomy.solve(problem, 2)
    sig = evaluate.significance(problem, result, n=100, seed=0)
    for k, metric in enumerate(evaluate.METRICS):
        np.testing.assert_array_equal(sig[metric].random, scores[:, k])
    assert (sig["quality"].taxonomy, sig["gain"].taxonomy) == (result.quality, result.gain)


def test_random_policies_that_equal_the_taxonomy_count_half():
    # A budget that affords every task: each random policy supervises all three, as does the
    # taxonomy, so every draw ties it: percentile 50, and all draw at least as well: p = 1.
    problem = taxonomy.build_problem(DISTINCT, taxonomy.ProblemSpec())
    result = taxonomy.solve(problem, 3)
    assert set(result.supervised) == set(problem.targets)
    for sig in evaluate.significance(problem, result, n=20, seed=0).values():
        assert sig.percentile == 50.0 and sig.p_value == 1.0


def test_random_policies_are_feasible_and_within_budget():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(max_order=2))
    scores = evaluate.random_policies(problem, 1, n=200, seed=1)
    assert scores.shape == (200, 3)
    optimum = taxonomy.solve(problem, 1).objective
    assert np.all(scores[:, 0] <= optimum + 1e-12)  # nothing beats the proven optimum
    assert len(np.unique(scores[:, 0].round(12))) > 1  # and they do vary


def test_random_policies_are_reproducible_from_the_seed():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec())
    a = evaluate.random_policies(problem, 2, n=50, seed=7)
    b = evaluate.random_policies(problem, 2, n=50, seed=7)
    np.testing.assert_array_equal(a, b)


def test_random_policies_do_not_depend_on_the_solvers_pruning(published_csv):
    # Pruning drops transfers a solution never needs (dominated ones); a random policy may
    # still draw them, so the baseline is the same with pruning on or off.
    table = published.read_published_csv(published_csv)
    spec = taxonomy.ProblemSpec(max_order=3, regime=16000)
    pruned = taxonomy.build_problem(table, spec)
    full = taxonomy.build_problem(table, spec, prune=False)
    assert len(pruned.edges) < len(full.edges)
    np.testing.assert_array_equal(evaluate.random_policies(pruned, 4, n=50, seed=3),
                                  evaluate.random_policies(full, 4, n=50, seed=3))


def test_taxonomy_beats_random_policies_on_published_data(pub_problem):
    # The paper's significance test: the taxonomy against random feasible policies of the same
    # budget. The optimum of the objective can never fall below any of them.
    result = taxonomy.solve(pub_problem, 4)
    sig = evaluate.significance(pub_problem, result, n=300, seed=0)
    assert sig["objective"].percentile > 99.0
    assert sig["objective"].p_value == pytest.approx(1 / 301)  # (0 at least as good + 1) / 301
    assert np.all(sig["objective"].random <= result.objective + 1e-12)
    summary = sig["gain"].to_json()
    assert summary["n"] == 300 and 0 <= summary["random_mean"] <= 1


def test_impossible_random_sampling_and_bad_counts_are_clear_errors():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(novel=("reshading",)))
    with pytest.raises(SolverError, match="raise the budget"):
        evaluate.random_policies(problem, 0, n=5)
    with pytest.raises(SolverError, match="only 0 of 5 random policies were feasible"):
        evaluate.random_policies(problem, 0, n=5)
    with pytest.raises(ConfigError, match="number of random policies must be >= 1, got 0"):
        evaluate.random_policies(problem, 1, n=0)


def test_exhaustive_search_refuses_problems_too_large_to_enumerate(pub_problem):
    with pytest.raises(SolverError, match="too large"):
        evaluate.exhaustive_optimum(pub_problem, 12, max_subsets=1000)


def test_evaluate_policy_scores_a_given_supervised_set():
    problem = taxonomy.build_problem(SMALL, taxonomy.ProblemSpec(max_order=2))
    policy = evaluate.evaluate_policy(problem, frozenset({"normal", "depth_zbuffer"}))
    assert policy is not None
    assert policy.objective == pytest.approx(taxonomy.solve(problem, 2).objective)
    assert evaluate.evaluate_policy(problem, frozenset()) is None  # nothing supervised


def test_exhaustive_search_tries_every_set_that_fractional_costs_afford():
    # 0.3 // 0.1 is 2.0 in floating point: the reference must still try all three tasks.
    spec = taxonomy.ProblemSpec(costs={"normal": 0.1, "depth_zbuffer": 0.1, "reshading": 0.1})
    problem = taxonomy.build_problem(SMALL, spec)
    best, _ = evaluate.exhaustive_optimum(problem, 0.3)
    assert best == pytest.approx(taxonomy.solve(problem, 0.3).objective, abs=1e-12)


def test_a_novel_task_gets_the_transfer_the_bip_gives_it_with_every_other_task_supervised(
        published_csv):
    # All-for-one: the novel task may not be supervised nor be a source; with the budget to
    # supervise everything else, the BIP serves it by its best transfer from the others.
    table = published.read_published_csv(published_csv)
    found = {(n.target, n.max_order): n for n in evaluate.novel_tasks(table, (1, 3), 16000)}
    for target in ("normal", "egomotion", "segment_semantic", "vanishing_point"):
        for k in (1, 3):
            problem = taxonomy.build_problem(table, taxonomy.ProblemSpec(
                max_order=k, regime=16000, novel=(target,)))
            solved = taxonomy.solve(problem, len(problem.supervisable))
            served = next(a for a in solved.transfers if a.target == target)
            mine = found[(target, k)]
            assert not served.supervised and target not in mine.sources
            assert len(mine.sources) <= k
            assert mine.weight == pytest.approx(served.weight, abs=1e-12)
            assert (mine.quality, mine.gain) == (served.quality, served.gain)


def test_novel_tasks_are_served_no_worse_as_the_order_grows(published_csv):
    table = published.read_published_csv(published_csv)
    found = evaluate.novel_tasks(table, (1, 2, 4), 16000)
    by = {(n.target, n.max_order): n.weight for n in found}
    targets = {n.target for n in found}
    assert len(targets) == 22 and len(found) == 66
    for t in targets:
        assert by[(t, 1)] <= by[(t, 2)] <= by[(t, 4)]
