"""The HTML report: built from the published results and from a tiny sweep storage.

The sweep storage is made here the way a sweep leaves it (run.json, plan.json, gold checkpoints
and losses of real tiny trainings, synthetic scratch and transfer losses, the ledger, sweep.json),
so every section of the page has data to show.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import make_root

from taskonomy_ray import (
    __version__,
    affinity,
    checkpoints,
    cli,
    evaluate,
    report,
    report_flags,
    tables,
    taxonomy,
    training,
)
from taskonomy_ray.errors import ConfigError, SolverError
from taskonomy_ray.published import load_published
from taskonomy_ray.sweep import config as sweep_config
from taskonomy_ray.sweep import ledger, plan
from taskonomy_ray.sweep import units as sweep_units

GOLD_TASKS = ("normal", "class_object", "segment_unsup2d")
REGIME = 4
FAST = {"budgets": (1, 3), "orders": (1, 2), "drawn": (3,), "random_policies": 20}


def sweep_config_for(root: Path) -> sweep_config.SweepConfig:
    """A three-task sweep over a fixture root, with a network small enough to train in seconds."""
    return sweep_config.from_dict({
        "name": "report-test", "data": {"root": str(root)}, "tasks": list(GOLD_TASKS),
        "regimes": [REGIME], "max_order": 2,
        "network": {"model": {"image_size": 32, "width": 4, "decoder_width": 8, "head_width": 16,
                              "embedding_dim": 8},
                    "train": {"steps": 4, "batch_size": 4}},
        "resources": {"gold_trainer": "task"}, "solve": {"budget": 1, "max_order": 2}})


def _synthetic(unit: str, kind: str, target: str, sources: list[str], gold: dict[str, float],
               rng: np.random.Generator, worse: tuple[float, float]) -> tables.pa.Table:
    """Losses of a baseline or transfer: the gold loss times a random factor per image."""
    images = sorted(gold)
    loss = [gold[i] * rng.uniform(*worse) for i in images]
    return tables.losses_table(unit, kind, target, sources, REGIME, images, loss)


def build_sweep_storage(tmp: Path) -> tuple[tables.Storage, sweep_config.SweepConfig]:
    """A finished tiny sweep's storage; the `random` target's beam unit is recorded as failed."""
    torch.set_num_threads(1)
    cfg = sweep_config_for(make_root(tmp / "data", buildings=4, points=3, views=3, size=32))
    storage = tables.Storage(str(tmp / "store"))
    storage.write_json(tables.RUN_FILE, {"config": cfg.to_json(), "version": __version__})
    units = plan.build(cfg)
    storage.write_json("plan.json", {"units": [u.to_json() for u in units]})
    rng, golds = np.random.default_rng(0), {}
    for task in GOLD_TASKS:
        key = plan.gold_key(cfg, task)
        result = training.train_gold(task, cfg.data.root, cfg.gold_network(), unit=key,
                                     ckpt_dir=tmp / "ckpt" / task, splits=sweep_units.splits(cfg))
        storage.write_bytes(plan.checkpoint_path(key),
                            (tmp / "ckpt" / task / checkpoints.CHECKPOINT_FILE).read_bytes())
        storage.write_losses(key, result.losses)
        golds[task] = dict(zip(result.losses["image"].to_pylist(),
                               result.losses["loss"].to_pylist()))
    for u in units:
        if u.stage == "scratch":
            t = u.params["target"]
            storage.write_losses(u.key, _synthetic(u.key, "scratch", t, ["pixels"], golds[t],
                                                   rng, (0.9, 1.6)))
        if u.stage == "transfer":
            t = u.params["target"]
            parts = [_synthetic(u.key, "transfer", t, s, golds[t], rng,
                                (2.0, 3.0) if s == ["random"] else (0.7, 2.0))
                     for s in u.params["source_sets"]]
            pair = [s for s in GOLD_TASKS if s != t]
            key2 = plan.transfer_key(cfg, t, REGIME, 2, [pair])
            storage.write_losses(key2, _synthetic(key2, "transfer", t, pair, golds[t], rng,
                                                  (0.6, 1.5)))
            storage.write_losses(u.key, tables.pa.concat_tables(parts))
    table = affinity.write_affinities(storage)
    solved = taxonomy.solve_taxonomy(table, taxonomy.ProblemSpec(max_order=2), 1)
    storage.write_json("taxonomy.json", solved.to_json())
    group = next(u for u in units if u.stage == "transfer")  # as if a source had failed
    storage.write_json(plan.partial_path(group.key), {  # ...and one transfer had diverged
        "without": [], "left_out": [["jigsaw"], ["random"]], "sources": ["jigsaw"],
        "diverged": [{"sources": ["random"], "why": "non-finite training loss at step 3"}]})
    failed = plan.beam_key(cfg, "normal", REGIME)
    ledger.record(storage, failed, "started")
    ledger.record(storage, failed, "failed", error="RuntimeError: out of memory")
    storage.write_json("sweep.json", {"counts": {}, "failures": {failed: "out of memory"},
                                      "wall_s": 12.5, "stats": {
                                          "stage_span_s": {"gold": 7.25}, "unit_s": {"gold": 9.0}}})
    return storage, cfg


@pytest.fixture(scope="module")
def sweep_storage(tmp_path_factory: pytest.TempPathFactory):
    return build_sweep_storage(tmp_path_factory.mktemp("report-sweep"))


def _page(index: Path) -> str:
    text = index.read_text()
    for src in re.findall(r'<img src="([^"]+)"', text):
        data = (index.parent / html.unescape(src)).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", src
    return text


def test_published_report_shows_what_the_solver_and_significance_test_compute(
        published_csv: Path, tmp_path: Path) -> None:
    index = report.write_report(published_csv, tmp_path / "out", published=True, **FAST)
    page = _page(index)
    assert {"affinity.png", "task_tree.png", "budget_curve.png"} <= {
        p.name for p in index.parent.iterdir()}
    problem = taxonomy.build_problem(load_published(published_csv),
                                     taxonomy.ProblemSpec(max_order=2))
    solved = taxonomy.solve(problem, 3)
    sig = evaluate.significance(problem, solved, 20, 0)
    assert f"{solved.objective:.3f}" in page and ", ".join(solved.supervised) in page
    assert f"{sig['objective'].percentile:.1f}" in page
    row = re.search(r'<td class="num">2</td><td class="num">3</td>.*?</tr>', page, re.S).group()
    assert f'<td class="num">{sig["objective"].p_value:.3f}</td>' in row  # its p-value too
    served = [a.gain for a in solved.transfers if not a.supervised]  # and transfer-only means
    assert f'<td class="num">{np.mean(served):.3f}</td>' in row
    assert "square root of its affinity" in page  # what the objective sums, said
    # ...and what an affinity is: a rank within its target's row, with `random` a baseline.
    assert "ranks\na source among the others into the same target" in page
    assert "the baseline every useful source should\nbeat" in page
    for a in solved.transfers:
        assert f"<td>{a.target}</td>" in page
    assert "taxonomy_o2_b3.png" in page and "taxonomy_o1_b3.png" in page
    assert 'src="novel_tasks.png"' in page  # generalisation to novel tasks, all-for-one
    novel = evaluate.novel_tasks(load_published(published_csv), FAST.get("orders", (1, 2, 4)),
                                 16000)
    for k in sorted({n.max_order for n in novel}):
        mean = np.mean([n.gain for n in novel if n.max_order == k])
        assert f'<td class="num">{mean:.3f}</td>' in page
    assert "Run facts" not in page  # sweep-only sections are absent
    assert not re.search(r'(src|href)="(https?:)?//', page)  # self-contained: nothing fetched


def test_budgets_that_cannot_be_met_are_named_in_the_page(published_csv: Path,
                                                          tmp_path: Path) -> None:
    index = report.write_report(published_csv, tmp_path, published=True,
                                **{**FAST, "budgets": (0, 3, 40), "orders": (1, 30)})
    page = index.read_text()
    assert "order 1: budgets 0, 40 are outside [1, 25]" in page  # 25: `random` is not supervisable
    assert "order 30 exceeds the table&#39;s largest order (24)" in page


def test_a_report_under_supervision_costs_solves_every_taxonomy_with_them(
        published_csv: Path, tmp_path: Path) -> None:
    # The unit-cost taxonomy's first supervised task made dearer than the budget: every curve
    # point and drawing is solved without it, and the page says under which costs.
    table = load_published(published_csv)
    plain = taxonomy.solve(taxonomy.build_problem(table, taxonomy.ProblemSpec(max_order=2)), 3)
    dear = plain.supervised[0]
    index = report.write_report(published_csv, tmp_path, published=True,
                                **{**FAST, "budgets": (3,), "orders": (2,)},
                                costs={dear: 4}, importance={"normal": 2})
    page = index.read_text()
    spec = taxonomy.ProblemSpec(max_order=2, costs={dear: 4}, importance={"normal": 2})
    solved = taxonomy.solve(taxonomy.build_problem(table, spec), 3)
    assert dear not in solved.supervised and f"{solved.objective:.3f}" in page
    assert f"supervision costs {dear}=4 (others 1): a budget limits the supervised" in page
    assert "target importance normal=2 (others 1)" in page
    # ...and the budgets above what supervising every task costs are named in those units.
    index = report.write_report(published_csv, tmp_path, published=True,
                                **{**FAST, "budgets": (3, 40), "orders": (1,)}, costs={dear: 4})
    assert "order 1: budgets 40 are outside [1, 28]" in index.read_text()  # 25 tasks, one at 4


def test_task_tree_joins_sources_with_identical_transfer_patterns_first() -> None:
    a = np.array([[0.5, 0.5, 0.1, 0.2], [0.1, 0.1, 0.6, 0.3], [0.2, 0.2, 0.1, 0.4]])
    tree = report.task_tree(a)
    leaves = tree["leaves"]
    assert abs(leaves.index(0) - leaves.index(1)) == 1  # sources 0 and 1 have equal columns
    assert min(min(d) for d in tree["dcoord"]) == 0 and max(tree["dcoord"][0]) == 0


def test_sweep_report_shows_samples_sanity_and_run_facts(sweep_storage, tmp_path: Path) -> None:
    storage, cfg = sweep_storage
    index = report.write_report(storage.uri, **FAST)
    assert index == Path(storage.path("report", "index.html"))
    page = _page(index)
    for task in GOLD_TASKS:
        assert f'src="samples_{task}.png"' in page
    losses = storage.read_losses().to_pylist()
    gold = {r["image"]: r["loss"] for r in losses
            if r["kind"] == "gold" and r["target"] == "normal"}
    rand = {r["image"]: r["loss"] for r in losses if r["target"] == "normal"
            and r["sources"] == ["random"]}
    expect = np.mean([gold[i] < rand[i] for i in gold])
    assert re.search(rf"<td>normal</td><td class=\"num\">{REGIME}</td><td class=\"num\">"
                     rf"{len(gold)}</td>\s*<td class=\"num\">{expect:.2f}</td>", page)
    assert "RuntimeError: out of memory" in page and plan.beam_key(cfg, "normal", REGIME) in page
    group = next(u for u in plan.build(cfg) if u.stage == "transfer")
    assert re.search(rf"<code>{group.key}</code></td><td>jigsaw</td>", page)  # trained without
    planned = len(group.params["source_sets"]) * sum(
        u.stage == "transfer" for u in plan.build(cfg))  # order 1: one group per target
    assert re.search(rf'<td class="num">1</td><td class="num">{planned - 2}</td>\s*'
                     rf'<td class="num">{planned}</td>', page)  # the partial group lacks two
    assert re.search(rf"<code>{group.key}</code></td><td>random</td><td>non-finite training "
                     "loss at step 3</td>", page)
    assert "<td class=\"num\">7.2</td>" in page and "12.5 s" in page  # from sweep.json
    assert "<title>Taskonomy report: sweep report-test</title>" in page  # the run's own name
    assert "the sweep's own solve (taxonomy.json)" in page  # its budget 1, order 2 is drawn
    assert "not measured by a sweep" in page


def test_sweep_report_without_its_dataset_says_so(sweep_storage, tmp_path: Path) -> None:
    storage, _ = sweep_storage
    index = report.write_report(storage.uri, tmp_path / "elsewhere", data_root=str(tmp_path / "x"),
                                **FAST)
    page = index.read_text()
    assert "is not here, so no test images can be shown" in page and "samples_" not in page


def test_a_target_that_every_transfer_loses_on_every_image_is_flagged(tmp_path: Path) -> None:
    # Every transfer into depth lost to gold on every image (a bias out of reach): the report
    # must say so rather than show a taxonomy that can only supervise depth.
    from test_taxonomy import SMALL, _table

    table = _table([
        ("normal", ["self"], 0.5, 0.5, 0.5), ("normal", ["reshading"], 0.3, 0.2, 0.4),
        ("normal", ["depth_zbuffer"], 0.2, 0.1, 0.3),
        ("reshading", ["self"], 0.5, 0.5, 0.5), ("reshading", ["normal"], 0.3, 0.3, 0.6),
        ("reshading", ["depth_zbuffer"], 0.2, 0.1, 0.3),
        ("depth_zbuffer", ["self"], 0.98, 0.5, 0.5), ("depth_zbuffer", ["normal"], 0.01, 0.0, 0.0),
        ("depth_zbuffer", ["reshading"], 0.01, 0.0, 0.0),
    ])
    assert report_flags.hopeless_targets(table, 1000) == ["depth_zbuffer"]
    tables.Storage(str(tmp_path)).write_affinities(table)
    page = report.write_report(tmp_path, tmp_path / "out", **FAST).read_text()
    assert "Every transfer into depth_zbuffer (from every source" in page
    assert report_flags.hopeless_targets(SMALL, 1000) == []  # some transfer wins somewhere


def test_a_target_the_random_encoder_leads_is_flagged(tmp_path: Path) -> None:
    # The untrained encoder is the baseline every useful source should beat: where its transfer
    # ranks first, no learned representation helps and the target's edges say little.
    from test_taxonomy import _table

    def table(random_into_keypoints):
        return _table([
            ("normal", ["self"], 0.5, 0.5, 0.5), ("normal", ["reshading"], 0.3, 0.3, 0.6),
            ("normal", ["random"], 0.2, 0.1, 0.3),
            ("keypoints2d", ["self"], 0.3, 0.5, 0.5), ("keypoints2d", ["normal"], 0.1, 0.2, 0.4),
            ("keypoints2d", ["random"], random_into_keypoints, 0.3, 0.5),
            ("reshading", ["self"], 0.5, 0.5, 0.5), ("reshading", ["normal"], 0.5, 0.4, 0.6),
        ])

    st = tables.Storage(str(tmp_path))
    for random_affinity, flagged in ((0.6, ["keypoints2d"]), (0.05, [])):
        assert report_flags.random_led_targets(table(random_affinity), 1000) == flagged
        st.write_affinities(table(random_affinity))
        page = report.write_report(tmp_path, tmp_path / "out", **FAST).read_text()
        assert ("Into keypoints2d the untrained <code>random</code>" in page) == bool(flagged)


def test_missing_affinities_and_bad_settings_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no sweep found in"):
        report.write_report(tmp_path, tmp_path / "out")
    tables.Storage(str(tmp_path)).write_json("run.json", {})  # started, not analysed yet
    with pytest.raises(ConfigError, match="has not reached its analysis stage"):
        report.write_report(tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="orders must be integers >= 1"):
        report.ReportConfig(orders=(0,))
    with pytest.raises(ConfigError, match=r"needs >= 1 random policy \(--policies, got 0\)"):
        report.ReportConfig(random_policies=0)
    with pytest.raises(ConfigError, match="budgets must be finite"):
        report.ReportConfig(budgets=(float("nan"),))
    with pytest.raises(ConfigError, match="drawn budgets must be finite"):  # (was accepted)
        report.ReportConfig(drawn=(float("nan"),))
    with pytest.raises(ConfigError, match="--seed must be >= 0"):  # (numpy's ValueError)
        report.ReportConfig(seed=-1)


def test_report_command_writes_the_published_page(published_csv: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["report", "--published", str(published_csv), "--out", str(tmp_path),
                     "--budgets", "2", "--orders", "1", "--draw", "2", "--policies", "10"])
    assert code == 0 and (tmp_path / "index.html").exists()
    assert str(tmp_path / "index.html") in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2


def test_a_second_report_replaces_its_own_figures_and_keeps_other_files(
        published_csv: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_bytes(b"mine")
    report.write_report(published_csv, tmp_path, published=True, **FAST)
    report.write_report(published_csv, tmp_path, published=True, **{**FAST, "drawn": (1,)})
    names = {p.name for p in tmp_path.iterdir()}
    assert "notes.png" in names and "taxonomy_o1_b1.png" in names
    assert "taxonomy_o1_b3.png" not in names  # drawn by the first report only


def test_a_report_that_fails_leaves_the_earlier_one_whole(published_csv: Path,
                                                           tmp_path: Path) -> None:
    report.write_report(published_csv, tmp_path, published=True, **FAST)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match="regime 999"):
        report.write_report(published_csv, tmp_path, published=True, regime=999, **FAST)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_significance_test_that_cannot_draw_policies_costs_its_row_not_the_page(
        published_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def too_sparse(*args, **kwargs):
        raise SolverError("only 81 of 100 random policies were feasible in 20000 draws")

    monkeypatch.setattr(report.evaluate, "significance", too_sparse)
    page = report.write_report(published_csv, tmp_path, published=True, **FAST).read_text()
    assert "no significance test (only 81 of 100 random policies" in page
    assert "too few feasible random policies at this budget" in page


def test_the_samples_find_the_dataset_from_another_directory(sweep_storage, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    # run.json records the absolute data root; the config's may be relative to the sweep's
    # working directory, which a later `taskonomy-ray report` need not share.
    storage, cfg = sweep_storage
    copy = tables.Storage(str(tmp_path / "store"))
    for rel in ("affinities.parquet", "plan.json", "taxonomy.json", "sweep.json"):
        copy.write_bytes(rel, storage.read_bytes(rel))
    for name in storage.list("losses"):
        copy.write_bytes(f"losses/{name}", storage.read_bytes(f"losses/{name}"))
    for u in plan.build(cfg):
        if u.stage == "gold":
            copy.write_bytes(plan.checkpoint_path(u.key),
                             storage.read_bytes(plan.checkpoint_path(u.key)))
    root = Path(cfg.data.root)
    run = {"config": {**cfg.to_json(), "data": {**cfg.to_json()["data"], "root": root.name}},
           "version": __version__, "data_root": str(root)}
    copy.write_json(tables.RUN_FILE, run)
    monkeypatch.chdir(tmp_path)  # where data/<root.name> does not exist
    page = report.write_report(copy.uri, tmp_path / "out", **FAST).read_text()
    assert f'src="samples_{GOLD_TASKS[0]}.png"' in page and str(root) in page


def test_object_store_sweep_gets_its_report_uploaded_under_report(
        sweep_storage, monkeypatch: pytest.MonkeyPatch) -> None:
    storage, _ = sweep_storage

    class ObjectStore(tables.Storage):
        def __init__(self, uri: str) -> None:
            super().__init__(uri)
            self.local = False  # as s3:// or gs://: write whole objects, no local folder

    monkeypatch.setattr(report, "Storage", ObjectStore)
    index = report.write_report(storage.uri, samples=0, **FAST)
    assert index == storage.uri_for("report/index.html")
    assert b"Taskonomy report" in storage.read_bytes("report/index.html")
    assert storage.exists("report/budget_curve.png") and storage.exists("report/taxonomy_o1_b3.png")
    report.write_report(storage.uri, samples=0, **{**FAST, "drawn": (1,)})
    assert storage.exists("report/taxonomy_o1_b1.png")
    assert not storage.exists("report/taxonomy_o1_b3.png")  # the earlier report's, removed


def test_storage_with_only_affinities_reports_what_is_missing(published_csv: Path,
                                                             tmp_path: Path) -> None:
    storage = tables.Storage(str(tmp_path / "store"))
    storage.write_affinities(load_published(published_csv))
    page = report.write_report(storage.uri, **FAST).read_text()
    for missing in ("run.json is missing", "plan.json is missing", "sweep.json is missing",
                    "No gold-network losses", "the dataset of this storage is unknown"):
        assert missing in page


def test_a_bug_in_the_sweeps_report_is_a_named_failure_with_its_traceback_kept(tmp_path,
                                                                              monkeypatch):
    # The report is the sweep's last step: an unexpected error there must not end the run in a
    # traceback as if results were lost; it is listed with the failures and points to a retry.
    from taskonomy_ray.sweep import driver

    def broken(*args, **kwargs):
        raise KeyError("no_such_column")

    monkeypatch.setattr(report, "write_report", broken)
    st = tables.Storage(str(tmp_path))
    result = driver.SweepResult(st.uri, {}, {}, 0.0, {})
    driver.write_sweep_report(st, {"data_root": "x"}, result)
    assert "KeyError: 'no_such_column' (a bug in the report" in result.failures["report"]
    assert f"taskonomy-ray report {st.display}" in result.failures["report"]
    assert b"KeyError: 'no_such_column'" in st.read_bytes(tables.REPORT_ERROR)


def test_the_sweeps_report_weighs_its_taxonomies_as_the_sweeps_own_was_solved(
        tmp_path: Path, monkeypatch) -> None:
    # A workflow's solve.costs and importance solved taxonomy.json: the report beside it solves
    # its curves and drawings under the same settings, and marks that taxonomy among them only
    # when a report is solved as it was.
    from taskonomy_ray.sweep import driver

    storage, _ = build_sweep_storage(tmp_path / "run")
    spec = taxonomy.ProblemSpec(max_order=2, costs={"normal": 0.5}, importance={"normal": 2})
    storage.write_json("taxonomy.json", taxonomy.solve_taxonomy(
        storage.read_affinities(), spec, 1).to_json())
    seen = []
    monkeypatch.setattr(report, "write_report", lambda *a, **k: seen.append(k))
    driver.write_sweep_report(storage, {"data_root": "x"},
                              driver.SweepResult(storage.uri, {}, {}, 0.0, {}))
    assert seen[0]["costs"] == {"normal": 0.5} and seen[0]["importance"] == {"normal": 2}
    monkeypatch.undo()
    own = "the sweep's own solve (taxonomy.json)"
    page = report.write_report(storage.uri, tmp_path / "as", **FAST, costs={"normal": 0.5},
                               importance={"normal": 2}).read_text()
    assert own in page and "supervision costs normal=0.5 (others 1)" in page
    page = report.write_report(storage.uri, tmp_path / "plain", **FAST).read_text()
    assert own not in page  # (solved under unit costs, the drawings are other taxonomies)


def test_a_report_that_succeeds_removes_the_traceback_of_an_earlier_failed_one(
        published_csv: Path, tmp_path: Path) -> None:
    storage = tables.Storage(str(tmp_path / "store"))
    storage.write_affinities(load_published(published_csv))
    storage.write_bytes(tables.REPORT_ERROR, b"KeyError: 'fixed since'")
    report.write_report(storage.uri, **FAST)
    assert storage.exists("report/index.html") and not storage.exists(tables.REPORT_ERROR)
    assert storage.delete(tables.REPORT_ERROR) is False  # nothing left to delete


def test_figure_legends_list_only_the_task_groups_drawn(tmp_path: Path, monkeypatch) -> None:
    # The smoke report's legends named "semantic" and "low dim geometric" with no such task.
    from taskonomy_ray import report_plots

    saved = []
    monkeypatch.setattr(report_plots, "_save", lambda fig, path: saved.append(fig) or path)
    names = ["normal", "autoencoding"]
    report_plots.plot_affinity_matrices(names, [*names, "random"], np.full((2, 3), 0.5),
                                        np.full((2, 3), 0.2), tmp_path / "a.png")
    (legend,) = saved[0].legends
    assert [t.get_text() for t in legend.get_texts()] == ["2d", "3d", "random"]


def test_a_taxonomy_the_same_as_one_drawn_above_points_to_it_instead_of_repeating_it(
        published_csv: Path, tmp_path: Path) -> None:
    # No higher-order transfer worth taking: order 2 chooses what order 1 chose, and the page
    # drew the same graph and table twice.
    import pyarrow.compute as pc

    table = load_published(published_csv)
    higher = pc.greater(table["order"], 1)
    for col in ("affinity", "quality", "gain"):
        table = table.set_column(table.schema.get_field_index(col), col,
                                 pc.if_else(higher, 1e-9, table[col]))
    storage = tables.Storage(str(tmp_path / "store"))
    storage.write_affinities(table)
    index = report.write_report(storage.uri, budgets=(3,), orders=(1, 2), drawn=(3,),
                                random_policies=20)
    cfg = report.ReportConfig(budgets=(3,), orders=(1, 2), drawn=(3,), random_policies=20)
    first, second = report.taxonomy_sections(table, 16000, cfg, tmp_path)["taxonomies"]
    assert first["same_as"] is None and second["same_as"]["anchor"] == first["anchor"]
    assert second["significance"]  # its own test: random policies of order 2 are others
    assert [p.name for p in index.parent.glob("taxonomy_*.png")] == [first["image"]]
    page = index.read_text()
    assert 'The same taxonomy as <a href="#taxonomy_o1_b3">order &le; 1, budget 3</a>' in page
    assert page.count("<summary>Per target: chosen source(s)") == 1
