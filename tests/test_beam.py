from itertools import combinations

import pyarrow as pa
import pytest

from taskonomy_ray import beam
from taskonomy_ray.errors import ConfigError
from taskonomy_ray.tables import AFFINITIES_SCHEMA
from taskonomy_ray.tasks import target_names


def _affinities(target: str, scores: dict[str, float], regime: int = 128) -> pa.Table:
    rows = [{"regime": regime, "target": target, "sources": [s], "order": 1, "affinity": a,
             "quality": 0.5, "gain": 0.5} for s, a in scores.items()]
    rows.append({"regime": regime, "target": target, "sources": ["depth_zbuffer", "reshading"],
                 "order": 2, "affinity": 9.0, "quality": 0.5, "gain": 0.5})
    return pa.Table.from_pylist(rows, schema=AFFINITIES_SCHEMA)


def test_full_dictionary_plans_the_paper_counts_per_regime():
    counts = beam.planned_counts()
    targets = len(target_names())
    assert targets == 22
    assert counts == {1: 22 * 26, 2: 22 * 10, 3: 22 * 10, 4: 22 * 15}
    assert counts[2] + counts[3] + counts[4] == 22 * 35


def test_first_order_sources_include_random_and_the_target_itself():
    sources = beam.first_order_sources("normal")
    assert "random" in sources and "normal" in sources and "jigsaw" in sources
    assert len(sources) == 26
    assert len(beam.first_order_sources("normal", include_self=False)) == 25


def test_source_only_tasks_are_never_targets():
    with pytest.raises(ConfigError, match="source-only"):
        beam.first_order_sources("jigsaw")
    assert "jigsaw" not in beam.first_order_plan()


def test_expansion_takes_pairs_triples_of_top5_and_quads_of_top6():
    scores = {"random": 0.9, "normal": 0.8, "reshading": 0.2, "depth_zbuffer": 0.15,
              "edge_occlusion": 0.12, "keypoints3d": 0.1, "principal_curvature": 0.09,
              "autoencoding": 0.05, "jigsaw": 0.01}
    combos = beam.expand_target(_affinities("normal", scores), "normal", 128)
    top6 = ["reshading", "depth_zbuffer", "edge_occlusion", "keypoints3d", "principal_curvature",
            "autoencoding"]
    want = {frozenset(c) for k in (2, 3) for c in combinations(top6[:5], k)}
    want |= {frozenset(c) for c in combinations(top6, 4)}
    assert {frozenset(c) for c in combos} == want
    assert len(combos) == 35
    groups = beam.by_order(combos)
    assert {k: len(v) for k, v in groups.items()} == {"2": 10, "3": 10, "4": 15}
    # neither random nor the target itself enters a combination, whatever its affinity
    assert not any({"random", "normal"} & set(c) for c in combos)


def test_combinations_are_spelt_in_registry_order():
    ranked = ["reshading", "autoencoding", "depth_zbuffer"]
    combos = beam.higher_order_sources(ranked, beam.BeamConfig(widths=(3,), max_order=2))
    assert ("autoencoding", "reshading") in combos
    assert beam.canonical(["reshading", "autoencoding"]) == ("autoencoding", "reshading")
    with pytest.raises(ConfigError, match=r"a transfer lists a source twice: \['normal', 'normal'"):
        beam.canonical(["normal", "normal"])


def test_beam_widths_and_max_order_are_configurable():
    ranked = [s for s in beam.first_order_sources("depth_zbuffer", include_self=False)
              if s != "random"]
    cfg = beam.BeamConfig(widths=(3, 4), max_order=3)
    combos = beam.higher_order_sources(ranked, cfg)
    assert len(combos) == 3 + 4
    assert beam.planned_counts(cfg=beam.BeamConfig(max_order=1)) == {1: 22 * 26}


def test_ranking_uses_only_the_requested_regime_and_first_order_rows():
    t = pa.concat_tables([_affinities("normal", {"reshading": 0.6, "depth_zbuffer": 0.4}, 128),
                          _affinities("normal", {"reshading": 0.1, "depth_zbuffer": 0.9}, 512)])
    assert beam.rank_sources(t, "normal", 512) == ["depth_zbuffer", "reshading"]
    with pytest.raises(ConfigError, match="span regimes"):
        beam.rank_sources(t, "normal")
    with pytest.raises(ConfigError, match="no first-order affinities"):
        beam.rank_sources(t, "depth_zbuffer", 128)


def test_bad_beam_configs_and_small_dictionaries_fail_with_the_fix():
    with pytest.raises(ConfigError, match="max_order"):
        beam.BeamConfig(widths=(5,), max_order=3)
    with pytest.raises(ConfigError, match="at least 3"):
        beam.BeamConfig(widths=(5, 2), max_order=3)
    with pytest.raises(ConfigError, match="lower beam max_order"):
        beam.planned_counts(["normal", "depth_zbuffer", "reshading", "random"])
    small = beam.planned_counts(["normal", "depth_zbuffer", "reshading", "random"],
                                beam.BeamConfig(max_order=2))
    assert small == {1: 3 * 4, 2: 3 * 1}


def test_the_affinities_table_as_computed_ranks_without_its_gold_row():
    # compute_affinities' output holds the target's `self` (gold) row, of order 1: not a source.
    from test_affinity import _run

    from taskonomy_ray import affinity

    table = affinity.compute_affinities(_run("normal"))
    assert ["self"] in table.column("sources").to_pylist()
    ranked = beam.rank_sources(table, "normal", 1000)
    assert "self" not in ranked and set(ranked) == {"depth_zbuffer", "reshading"}


def test_too_few_ranked_sources_cost_the_orders_they_cannot_fill_only():
    cfg = beam.BeamConfig(widths=(3, 3, 4), max_order=4)
    combos, skipped = beam.choose(["normal", "reshading", "depth_zbuffer"], cfg)
    assert skipped == [4] and {len(c) for c in combos} == {2, 3} and len(combos) == 3 + 1
    assert beam.choose(["normal"], cfg) == ([], [2, 3, 4])
    assert beam.choose([], cfg) == ([], [2, 3, 4])
