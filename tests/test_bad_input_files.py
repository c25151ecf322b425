"""Files and folders: every file ftbench writes has the user's umask mode, a broken JSON file it reads back is
named with what is wrong, and a folder given where a file is meant (or the reverse) is said as it is."""

import json
import os
from pathlib import Path

import pytest

from ftbench import files
from ftbench.errors import UserError
from ftbench.models.tokenizer import byte_level_tokenizer
from ftbench.tasks import build_task
from helpers import QUICK, compose, llm_adapters_rows, run


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# Kind 4: every file ftbench writes gets the umask's mode (tempfile and safetensors make them private).

def test_every_file_a_run_writes_has_the_umask_mode(tmp_path, umask_022):
    out = tmp_path / "run"
    result = run(out, "method=sift", "train.save=last", "train.checkpoint_every=1", *QUICK)
    assert result["status"] == "ok", result["error"]
    written = [p for p in out.rglob("*")]
    assert any(p.name == "trainable.safetensors" for p in written) and any(p.parent.name == "merged" for p in written)
    wrong = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in written
             if p.stat().st_mode & 0o777 != (0o755 if p.is_dir() else 0o644)}
    assert not wrong


def test_plan_json_and_temp_folders_have_the_umask_mode(tmp_path, umask_022):
    from ftbench.plan import report as plan_report

    assert plan_report.write({"run": {}}, tmp_path).stat().st_mode & 0o777 == 0o644
    assert files.temp_dir(tmp_path, ".x-").stat().st_mode & 0o777 == 0o755
    os.umask(0o002)
    assert files.write_atomic(tmp_path / "t.json", "{}").stat().st_mode & 0o777 == 0o664
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["plan.json", "t.json"]  # no temp left


# Kind 5: a JSON file ftbench reads back names the file and what is wrong.

@pytest.mark.parametrize("text,what", [
    ('{"schema": 1, "status": "o', "truncated"),
    ("", "the file is empty"),
    ('{"schema": 1,, }', "not valid JSON"),
    ("[1, 2]", "holds a JSON list, not a result"),
    (None, "is a directory, not a file"),  # a folder named result.json: was "result.json/result.json: cannot be read"
])
def test_ftbench_report_on_a_broken_result_names_the_file(tmp_path, capsys, text, what):
    from ftbench.cli import report_main

    if text is None:
        (tmp_path / "result.json").mkdir()
    else:
        (tmp_path / "result.json").write_text(text)
    with pytest.raises(SystemExit) as stop:
        report_main([str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"ftbench-report: error: {tmp_path / 'result.json'}: {what}")


def test_a_broken_plan_json_names_the_file(tmp_path):
    from ftbench.plan import report as plan_report

    (tmp_path / "plan.json").write_text('{"run": {"method"')
    with pytest.raises(UserError, match=r"plan.json: truncated \(line 1 .*rerun `ftbench plan`"):
        plan_report.read(tmp_path / "plan.json")
    (tmp_path / "plan.json").unlink()
    (tmp_path / "plan.json").mkdir()  # was "cannot be read (Is a directory)"
    with pytest.raises(UserError, match=r"plan.json: is a directory, not a file; rerun `ftbench plan`"):
        plan_report.read(tmp_path / "plan.json")


def test_a_broken_comparison_json_names_the_file(tmp_path):
    """ftbench-report of a comparison's folder reads its comparison.json: was json's bare "Expecting value"."""
    from ftbench.compare.report import rebuild

    (tmp_path / "comparison.json").write_text('{"spec": ')
    with pytest.raises(UserError, match=r"comparison.json: truncated \(line 1 .*run the comparison again"):
        rebuild(tmp_path)


def test_a_broken_result_in_the_run_dir_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text('{"status": "ok", "conf')
    from ftbench.job.run import run_job

    assert run_job(compose(*QUICK), out) == 2
    assert "hydra.run.dir: " + str(out / "result.json") + ": truncated" in capsys.readouterr().err
    assert (out / "result.json").read_text() == '{"status": "ok", "conf'


# Kind 11: a folder where a file is meant, or a file where a folder is meant, is said as it is (never "no such
# file" beside a listing that holds it), in one line naming the key.

def _tsv(folder: Path) -> None:
    (folder / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\n")


def _instruct(folder: Path) -> None:
    (folder / "math_data.train.json").write_text(json.dumps(llm_adapters_rows(4)))


def _harness(cfg_dir: Path):
    from types import SimpleNamespace

    from ftbench.tasks.harness import local_tasks

    return local_tasks(SimpleNamespace(data_dir=str(cfg_dir), tasks=["ftbench_commonsense_boolq"]), cfg_dir / "out")


def _gguf(given: Path, name: str | None):
    from omegaconf import OmegaConf

    from ftbench.models.gguf import locate

    return locate(OmegaConf.create({"path": str(given), "package": None, "gguf_file": name}))


@pytest.mark.parametrize("folder_named,setup,load,message", [
    ("train.tsv", _tsv,  # a GLUE split's file
     lambda d: build_task(compose("task=sst2", f"task.data_dir={d}").task, byte_level_tokenizer(), seed=0),
     r"^task.data_dir: '.*/train.tsv' is a directory, not a file; expected the GLUE SST2 files train.tsv, dev.tsv$"),
    ("alpaca_data.json", None,  # an instruct training file (every pattern matches only the folder)
     lambda d: build_task(compose("task=alpaca", f"task.data_dir={d}").task, byte_level_tokenizer(), seed=0),
     r"^task.train_files: '.*/alpaca_data.json' is a directory, not a file; name the training files"),
    ("gsm8k.test.json", _instruct,  # a reasoning task's eval set
     lambda d: build_task(compose("task=math", f"task.data_dir={d}", "task.val_size=0").task,
                          byte_level_tokenizer(), seed=0),
     r"^task.data_dir: '.*/gsm8k.test.json' is a directory, not a file; the gsm8k test set is <set>.test.json"),
    ("commonsense/boolq.test.json", None, _harness,  # a shipped harness task's test file
     r"^eval.harness.data_dir: '.*/commonsense/boolq.test.json' is a directory, not a file \(task "
     r"ftbench_commonsense_boolq\)"),
    ("model.gguf", None, lambda d: _gguf(d / "model.gguf", None),  # model.path naming a GGUF file
     r"^model.path: '.*/model.gguf' is a directory, not a file; give the .gguf file itself$"),
    ("q4.gguf", None, lambda d: _gguf(d, "q4.gguf"),  # model.gguf_file in model.path
     r"^model.gguf_file: '.*/q4.gguf' is a directory, not a file"),
])
def test_a_folder_where_a_file_is_meant_says_so(tmp_path, folder_named, setup, load, message):
    (tmp_path / folder_named).mkdir(parents=True)
    if setup is not None:
        setup(tmp_path)
    with pytest.raises(UserError, match=message):
        load(tmp_path)


def test_a_folder_or_file_given_to_the_other_clis_is_said_as_it_is(tmp_path, capsys):
    from ftbench.cli import report_main
    from ftbench.compare.spec import SpecError, find
    from ftbench.compare.spec import load as load_spec
    from ftbench.paper.recipes import RecipeError
    from ftbench.paper.recipes import load as load_recipe
    from ftbench.paper.reproduce import parse

    folder, file = tmp_path / "folder.yaml", tmp_path / "file"
    folder.mkdir()
    file.write_text("x")
    with pytest.raises(SpecError, match=r"folder.yaml: file: is a directory, not a file; give a spec file"):
        find(folder)
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: tiny-llama\ntasks: [synthetic]\nmethods: [full]\n")
    with pytest.raises(SpecError, match=rf"spec.yaml: data: {file} is a file, not a directory \(relative"):
        load_spec(spec, [f"data={file}"])
    (tmp_path / "data" / "synthetic").parent.mkdir()
    (tmp_path / "data" / "synthetic").write_text("x")
    with pytest.raises(SpecError, match=r"spec.yaml: data: .*data/synthetic is a file, not a directory: each task"):
        load_spec(spec, [f"data={tmp_path / 'data'}"])
    with pytest.raises(RecipeError, match=r"folder.yaml: is a directory, not a file; give a recipe file"):
        load_recipe(folder)
    for argv, line in ((["r", "--data", str(file)], f"--data: '{file}' is a file, not a directory"),
                       (["r", "--out", str(file)], f"--out: '{file}' is a file, not a directory")):
        with pytest.raises(SystemExit) as stop:
            parse(argv)
        assert stop.value.code == 2 and line in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        report_main([str(tmp_path), "--out", str(file)])
    assert stop.value.code == 2
    assert f"ftbench-report: error: --out: {file} is a file, not a directory" in capsys.readouterr().err
