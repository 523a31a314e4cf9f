"""AHP affinities (step 3): textbook cases, tournament properties, and the losses-table contract."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import spearmanr

from taskonomy_ray import affinity, published, tables
from taskonomy_ray.errors import DataError

IMAGES = [f"im{i:03d}" for i in range(40)]


def _unit(target, sources, losses, regime=1000, kind="transfer", unit=None, images=IMAGES):
    unit = unit or f"{target}-{'+'.join(sources)}-{regime}"
    return tables.losses_table(unit, kind, target, sources, regime, images, losses)


def _run(target="normal", regime=1000, seed=0, extra=()):
    """Gold, scratch, random, own encoder and three first-order transfers into `target`."""
    rng = np.random.default_rng(seed)
    base = rng.random(len(IMAGES)).astype(np.float32) + 0.5
    parts = [
        _unit(target, ["self"], base * 0.5, regime=100_000, kind="gold"),
        _unit(target, ["pixels"], base * 1.5, regime=regime, kind="scratch"),
        _unit(target, ["random"], base * 2.0, regime=regime),
        _unit(target, [target], base * 0.7, regime=regime),
        _unit(target, ["depth_zbuffer"], base * 0.9 + rng.normal(0, 0.2, len(IMAGES)), regime),
        _unit(target, ["reshading"], base * 1.2 + rng.normal(0, 0.2, len(IMAGES)), regime),
        _unit(target, ["depth_zbuffer", "reshading"], base * 0.8, regime=regime),
        *extra,
    ]
    return pa.concat_tables(parts)


def _by_sources(table, regime=None):
    return {tuple(r["sources"]): r for r in table.to_pylist()
            if regime is None or r["regime"] == regime}


def test_ahp_matches_saatys_textbook_example():
    # Saaty's classic 3x3 pairwise matrix; its priority vector is (0.157, 0.594, 0.249).
    a = np.array([[1, 1 / 3, 1 / 2], [3, 1, 3], [2, 1 / 3, 1]])
    wins = a / (1 + a)  # the win matrix whose ratio W / W^T is `a`
    np.testing.assert_allclose(affinity.ahp_weights(wins), [0.1571, 0.5936, 0.2493], atol=1e-4)


def test_consistent_tournament_returns_the_strengths_exactly():
    strength = np.array([5.0, 1.0, 3.0, 0.5])
    wins = strength[:, None] / (strength[:, None] + strength[None, :])  # Bradley-Terry
    np.testing.assert_allclose(affinity.ahp_weights(wins), strength / strength.sum(), rtol=1e-9)


def test_a_transfer_that_always_wins_is_clipped_to_the_papers_bounds():
    # W is clipped to [0.001, 0.999] before W / W^T, so the ratio is at most 999: weights 999:1.
    wins = np.array([[0.5, 1.0], [0.0, 0.5]])
    np.testing.assert_allclose(affinity.ahp_weights(wins), [0.999, 0.001], rtol=1e-9)
    np.testing.assert_allclose(affinity.ahp_weights(wins, clip=(0.25, 0.75)), [0.75, 0.25])


def test_permuting_competitors_permutes_the_affinities():
    rng = np.random.default_rng(3)
    losses = rng.random((6, 50))
    perm = rng.permutation(6)
    w = affinity.ahp_weights(affinity.win_matrix(losses))
    w_perm = affinity.ahp_weights(affinity.win_matrix(losses[perm]))
    np.testing.assert_allclose(w_perm, w[perm], rtol=1e-10)


def test_win_matrix_counts_ties_half_and_is_complementary():
    losses = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 5.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    w = affinity.win_matrix(losses)
    # row 0 vs row 1: tie, lose, win, lose -> (0.5 + 0 + 1 + 0) / 4
    assert w[0, 1] == pytest.approx(0.375)
    assert w[0, 2] == 1.0 and w[2, 0] == 0.0
    np.testing.assert_allclose(w + w.T, 1.0)
    np.testing.assert_allclose(np.diag(w), 0.5)


def test_win_rate_against_a_baseline_counts_ties_half():
    # against the baseline: tie, win, tie, lose -> (1 + 0.5 * 2) / 4
    rate = affinity.win_rate(np.array([[1.0, 2.0, 3.0, 4.0]]), np.array([1.0, 3.0, 3.0, 0.0]))
    assert rate[0] == 0.5


def test_win_matrix_is_chunk_size_independent(monkeypatch):
    losses = np.random.default_rng(0).integers(0, 4, (5, 1001)).astype(np.float32)  # many ties
    full = affinity.win_matrix(losses)
    monkeypatch.setattr(affinity, "_CHUNK", 25)  # one image per block
    np.testing.assert_array_equal(affinity.win_matrix(losses), full)


def test_compute_affinities_ranks_the_transfer_that_always_wins_first():
    always = _unit("normal", ["edge_occlusion"], np.full(len(IMAGES), 1e-3, np.float32))
    table = affinity.compute_affinities(_run(extra=[always]))
    rows = _by_sources(table)
    best = max(rows.values(), key=lambda r: r["affinity"])
    assert tuple(best["sources"]) == ("edge_occlusion",)
    assert best["quality"] == 1.0 and best["gain"] == 1.0


def test_compute_affinities_follows_the_schema_and_sums_to_one():
    table = affinity.compute_affinities(_run())
    assert table.schema.equals(tables.AFFINITIES_SCHEMA)
    assert sum(table.column("affinity").to_pylist()) == pytest.approx(1.0)
    orders = {tuple(r["sources"]): r["order"] for r in table.to_pylist()}
    assert orders[("depth_zbuffer", "reshading")] == 2


def test_gold_is_in_the_tournament_and_scratch_only_scores_gain():
    rows = _by_sources(affinity.compute_affinities(_run()))
    assert ("pixels",) not in rows  # scratch is not ranked
    assert {("self",), ("random",), ("normal",)} <= set(rows)  # gold, random, own encoder are
    assert rows[("self",)]["quality"] == 0.5  # gold ties with itself
    assert rows[("self",)]["gain"] == 1.0  # losses 0.5x beat scratch's 1.5x everywhere
    assert rows[("random",)]["gain"] == 0.0 and rows[("random",)]["quality"] == 0.0
    # gold wins every image against every transfer here, so it has the largest affinity
    assert max(rows.values(), key=lambda r: r["affinity"])["sources"] == ["self"]


def test_gold_joins_every_regime_and_targets_are_ranked_separately():
    table = affinity.compute_affinities(pa.concat_tables([
        _run("normal", 1000), _run("normal", 16000, seed=1).filter(
            pa.compute.not_equal(pa.compute.field("kind"), "gold")),
        _run("depth_euclidean", 1000, seed=2)]))
    groups = {}
    for r in table.to_pylist():
        groups.setdefault((r["regime"], r["target"]), []).append(r)
    assert set(groups) == {(1000, "normal"), (16000, "normal"), (1000, "depth_euclidean")}
    for rows in groups.values():
        assert sum(r["affinity"] for r in rows) == pytest.approx(1.0)
        assert any(r["sources"] == ["self"] for r in rows)


def test_row_order_of_the_losses_table_does_not_matter():
    table = _run()
    shuffled = table.take(np.random.default_rng(5).permutation(table.num_rows))
    a, b = _by_sources(affinity.compute_affinities(table)), _by_sources(
        affinity.compute_affinities(shuffled))
    for key in a:
        assert a[key]["affinity"] == pytest.approx(b[key]["affinity"], rel=1e-12)


def test_non_finite_loss_is_refused_naming_the_unit():
    table = _run()
    loss = table.column("loss").to_numpy().copy()
    units = table.column("unit").to_pylist()
    bad = units.index("normal-reshading-1000")
    loss[bad] = np.nan
    table = table.set_column(table.schema.get_field_index("loss"), "loss",
                             pa.array(loss, pa.float32()))
    with pytest.raises(DataError, match="normal-reshading-1000"):
        affinity.compute_affinities(table)


def test_transfer_missing_test_images_is_refused_naming_the_unit():
    short = _unit("normal", ["keypoints3d"], np.ones(30, np.float32), unit="short-unit",
                  images=IMAGES[:30])
    with pytest.raises(DataError, match="short-unit.*no loss on 10 of the 40"):
        affinity.compute_affinities(_run(extra=[short]))


def test_a_transfer_written_twice_is_refused():
    twice = _unit("normal", ["reshading"], np.ones(len(IMAGES), np.float32), unit="again")
    with pytest.raises(DataError, match=r"duplicate.*units \['again', 'normal-reshading-1000'\]"):
        affinity.compute_affinities(_run(extra=[twice]))


def test_a_regime_whose_transfers_are_not_in_yet_gets_no_rows():
    # A partial sweep: the 16k scratch network is done, no 16k transfer yet. The regime must not
    # appear as a lone `self` row (affinity 1), which a solver would take for a finished regime.
    scratch_16k = _unit("normal", ["pixels"], np.ones(len(IMAGES), np.float32), regime=16000,
                        kind="scratch")
    table = affinity.compute_affinities(_run(extra=[scratch_16k]))
    assert set(table.column("regime").to_pylist()) == {1000}


def test_missing_gold_or_scratch_is_a_clear_error():
    table = _run()
    no_gold = table.filter(pa.compute.not_equal(pa.compute.field("kind"), "gold"))
    with pytest.raises(DataError, match="gold-standard"):
        affinity.compute_affinities(no_gold)
    no_scratch = table.filter(pa.compute.not_equal(pa.compute.field("kind"), "scratch"))
    with pytest.raises(DataError, match="scratch"):
        affinity.compute_affinities(no_scratch)


def test_ranking_alone_needs_no_scratch_network_and_leaves_gain_unknown():
    # The beam search ranks by affinity: it need not wait for (or fail with) a scratch network.
    table = _run()
    no_scratch = table.filter(pa.compute.not_equal(pa.compute.field("kind"), "scratch"))
    ranked = affinity.compute_affinities(no_scratch, need_scratch=False).to_pylist()
    full = affinity.compute_affinities(table).to_pylist()
    assert [r["affinity"] for r in ranked] == [r["affinity"] for r in full]
    assert all(np.isnan(r["gain"]) for r in ranked)


def test_nothing_to_rank_is_a_clear_error_naming_the_next_step():
    with pytest.raises(DataError, match="losses table is empty; run `taskonomy-ray sweep` first"):
        affinity.compute_affinities(_run().slice(0, 0))
    baselines = _run().filter(pa.compute.is_in(pa.compute.field("kind"),
                                               pa.array(["gold", "scratch"])))
    with pytest.raises(DataError, match="no transfers to rank: the losses table holds only"):
        affinity.compute_affinities(baselines)
    with pytest.raises(DataError, match="a tournament needs at least one test image"):
        affinity.win_matrix(np.zeros((3, 0)))


def test_write_affinities_stores_the_table_in_the_run_storage(tmp_path):
    storage = tables.Storage(str(tmp_path / "run"))
    for unit in _run().group_by("unit").aggregate([]).column("unit").to_pylist():
        part = _run().filter(pa.compute.equal(pa.compute.field("unit"), unit))
        storage.write_losses(unit, part)
    written = affinity.write_affinities(storage)
    assert storage.read_affinities().equals(written)


def test_ahp_on_a_tournament_rebuilt_from_published_quality_tracks_published_affinity(
        published_csv):
    # Only each transfer's win rate against gold is published, not the full tournament; under a
    # Bradley-Terry model those win rates determine one. Our AHP on it should rank transfers
    # much like the published affinities do (an approximation, so a rank-correlation check).
    rows = [r for r in published.read_published_csv(published_csv).to_pylist()
            if r["affinity"] is not None and r["quality"] is not None]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["regime"], r["target"]), []).append(r)
    rho = []
    for group in groups.values():
        q = np.clip([r["quality"] for r in group], *affinity.CLIP)
        odds = q / (1 - q)
        wins = odds[:, None] / (odds[:, None] + odds[None, :])
        ours = affinity.ahp_weights(wins)
        rho.append(spearmanr(ours, [r["affinity"] for r in group]).statistic)
    assert len(rho) == 44
    assert np.median(rho) > 0.9
