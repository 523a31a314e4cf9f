"""`taskonomy-ray solve`: the DESIGN.md contract on stored and published affinities."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_taxonomy import SMALL

from taskonomy_ray import cli, evaluate, published, tables, taxonomy


def _solve(capsys, *argv):
    code = cli.main(["solve", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_done_when_command_prints_the_proven_optimum_as_clean_json(published_csv):
    # A fresh process, so stdout must hold only the JSON (no solver banner).
    cmd = [sys.executable, "-m", "taskonomy_ray", "solve", "--published", str(published_csv),
           "--regime", "16000", "--budget", "4", "--max-order", "3", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(proc.stdout)
    assert {"regime", "budget", "max_order", "objective", "supervised", "transfers", "quality",
            "gain"} <= set(out)
    assert (out["regime"], out["budget"], out["max_order"]) == (16000, 4, 3)
    assert len(out["supervised"]) <= 4 and len(out["transfers"]) == 22
    for entry in out["transfers"]:
        assert set(entry) >= {"target", "sources", "supervised", "weight", "affinity",
                              "quality", "gain"}
        assert entry["supervised"] == (entry["target"] in out["supervised"])
    full = taxonomy.build_problem(published.read_published_csv(published_csv),
                                  taxonomy.ProblemSpec(max_order=3, regime=16000), prune=False)
    best, _ = evaluate.exhaustive_optimum(full, 4)
    assert out["objective"] == pytest.approx(best, abs=1e-9)


def test_solve_reads_a_run_storage(tmp_path, capsys):
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    code, out, _ = _solve(capsys, tmp_path, "--budget", 1, "--json")
    assert code == 0
    assert json.loads(out)["supervised"] == ["normal"]


def test_solve_without_json_prints_a_readable_table(tmp_path, capsys):
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    code, out, _ = _solve(capsys, tmp_path, "--budget", 2, "--importance", "reshading=3")
    assert code == 0
    assert out.splitlines()[0].startswith("regime 1000, budget 2")
    assert "served by" in out and "(supervised)" in out


def test_budget_curve_prints_json_and_writes_a_plot(tmp_path, capsys):
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    png = tmp_path / "curve.png"
    code, out, err = _solve(capsys, tmp_path, "--budgets", "1-3", "--json", "--plot", png)
    assert code == 0
    curve = json.loads(out)["curve"]
    assert [p["budget"] for p in curve] == [1, 2, 3]
    assert {"objective", "quality", "gain"} <= set(curve[0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in err


def test_taxonomy_is_written_as_dot_and_drawn_without_graphviz(tmp_path, capsys):
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    dot, png = tmp_path / "t.dot", tmp_path / "t.png"
    code, _, _ = _solve(capsys, tmp_path, "--budget", 2, "--max-order", 2, "--dot", dot,
                        "--draw", png)
    assert code == 0
    text = dot.read_text()
    assert text.startswith("digraph taxonomy {")
    assert '"hyperedge_reshading" [shape=point' in text  # the 2nd-order transfer
    assert "(supervised)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_published_results_folder_and_target_options(published_csv, tmp_path, capsys):
    from test_published import _results_dir

    results = _results_dir(published_csv, tmp_path)
    code, out, _ = _solve(capsys, "--published", results, "--regime", 1000, "--budget", 2,
                          "--targets", "normal", "reshading", "depth_zbuffer", "--sources",
                          "normal", "reshading", "depth_zbuffer", "--json")
    assert code == 0
    out = json.loads(out)
    assert out["regime"] == 1000 and set(out["supervised"]) <= {"normal", "reshading",
                                                                 "depth_zbuffer"}


@pytest.mark.parametrize("argv, message", [
    (["--budget", "1"], "either a run STORAGE or --published"),
    (["STORE", "--published", "x.csv", "--budget", "1"], "either a run STORAGE"),
    (["STORE"], "--budget B"),
    (["STORE", "--budgets", "1-2", "--draw", "x.png"], "use them with --budget"),
    (["STORE", "--budget", "1", "--plot", "x.png"], "use it with --budgets"),
    (["STORE", "--budget", "0"], "smallest budget"),
    (["STORE", "--budget", "1", "--importance", "normal"], "TASK=WEIGHT"),
    (["STORE", "--budget", "1", "--targets", "normals"], "did you mean 'normal'"),
    (["STORE", "--budgets", "0", "--novel", "reshading"],
     "no budget in --budgets 0 can serve all 3 targets: the smallest that can is 1"),
    (["STORE", "--budget", "1", "--budgets", "1-3"], "exclude each other"),
    (["STORE", "--budgets", "8-1"], "the range 8-1 runs backwards; write 1-8"),
    (["EMPTY", "--budget", "1"], "no sweep found in"),
    (["HALF", "--budget", "1"], "has not reached its analysis stage"),
    (["STORE", "--all-for-one", "--budget", "2"], "so --budget does not apply"),
    (["STORE", "--all-for-one", "--budget", "0", "--novel", "normal"],
     "so --budget, --novel do not apply"),
])
def test_bad_invocations_exit_2_with_the_fix(tmp_path, capsys, argv, message):
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    tables.Storage(str(tmp_path / "half")).write_json(tables.RUN_FILE, {})  # a sweep's start
    places = {"STORE": str(tmp_path), "EMPTY": str(tmp_path / "empty"),
              "HALF": str(tmp_path / "half")}
    code, _, err = _solve(capsys, *[places.get(a, a) for a in argv])
    assert code == 2 and message in err


def test_a_curve_leaves_out_budgets_too_small_and_says_so(tmp_path, capsys):
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    code, out, err = _solve(capsys, tmp_path, "--budgets", "0-2", "--novel", "reshading",
                            "--json")
    assert code == 0 and [p["budget"] for p in json.loads(out)["curve"]] == [1, 2]
    assert "left out budgets 0: below 1" in err
    code, out, err = _solve(capsys, tmp_path, "--budgets", "2,50", "--json")
    top = [p["budget"] for p in json.loads(out)["curve"]][-1]  # every task may be supervised
    assert code == 0 and "left out budgets 50: above" in err and top < 50


def test_a_supervision_cost_changes_what_the_budget_buys(tmp_path, capsys):
    # The paper's r_i: labels of some tasks are dearer to collect. Budget 1 supervises normal;
    # at cost 2 it no longer fits, and at cost 0.5 two tasks fit in the same budget.
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    code, out, _ = _solve(capsys, tmp_path, "--budget", 1, "--json")
    assert json.loads(out)["supervised"] == ["normal"] and json.loads(out)["cost"] == 1
    code, out, _ = _solve(capsys, tmp_path, "--budget", 1, "--cost", "normal=2", "--json")
    dear = json.loads(out)
    assert code == 0 and "normal" not in dear["supervised"] and dear["cost"] <= 1
    assert dear["costs"] == {"normal": 2}
    code, out, _ = _solve(capsys, tmp_path, "--budget", 1, "--cost", "normal=0.5",
                          "reshading=0.5", "--json")
    cheap = json.loads(out)
    assert sorted(cheap["supervised"]) == ["normal", "reshading"] and cheap["cost"] == 1
    assert cheap["objective"] > json.loads(_solve(capsys, tmp_path, "--budget", 1,
                                                  "--json")[1])["objective"]
    # The table says what was spent, and a curve shows it per budget.
    code, out, _ = _solve(capsys, tmp_path, "--budget", 2, "--cost", "normal=2")
    assert "costs normal=2 (others 1)" in out.splitlines()[0]
    assert "supervised (2, cost 2)" in out
    code, out, err = _solve(capsys, tmp_path, "--budgets", "1,2,10", "--cost", "normal=2",
                            "--json")
    curve = json.loads(out)["curve"]
    assert [p["budget"] for p in curve] == [1, 2, 4] and curve[-1]["cost"] == 4
    assert "left out budgets 10: above 4, the summed cost of the tasks that may be" in err


@pytest.mark.parametrize("argv, message", [
    (["--budget", 1, "--cost", "normal"], "write TASK=COST"),
    (["--budget", 1, "--cost", "normal=-1"], "the cost of normal is -1: it must be finite"),
    (["--budget", 1, "--cost", "normal=nan"], "it must be finite"),
    (["--budget", 1, "--cost", "normals=2"], "did you mean 'normal'"),
    (["--budget", 1, "--cost", "random=2"], "allow it with --sources"),  # (not by default)
    (["--budget", 1, "--cost", "normal=2", "normal=3"], "cost of 'normal' given twice"),
    (["--all-for-one", "--cost", "normal=2"], "so --cost does not apply"),
])
def test_a_cost_that_cannot_apply_is_refused_with_the_fix(tmp_path, capsys, argv, message):
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    code, _, err = _solve(capsys, tmp_path, *argv)
    assert code == 2 and message in err


def test_report_takes_the_same_costs_and_importance_and_refuses_the_same_mistakes(
        published_csv, tmp_path, capsys):
    argv = ["report", "--published", str(published_csv), "--out", str(tmp_path / "r"),
            "--budgets", "3", "--orders", "1", "--draw", "3", "--policies", "5"]
    assert cli.main([*argv, "--cost", "normals=2"]) == 2
    assert "did you mean 'normal'" in capsys.readouterr().err
    assert cli.main([*argv, "--importance", "normal"]) == 2
    assert "write TASK=WEIGHT" in capsys.readouterr().err
    assert cli.main([*argv, "--cost", "normal=2", "--importance", "reshading=3"]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "supervision costs normal=2" in page and "target importance reshading=3" in page


def test_re_solving_a_sweep_weighed_by_its_workflow_says_how_to_solve_as_it_did(
        tmp_path, capsys):
    # The workflow's solve section set costs and importance: a hand solve or report of the
    # same storage without them compares taxonomies solved otherwise, and is told so.
    st = tables.Storage(str(tmp_path))
    st.write_affinities(SMALL)
    spec = taxonomy.ProblemSpec(costs={"normal": 2}, importance={"reshading": 3})
    st.write_json("taxonomy.json", taxonomy.solve_taxonomy(SMALL, spec, 2).to_json())
    advice = "add them to solve as it was"
    _, _, err = _solve(capsys, tmp_path, "--budget", 2)
    assert "(--cost normal=2 --importance reshading=3)" in err and advice in err
    _, _, err = _solve(capsys, tmp_path, "--budget", 2, "--cost", "normal=2", "--importance",
                       "reshading=3")
    assert advice not in err
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--budgets", "2",
                     "--orders", "1", "--draw", "2", "--policies", "5"]) == 0
    assert advice in capsys.readouterr().err
    st.write_json("taxonomy.json", taxonomy.solve_taxonomy(SMALL, taxonomy.ProblemSpec(),
                                                           2).to_json())
    _, _, err = _solve(capsys, tmp_path, "--budget", 2, "--cost", "normal=2")
    assert advice not in err  # (unit costs there: what is given here is a choice, not a slip)


def test_a_reader_that_stops_early_gets_no_traceback():
    # `taskonomy-ray tasks | head -4` (the README's own example) could end in BrokenPipeError.
    # The reader here is gone before the command writes (it takes a second to import).
    proc = subprocess.Popen([sys.executable, "-m", "taskonomy_ray", "tasks"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()


def test_each_drawn_edge_has_its_sources_colour_and_is_drawn_over_the_boxes(published_csv):
    # Rows of targets wrap: an edge to a lower row passes the boxes above it. Drawn under them
    # in one grey, it looked like it left the box it passed (egomotion "from" depth_euclidean).
    from matplotlib.colors import to_hex
    from matplotlib.text import Annotation

    from taskonomy_ray import plots

    result = taxonomy.solve_taxonomy(published.read_published_csv(published_csv),
                                     taxonomy.ProblemSpec(max_order=1), 8)
    ax = plots.taxonomy_figure(result).axes[0]
    boxes = [t for t in ax.texts if not isinstance(t, Annotation)]
    edges = [t for t in ax.texts if isinstance(t, Annotation)]
    outline = {b.get_text().replace("\n", "_"): to_hex(b.get_bbox_patch().get_edgecolor())
               for b in boxes}
    assert len(edges) == sum(not a.supervised for a in result.transfers)
    assert min(e.get_zorder() for e in edges) > max(b.get_zorder() for b in boxes)
    by_colour = {to_hex(e.arrow_patch.get_edgecolor()) for e in edges}
    used = {a.sources[0] for a in result.transfers if not a.supervised}
    assert by_colour == {outline[s] for s in used}
    assert len({outline[s] for s in result.supervised}) == len(result.supervised)


def test_a_solve_never_imports_pandas_which_would_cost_half_its_second(published_csv, tmp_path):
    # pyarrow imports pandas at its first Python-to-Arrow conversion (or pq.read_table): ~0.5 s
    # of a one-second re-solve. Both inputs, published and stored, must avoid it.
    stored = tmp_path / "run"
    tables.Storage(str(stored)).write_affinities(published.read_published_csv(published_csv))
    for source in (["--published", str(published_csv)], [str(stored)]):
        code = ("import sys; from taskonomy_ray import cli; "
                f"cli.main(['solve', *{source!r}, '--budget', '4', '--json']); "
                "assert 'pandas' not in sys.modules, 'pandas was imported'")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["budget"] == 4


def test_rows_become_the_same_table_through_either_converter():
    rows = [{"regime": 1000, "target": "normal", "sources": ["a", "b"], "order": 2,
             "affinity": 0.5, "quality": None, "gain": 0.25}]
    fast = tables.rows_table(rows, tables.AFFINITIES_SCHEMA)
    assert fast.equals(tables.pa.Table.from_pylist(rows, schema=tables.AFFINITIES_SCHEMA))
    odd = [{**rows[0], "affinity": float("nan")}]  # JSON cannot spell NaN: the converters can
    assert tables.rows_table(odd, tables.AFFINITIES_SCHEMA).column("affinity")[0].is_valid
    assert tables.rows_table([], tables.AFFINITIES_SCHEMA).num_rows == 0


def test_all_for_one_prints_each_novel_tasks_transfer_per_order(published_csv, capsys, tmp_path):
    code, out, _ = _solve(capsys, "--published", published_csv, "--all-for-one",
                          "--max-order", "2", "--json")
    doc = json.loads(out)
    table = published.read_published_csv(published_csv)
    expected = evaluate.novel_tasks(table, (1, 2), 16000)
    assert code == 0 and doc["regime"] == 16000
    assert doc["novel"] == [n.to_json() for n in expected]
    assert [m["max_order"] for m in doc["means"]] == [1, 2]
    tables.Storage(str(tmp_path)).write_affinities(SMALL)  # orders 1 and 2 only
    code, out, err = _solve(capsys, tmp_path, "--all-for-one", "--json")
    assert code == 0 and "orders above 2, the table's largest at regime 1000, left out" in err
    assert {n["max_order"] for n in json.loads(out)["novel"]} == {1, 2}
    code, text, _ = _solve(capsys, "--published", published_csv, "--all-for-one",
                           "--targets", "normal", "--max-order", "1")
    assert code == 0 and "all-for-one" in text
    assert " + ".join(expected[[n.target for n in expected].index("normal")].sources) in text


def test_the_budget_curve_marks_whole_budgets_and_keeps_coinciding_orders_visible(
        tmp_path, monkeypatch):
    from taskonomy_ray import plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig) or path)
    points = [{"budget": b, "max_order": o, "objective": 2.6 + 0.01 * min(b, 2), "gain": 0.5,
               "quality": 0.45} for o in (1, 2) for b in (1, 2, 3, 4)]
    plots.plot_budget_curve(points, tmp_path / "c.png")
    left, right = saved[0].axes
    for ax in (left, right):
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 4]
        assert ticks and all(float(t).is_integer() for t in ticks)  # no budget of 1.5 tasks
    first, second = left.get_lines()  # order 2 equals order 1 here: drawn inside it
    assert first.get_markersize() > second.get_markersize()


def test_a_solve_says_what_it_weighed_and_which_orders_the_table_lacks(tmp_path, capsys):
    # The text and --json alone must say how to reproduce them: importance included.
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    code, out, err = _solve(capsys, tmp_path, "--budget", "2", "--importance", "normal=2",
                            "--max-order", "5")
    assert code == 0 and "weight sqrt_affinity, importance normal=2" in out.splitlines()[0]
    assert "--max-order 5: the table's transfers at regime" in err and "add nothing" in err
    code, out, _ = _solve(capsys, tmp_path, "--budget", "2", "--importance", "normal=2", "--json")
    assert json.loads(out)["importance"] == {"normal": 2.0}


@pytest.mark.parametrize("argv", [
    ["solve", "STORE", "--budget", "1", "--draw", "BLOCKED/t.png"],
    ["solve", "STORE", "--budget", "1", "--dot", "BLOCKED/t.dot"],
    ["solve", "STORE", "--budgets", "1-2", "--plot", "BLOCKED/c.png"],
    ["report", "STORE", "--out", "BLOCKED/report"],
    ["synth", "BLOCKED/data", "--points", "2"],
])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys,
                                                                         argv):
    # (A folder under a plain file: unwritable even for root, who may write anywhere else.)
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    (tmp_path / "file").write_text("not a folder")
    places = {"STORE": str(tmp_path)}
    argv = [places.get(a, a.replace("BLOCKED", str(tmp_path / "file"))) for a in argv]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert "cannot write in" in err and "choose a path in a folder you can write" in err
    assert "(a part of it is a file, not a folder)" in err  # (not "File exists")
    assert out == ""  # refused before solving or printing anything


@pytest.mark.parametrize("option, path, says", [
    ("--draw", "", "is a folder; give a file name in it"),
    ("--draw", "x/", "is a folder"),
    ("--draw", "t.txt", "give a .png file name (the format follows it)"),
    ("--dot", "", "is a folder"),
])
def test_a_drawing_path_that_names_a_folder_or_another_format_is_refused(tmp_path, capsys,
                                                                        option, path, says):
    # A folder crashed (IsADirectoryError) after the solve, `x/` wrote a file named x, and
    # `.txt` failed in matplotlib.
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    code, out, err = _solve(capsys, tmp_path, "--budget", "1", option, f"{tmp_path}/{path}")
    assert code == 2 and says in err and out == ""


def test_a_report_whose_default_folder_cannot_be_written_says_to_pass_out(tmp_path, capsys):
    # (Read-only storage raised PermissionError from inside the report's staging.)
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    (tmp_path / "report").write_text("a file where the report/ folder goes")
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot write in" in err and "or pass --out DIR to write the report elsewhere" in err


def test_a_synth_preview_that_is_not_a_png_is_refused_before_rendering(tmp_path, capsys):
    # PIL refused the name only after the whole render had run.
    assert cli.main(["synth", str(tmp_path / "data"), "--points", "2",
                     "--preview", str(tmp_path / "p.txt")]) == 2
    assert "--preview" in capsys.readouterr().err
    assert list((tmp_path / "data").iterdir()) == []  # (made by the probe only) nothing rendered


def test_a_report_data_option_that_cannot_serve_is_refused(tmp_path, capsys, published_csv):
    # A missing --data gave only a note in the page, and --published ignored it.
    tables.Storage(str(tmp_path)).write_affinities(SMALL)
    assert cli.main(["report", str(tmp_path), "--data", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["report", "--published", str(published_csv), "--data", str(tmp_path)]) == 2
    assert "use it with a sweep's STORAGE" in capsys.readouterr().err
