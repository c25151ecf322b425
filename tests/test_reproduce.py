"""Paper recipes: every recipe composes and dry-runs; a tiny recipe runs end to end on the CPU and
writes the comparison, flagging a wrong published value; a rerun resumes instead of repeating; bad
recipes end with one line naming the file and the field."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from ftbench.paper import comparison, reproduce
from ftbench.paper.comparison import CellResults, compare_line, lines
from ftbench.paper.recipes import Compare, load
from helpers import REPO, cli

# make test runs this whole file on one worker (conftest.ONE_WORKER), so its module fixture runs once.

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

# Two quality cells (one with a deliberately wrong published value) and a memory cell the run skips.
TINY = """
name: tiny
title: Tiny recipe
provenance: written by tests/test_reproduce.py
seeds: [0]
overrides: [model=tiny-llama, task=synthetic, task.max_steps=3, task.num_train=64, task.num_eval=32,
            train.progress=false, hardware=cpu]
compare_defaults: {unit: percent}
columns:
  acc: {metric: metrics.dev/acc, tolerance: 100}
cells:
  - {id: full, group: tiny, row: Full, kind: quality, overrides: [method=full], gpu_hours: 0.01,
     compare: [{column: acc, published: 50}]}
  - {id: lora, group: tiny, row: LoRA, kind: quality, overrides: [method=lora], gpu_hours: 0.02,
     compare: [{column: acc, published: 1000, tolerance: 1}]}
  - {id: lora-profile, group: tiny, row: LoRA, kind: memory, gpu_hours: 0.5,
     overrides: [method=lora, mode=profile, profile.batch_size=2, profile.seq_len=16, profile.steps=2],
     compare: [{column: state, metric: memory.breakdown.grad_bytes + memory.breakdown.optimizer_state_bytes,
                unit: MiB, published: null}]}
averages:
  - {group: tiny, row: Full, column: Avg, over: [acc], published: 50, tolerance: 100}
references:
  - {group: tiny, row: Adapter, values: {acc: 60}}
"""


def run_main(*argv: str) -> int:
    with pytest.raises(SystemExit) as stopped:
        reproduce.main(list(argv))
    return stopped.value.code


def test_every_paper_table_has_a_recipe():
    assert {p.stem for p in RECIPES} >= {
        "sift-table1-memory", "sift-table2-glue", "sparsegrad-table3-speed-memory",
        "sparsegrad-table4-roberta-large", "sparsegrad-table5-base", "s2ft-table1-commonsense",
        "s2ft-table2-math", "s2ft-figure5-efficiency", "hift-table-llama7b-memory", "hift-roberta-glue"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_composes_every_cell_and_dry_runs(path, tmp_path, capsys):
    """Composing every cell checks its preset, task, method and overrides; metric paths are checked
    against what the task reports. A dry run lists every cell with its estimate and writes nothing."""
    assert run_main(str(path), "--dry-run", "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    recipe = load(path)
    for cell in recipe.cells:
        assert f"  {cell.id}  [{cell.kind}, ~{cell.gpu_hours:g} GPU h per seed]" in out
    runs = sum(len(c.seeds) for c in recipe.cells)
    assert f"{len(recipe.cells)} of {len(recipe.cells)} cells selected, {runs} runs to do" in out
    assert "not measurements" in out
    assert not any(tmp_path.iterdir())
    assert all(isinstance(c.published, (int, float, str)) or c.published is None for cell in recipe.cells
               for c in cell.compare)


def test_only_memory_selects_memory_cells_in_profile_mode_on_random_init(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    assert run_main(str(recipe), "--dry-run", "--only-memory", "--out", str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "  lora-profile  [memory" in out and "  full  [" not in out
    command = next(line for line in out.splitlines() if "hydra.sweep.dir" in line)
    assert "mode=profile model.random_init=true" in command
    assert "1 of 3 cells selected, 1 runs to do, ~0.50 GPU hours" in out


def test_later_overrides_of_a_key_replace_earlier_ones():
    assert reproduce.merge(["model=llama2-7b", "profile.seq_len=512", "method=lora", "model=tiny-llama"]) == [
        "profile.seq_len=512", "method=lora", "model=tiny-llama"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny recipe's two quality cells, each a multirun of the ftbench CLI in a subprocess; returns
    the recipe, its results folder and the exit code."""
    root = tmp_path_factory.mktemp("tiny")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY)
    code = run_main(str(recipe), "--cells", "full", "--cells", "lora", "--out", str(root / "out"))
    return recipe, root / "out" / "tiny", code


def read_table(folder: Path) -> dict[tuple[str, str], dict]:
    with (folder / "comparison.csv").open() as handle:
        return {(row["row"], row["column"]): row for row in csv.DictReader(handle)}


def test_a_tiny_recipe_runs_end_to_end_and_flags_a_wrong_published_value(tiny_run):
    _, folder, code = tiny_run
    assert code == 0
    table = read_table(folder)
    result = json.loads((folder / "lora" / "seed0" / "result.json").read_text())
    assert result["status"] == "ok"
    lora = table[("LoRA", "acc")]
    assert float(lora["ours"]) == pytest.approx(100 * result["metrics"]["dev/acc"])
    assert lora["verdict"] == "OUTSIDE" and float(lora["diff"]) == pytest.approx(float(lora["ours"]) - 1000)
    assert "last checkpoint (step 3 of 3)" in lora["protocol"] and "fp32" in lora["protocol"]
    assert table[("Full", "acc")]["verdict"] == "within" and table[("Full", "Avg")]["verdict"] == "within"
    assert table[("LoRA", "state")]["status"] == "not run 1/1"
    assert table[("Adapter", "acc")]["verdict"] == "reference (not run)"
    markdown = (folder / "comparison.md").read_text()
    assert "| LoRA | " in markdown and "/ 1000 ✗" in markdown
    assert (folder / "memory_vs_quality.png").stat().st_size > 0 and (folder / "step_time.png").stat().st_size > 0


def test_a_rerun_runs_nothing_that_finished(tiny_run, capsys, monkeypatch):
    recipe, folder, code = tiny_run
    assert code == 0
    monkeypatch.setattr(reproduce.children, "run", lambda *a, **k: pytest.fail(f"ran again: {a}"))
    before = (folder / "full" / "seed0" / "result.json").read_bytes()
    assert run_main(str(recipe), "--cells", "full", "--cells", "lora", "--out", str(folder.parent)) == 0
    out = capsys.readouterr().out
    assert "  full  [quality, ~0.01 GPU h per seed]  done" in out and "0 runs to do" in out
    assert (folder / "full" / "seed0" / "result.json").read_bytes() == before


def test_a_failed_or_outdated_result_is_moved_aside_never_deleted(tiny_run, tmp_path, capsys):
    recipe, folder, code = tiny_run
    assert code == 0
    copy = tmp_path / "tiny"
    shutil.copytree(folder, copy)
    failed = json.loads((copy / "lora" / "seed0" / "result.json").read_text()) | {"status": "oom", "error": "x"}
    (copy / "lora" / "seed0" / "result.json").write_text(json.dumps(failed))

    args = reproduce.parse([str(recipe), "--out", str(tmp_path), "--set", "task.max_steps=4"])
    cell_runs = {cell_run.cell.id: cell_run for cell_run in reproduce.cells(load(recipe), args)}
    assert cell_runs["full"].redo == {0: "made from another config"}
    assert cell_runs["lora"].redo[0].startswith("status oom")
    reproduce.set_aside(cell_runs["lora"], copy)
    moved = list((copy / reproduce.ASIDE / "lora").iterdir())
    assert not (copy / "lora" / "seed0").exists() and len(moved) == 1
    assert json.loads((moved[0] / "result.json").read_text())["status"] == "oom"
    assert "moved to" in capsys.readouterr().out


def test_a_comparison_written_where_another_stands_keeps_it(tiny_run, tmp_path, capsys):
    """comparison.md/.csv and the plots were written over whatever stood there (another recipe's, or this
    recipe's before an edit): now kept as comparison.previous-N.*, with one line; the same written again
    replaces itself."""
    recipe, folder, code = tiny_run
    assert code == 0
    copy = tmp_path / "tiny"
    shutil.copytree(folder, copy)
    (copy / "comparison.md").write_text("another recipe's table")
    args = reproduce.parse([str(recipe), "--out", str(tmp_path)])
    found = [reproduce.found(cell_run) for cell_run in reproduce.cells(load(recipe), args)]
    comparison.build(load(recipe), found, copy)
    assert (copy / "comparison.previous-1.md").read_text() == "another recipe's table"
    assert (copy / "comparison.previous-1.csv").read_bytes() == (folder / "comparison.csv").read_bytes()
    assert (copy / "memory_vs_quality.previous-1.png").is_file() and (copy / "step_time.previous-1.png").is_file()
    assert (copy / "comparison.csv").read_bytes() == (folder / "comparison.csv").read_bytes()
    kept = [line for line in capsys.readouterr().out.splitlines() if "kept" in line]
    assert kept == [f"the earlier comparison, which differs, is kept as {copy / 'comparison.previous-1.md'}, "
                    f"{copy / 'comparison.previous-1.csv'}, {copy / 'memory_vs_quality.previous-1.png'}, "
                    f"{copy / 'step_time.previous-1.png'}"]
    before = sorted(p.name for p in copy.iterdir())
    comparison.build(load(recipe), found, copy)
    assert sorted(p.name for p in copy.iterdir()) == before and "kept" not in capsys.readouterr().out


def fake(status: str, value: float | None = None) -> dict:
    return {"status": status, "run": {"mode": "profile"}, "config": {"profile": {"batch_size": 1, "seq_len": 8}},
            "memory": {"train_peak_allocated_bytes": value}}


def test_seeds_aggregate_to_median_mean_and_std():
    compare = Compare("memory", "memory.train_peak_allocated_bytes", "GB", 2.0, "10%")
    cell = load_cell(compare)
    found = CellResults(cell, {0: fake("ok", 1e9), 1: fake("ok", 2e9), 2: fake("ok", 6e9)},
                        {0: "ok", 1: "ok", 2: "ok"})
    line = compare_line(found, compare)
    assert (line["ours"], line["mean"], line["std"]) == (2.0, 3.0, pytest.approx(2.6457513))
    assert line["verdict"] == "within" and line["seeds"] == "3/3"


@pytest.mark.parametrize("published, status, verdict", [
    ("OOM", "oom", "both OOM"), (54, "oom", "OOM (paper fits)"), ("OOM", "ok", "paper OOM, ours fits"),
    (None, "ok", "no published value")])
def test_out_of_memory_cells_are_compared_as_such(published, status, verdict):
    compare = Compare("memory", "memory.train_peak_allocated_bytes", "GB", published, "15%")
    counted = {0: fake("ok", 5e10)} if status == "ok" else {}
    line = compare_line(CellResults(load_cell(compare), counted, {0: status}), compare)
    assert line["verdict"] == verdict


def test_an_average_needs_every_column():
    recipe = load_tiny_recipe()
    table = lines(recipe, [CellResults(cell, {}, {0: "not run"}) for cell in recipe.cells])
    average = next(line for line in table if line["column"] == "Avg")
    assert average["ours"] is None and average["verdict"] == "no result"


def load_tiny_recipe():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.yaml"
        path.write_text(TINY)
        return load(path)


def load_cell(compare: Compare):
    from dataclasses import replace

    return replace(load_tiny_recipe().cells[0], compare=(compare,))


MISSING = object()
BAD = [  # (changes to a good cell, changes to its comparison, the error after '<file>: ')
    ({"preset": "sift-roberta-large-colaa"}, {}, "cells[0].preset: no experiment 'sift-roberta-large-colaa'"),
    ({"row": MISSING}, {}, "cells[0].row: missing (required)"),
    ({}, {"metric": "memory.breakdown.grads"}, "cells[0].compare[0].metric: 'memory.breakdown.grads': "
     "memory.breakdown has no 'grads'"),
    ({}, {"metric": "metrics.dev/f1"}, "cells[0].compare[0].metric: 'metrics.dev/f1': the cola task reports"),
    ({}, {"unit": "Gb"}, "cells[0].compare[0].unit: 'Gb' is not one of percent"),
    ({"overrides": ["task=cola", "method.rank=8"]}, {}, "cells[0] (c): method.rank: no such key"),
]


@pytest.mark.parametrize("cell_changes, compare_changes, error", BAD, ids=[
    "unknown-preset", "missing-field", "bad-metric-path", "metric-not-of-the-task", "bad-unit", "bad-override"])
def test_a_bad_recipe_is_one_line_naming_the_file_and_the_field(cell_changes, compare_changes, error, tmp_path,
                                                                 capsys):
    import yaml

    compare = {"column": "x", "metric": "metrics.dev/mcc", "unit": "percent", "published": 1} | compare_changes
    cell = {"id": "c", "group": "g", "row": "r", "kind": "quality", "gpu_hours": 1, "overrides": ["task=cola"],
            "compare": [compare]} | cell_changes
    recipe = {"name": "bad", "title": "t", "provenance": "p", "seeds": [0],
              "cells": [{k: v for k, v in cell.items() if v is not MISSING}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert run_main(str(path), "--dry-run", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"ftbench-reproduce: error: {path}: {error}"), err


def test_the_console_script_exits_2_on_a_recipe_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ntitle: t\nprovenance: p\nseeds: [0]\ncells: []\n")
    done = cli("ftbench-reproduce", str(path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"ftbench-reproduce: error: {path}: cells: [] is not a non-empty list"


@pytest.mark.parametrize("text", ["", "# to fill in\n\n"])
def test_an_empty_recipe_says_so(tmp_path, capsys, text):
    """An empty recipe (cut, never saved) or one of comments only: was "recipe: must be a mapping"."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert run_main(str(path), "--dry-run", "--out", str(tmp_path / "out")) == 2
    assert capsys.readouterr().err.strip() == (
        f"ftbench-reproduce: error: {path}: is empty (no fields, comments at most); give the recipe's fields "
        "(name:, title:, seeds:, cells:, ...)")
    assert not (tmp_path / "out").exists()
