"""Multiruns: one table across jobs (printed, markdown, CSV, PNG), rebuilt by ftbench-report."""

import csv
import json
from pathlib import Path

import pytest

from ftbench.report import rows
from helpers import cli, sweep


def test_a_multirun_prints_and_writes_one_table(tmp_path):
    sweep = tmp_path / "sweep"
    done = cli("ftbench", "-m", "method=full,lora", "task.max_steps=3", "task.num_train=64", "task.num_eval=32",
               f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr
    assert "ftbench comparison" in done.stdout
    assert {p.name for p in sweep.iterdir()} >= {"report.md", "report.csv", "report.png"}
    with (sweep / "report.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["run"] for row in table] == ["full", "lora"]
    assert all(row["status"] == "ok" and row["metric"] == "dev/acc" for row in table)
    assert float(table[1]["trainable_pct"]) < float(table[0]["trainable_pct"]) == 100.0

    rebuilt = tmp_path / "rebuilt"
    again = cli("ftbench-report", str(sweep), "--out", str(rebuilt))
    assert again.returncode == 0, again.stderr
    assert (rebuilt / "report.md").read_text() == (sweep / "report.md").read_text()


def test_report_without_results_is_one_line(tmp_path):
    done = cli("ftbench-report", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("ftbench-report: error: no result.json under")


def fake(method: str, overrides: list[str]):
    from ftbench.results import Breakdown, Params, Result, Run

    result = Result(status="ok", metrics={"dev/acc": 0.5}, params=Params(trainable_pct=1.0),
                    run=Run(method=method, overrides=overrides, metric="dev/acc"))
    result.memory.breakdown = Breakdown(weights_bytes=10, master_bytes=0, grad_bytes=1, optimizer_state_bytes=2)
    return result


def test_rows_are_labelled_by_what_tells_them_apart():
    table = rows([fake("sift", ["method=sift", "method.sparse_rate=0.01", "task=cola"]),
                  fake("sift", ["method=sift", "method.sparse_rate=0.05", "task=cola"])])
    assert [r["run"] for r in table] == ["sift method.sparse_rate=0.01", "sift method.sparse_rate=0.05"]
    assert table[0]["state_bytes"] == 13 and table[0]["value"] == 0.5


def fakes(folder, *methods: str, overrides: tuple[str, ...] = ()):
    """One fake ok result per method, each in a job folder of `folder` as a sweep names them."""
    from ftbench.results import write

    for method in methods:
        (folder / f"method={method}").mkdir(parents=True)
        write(fake(method, [f"method={method}", *overrides]), folder / f"method={method}")


REPORT = ("report.md", "report.csv", "report.png")


def test_a_report_never_destroys_an_earlier_one(tmp_path, capsys):
    """ftbench-report into a sweep folder keeps the sweep's own report aside; the same report again
    replaces itself; the sweep's refresh keeps a report that is not its own growing."""
    from ftbench import report
    from ftbench.cli import report_main

    sweep, other = tmp_path / "sweep1", tmp_path / "default"
    fakes(sweep, "full", "lora", overrides=("task=synthetic",))
    fakes(other, "full")
    report.build([sweep], sweep, grows=True)  # the sweep's own, at the end of its multirun
    own = {name: (sweep / name).read_bytes() for name in REPORT}
    capsys.readouterr()

    report_main([str(sweep), str(other), "--out", str(sweep)])
    out = capsys.readouterr().out
    assert {name: (sweep / name.replace("report", "report.previous-1")).read_bytes() for name in REPORT} == own
    assert f"markdown: {sweep / 'report.md'}" in out and str(sweep / "report.previous-1.md") in out
    mixed = (sweep / "report.md").read_text()
    assert len(mixed.splitlines()) == 2 + 3

    report_main([str(sweep), str(other), "--out", str(sweep)])  # the same report: replaced, nothing more kept
    assert "kept" not in capsys.readouterr().out and not (sweep / "report.previous-2.md").exists()

    report.build([sweep], sweep, grows=True)  # the sweep's refresh: the mixed report is not its own
    assert (sweep / "report.previous-2.md").read_text() == mixed
    assert (sweep / "report.md").read_bytes() == own["report.md"]


def test_a_report_goes_where_the_paths_named_are(tmp_path, capsys, monkeypatch):
    """One folder: itself; one file: its folder; several: the deepest folder holding them all; none but the
    root: refused, naming --out."""
    from ftbench.cli import report_folder, report_main

    sweep = tmp_path / "sweeps" / "t1"
    fakes(sweep, "full", "lora")
    assert report_folder([sweep]) == sweep
    assert report_folder([sweep / "method=full" / "result.json"]) == sweep / "method=full"
    assert report_folder([sweep / "method=full", sweep / "method=lora"]) == sweep.resolve()
    assert report_folder([sweep, tmp_path / "sweeps"]) == (tmp_path / "sweeps").resolve()
    monkeypatch.chdir(sweep)  # relative paths, as a shell glob gives them
    assert report_folder([Path("method=full"), Path("method=lora")]) == sweep.resolve()
    assert report_folder([Path("method=full"), Path("/")]) is None
    with pytest.raises(SystemExit) as exited:
        report_main(["method=full", "/"])
    assert exited.value.code == 2 and "--out DIR" in capsys.readouterr().err


def test_a_glob_over_a_sweep_folder_passes_over_what_ftbench_wrote_beside_the_results(tmp_path, capsys):
    from ftbench.cli import report_main

    sweep = tmp_path / "sweep1"
    fakes(sweep, "full", "lora")
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for name in ("report.md", "report.csv", "report.png", "report.previous-1.md", "train.log"):
        (sweep / name).write_text("not a result")
    (sweep / "method=full" / "result.previous-1.json").write_text("{")  # an earlier attempt, kept aside
    report_main([str(p) for p in sorted(sweep.iterdir())] + [str(sweep / "method=full" / "result.previous-1.json")])
    with (sweep / "report.csv").open() as handle:  # the folder the glob is over, not its first job's
        assert [row["run"] for row in csv.DictReader(handle)] == ["full", "lora"]
    assert not (sweep / "method=full" / "report.csv").exists()
    capsys.readouterr()

    broken = tmp_path / "mine.json"  # a result the user names: still read, and its error named
    broken.write_text("{")
    with pytest.raises(SystemExit) as exited:
        report_main([str(sweep / "method=full"), str(broken)])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ftbench-report: error: {broken}: truncated") and "\n" not in err


QUICK = ["task.max_steps=2", "task.num_train=16", "task.num_eval=8", "task.batch_size=4", "train.progress=false",
         "hardware=cpu"]


def test_a_sweep_extended_in_front_reuses_its_finished_jobs(tmp_path, capsys):
    """Job folders are named by the swept keys, so a value added in front of a finished sweep gets a folder
    of its own: the finished jobs are skipped, the new one trains, each value once."""
    folder = tmp_path / "sweep"
    base = ["-m", *QUICK, f"hydra.sweep.dir={folder}"]
    assert sweep([*base, "optim.lr=1e-3,1e-2"], capsys)[0] == 0
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["optim.lr=0.001", "optim.lr=0.01"]
    finished = {p.name: (p / "result.json").read_text() for p in folder.iterdir() if p.is_dir()}

    code, stderr = sweep([*base, "optim.lr=1e-4,1e-3,1e-2"], capsys)
    assert code == 0 and stderr.count("finished ok earlier with this config; skipped") == 2
    results = {p.name: json.loads((p / "result.json").read_text()) for p in folder.iterdir() if p.is_dir()}
    assert {name: r["config"]["optim"]["lr"] for name, r in results.items()} == {
        "optim.lr=0.0001": 1e-4, "optim.lr=0.001": 1e-3, "optim.lr=0.01": 1e-2}
    assert all(r["status"] == "ok" for r in results.values())
    assert all((folder / name / "result.json").read_text() == text for name, text in finished.items())
    with (folder / "report.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3
    assert not list(folder.glob("report.previous-*"))  # the sweep's own report, grown: replaced


def test_a_sweep_its_folder_cannot_take_is_refused_before_any_job_runs(tmp_path, capsys):
    folder = tmp_path / "sweep"
    base = ["-m", *QUICK, f"hydra.sweep.dir={folder}", "optim.lr=1e-3,1e-2"]
    assert sweep(base, capsys)[0] == 0
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    code, stderr = sweep([*base, "seed=1"], capsys)  # seed is not swept: the same folders, another config
    lines = [line for line in stderr.splitlines() if line.startswith("ftbench")]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("ftbench: error: hydra.sweep.dir: ") and "seed" in lines[0]
    assert "hydra.run.dir" not in stderr  # a key the user never set
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before  # nothing ran, nothing moved


@pytest.mark.parametrize("in_the_way,named", [
    ("seed=1", "seed=1 is a file, not a directory, where ftbench writes job 1's run"),  # Hydra: FileExistsError
    ("multirun.yaml/", "multirun.yaml is a directory, not a file, where ftbench writes Hydra's record of the sweep"),
    ("seed=0/checkpoints", "seed=0/checkpoints is a file, not a directory, where ftbench writes the run's checkpoints"),
])
def test_what_stands_where_a_sweep_writes_refuses_it_before_any_job_runs(tmp_path, capsys, in_the_way, named):
    """Hydra crashed with a traceback on the first two (exit 1), the job after training started on the third."""
    folder = tmp_path / "sweep"
    path = folder / in_the_way.rstrip("/")
    path.parent.mkdir(parents=True)
    path.mkdir() if in_the_way.endswith("/") else path.write_text("x")
    before = sorted(folder.rglob("*"))
    code, stderr = sweep(["-m", *QUICK, f"hydra.sweep.dir={folder}", "seed=0,1"], capsys)
    lines = [line for line in stderr.splitlines() if line.startswith("ftbench")]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("ftbench: error: hydra.sweep.dir: ") and f"{folder}/{named}" in lines[0], lines[0]
    assert sorted(folder.rglob("*")) == before  # nothing ran


def test_job_folders_that_do_not_tell_configs_apart_are_refused_before_any_job_runs(tmp_path, capsys):
    """hydra.sweep.subdir=same: two configs, one folder; the second job would be refused (or overwrite)."""
    folder = tmp_path / "sweep"
    code, stderr = sweep(["-m", *QUICK, f"hydra.sweep.dir={folder}", "optim.lr=1e-3,1e-2",
                          "hydra.sweep.subdir=same"], capsys)
    lines = [line for line in stderr.splitlines() if line.startswith("ftbench")]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("ftbench: error: hydra.sweep.subdir: jobs 0 and 1 of the sweep differ in config but "
                               f"would both write {folder / 'same'}")
    assert not folder.exists()  # nothing ran


@pytest.mark.parametrize("subdir", ["${hydra.job.num}", "job${hydra.job.id}"])
def test_job_folders_named_by_place_that_hold_another_config_are_refused_before_any_job_runs(tmp_path, capsys,
                                                                                          subdir):
    """A user's hydra.sweep.subdir naming job folders by their place in the sweep (hydra.job.num; hydra.job.id
    under the basic launcher): a value added in front moves every config to a folder holding another's result.
    The folders are resolved as the launch resolves them, so the sweep is refused whole, on hydra.sweep.subdir;
    one extended at the end keeps its finished jobs' folders and goes ahead."""
    from ftbench import cli as ftbench_cli

    folder = tmp_path / "sweep"
    base = ["-m", *QUICK, f"hydra.sweep.dir={folder}", f"hydra.sweep.subdir={subdir}"]
    assert sweep([*base, "optim.lr=1e-3,1e-2"], capsys)[0] == 0
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    code, stderr = sweep([*base, "optim.lr=1e-4,1e-3,1e-2"], capsys)
    lines = [line for line in stderr.splitlines() if line.startswith("ftbench")]
    assert code == 2 and len(lines) == 1, stderr
    named = subdir.replace("${hydra.job.num}", "0").replace("${hydra.job.id}", "0")
    assert lines[0].startswith(f"ftbench: error: hydra.sweep.subdir: job 0 (nothing was run) writes a folder named "
                               f"by its place in the sweep, and {folder / named} already holds a result, made with "
                               "another config (differs in: optim.lr)"), lines[0]
    assert "leave hydra.sweep.subdir unset" in lines[0]
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before  # nothing ran, nothing moved

    found: list = []
    argv = ftbench_cli.sweep_argv([*base, "optim.lr=1e-3,1e-2,1e-1"])
    assert ftbench_cli.validate(ftbench_cli.overrides_in(argv), True, found) is None
    assert found == [folder / subdir.replace("${hydra.job.num}", str(n)).replace("${hydra.job.id}", str(n))
                     for n in range(3)]


def test_a_sweep_without_a_swept_key_names_its_job_by_the_method(tmp_path, capsys):
    folder = tmp_path / "sweep"
    assert sweep(["-m", *QUICK, "method=lora", f"hydra.sweep.dir={folder}"], capsys)[0] == 0
    assert (folder / "lora" / "result.json").is_file()


SKIPPED_ELSEWHERE = "finished ok earlier with this config in "


def test_a_config_finished_in_a_folder_of_another_name_is_skipped(tmp_path, capsys):
    """Job folders follow the command line's spelling: a key swept since (`method=full,lora`, full being
    the default) or a sweep of one job (`full/`) names a finished config anew. It is found in its folder
    and skipped, pointing there, and the sweep's table has one row per config."""
    from ftbench import cli as ftbench_cli
    from ftbench.job import sweep as sweeps

    folder = tmp_path / "sweep"
    base = ["-m", *QUICK, f"hydra.sweep.dir={folder}"]
    assert sweep([*base, "optim.lr=1e-3,1e-2"], capsys)[0] == 0
    finished = {p.name: (p / "result.json").read_text() for p in folder.iterdir() if p.is_dir()}

    found: list = []  # where each job's result will be: what exit_code reads when the launcher reports no codes
    argv = ftbench_cli.sweep_argv([*base, "optim.lr=1e-3,1e-2", "method=full,lora"])
    assert ftbench_cli.validate(ftbench_cli.overrides_in(argv), True, found) is None
    assert [p.name for p in found] == ["optim.lr=0.001", "method=lora,optim.lr=0.001",
                                       "optim.lr=0.01", "method=lora,optim.lr=0.01"]
    assert sweeps.exit_code([found[0], found[2]], []) == 0

    code, stderr = sweep([*base, "optim.lr=1e-3,1e-2", "method=full,lora"], capsys)
    skipped = [line for line in stderr.splitlines() if SKIPPED_ELSEWHERE in line]
    assert code == 0 and len(skipped) == 2, stderr
    assert skipped[0].startswith(f"ftbench: {folder / 'method=full,optim.lr=0.001'}: ") and skipped[0].endswith(
        "skipped, its result stands for this job") and str(folder / "optim.lr=0.001") in skipped[0]
    assert not list(folder.glob("method=full,*/result.json"))  # nothing trained again
    assert {p.parent.name for p in folder.glob("*/result.json")} == {
        "optim.lr=0.001", "optim.lr=0.01", "method=lora,optim.lr=0.001", "method=lora,optim.lr=0.01"}
    assert all((folder / name / "result.json").read_text() == text for name, text in finished.items())

    code, stderr = sweep([*base, "optim.lr=1e-2"], capsys)  # one job: its folder is the method's name
    assert code == 0 and stderr.count(SKIPPED_ELSEWHERE) == 1 and str(folder / "optim.lr=0.01") in stderr
    assert not (folder / "full" / "result.json").exists()
    with (folder / "report.csv").open() as handle:
        runs = sorted(row["run"] for row in csv.DictReader(handle))
    assert runs == ["full optim.lr=0.001", "full optim.lr=0.01", "lora optim.lr=0.001", "lora optim.lr=0.01"]


def test_overrides_before_the_multirun_flag_sweep_as_after_it(tmp_path, capsys):
    """`ftbench a=1 -m b=x,y`: was Hydra's argparse usage dump, naming an override the user never typed."""
    folder = tmp_path / "sweep"
    code, err = sweep(["train.progress=false", "-m", *QUICK, "optim.lr=1e-3,1e-2", f"hydra.sweep.dir={folder}"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["optim.lr=0.001", "optim.lr=0.01"]
