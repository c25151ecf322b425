"""`ftbench compare`: the two stages, the statistics, the report, reruns (tiny-llama, synthetic, tiny budgets)."""

import json
import math
import re
import warnings

import pytest
import yaml
from scipy import stats as scipy_stats

from ftbench import results
from ftbench.compare import cells, runner, stats
from ftbench.compare.spec import SpecError, load
from helpers import cli, peft_adapter
from test_glue import FIXTURES, write_glue

# make test runs this whole file on one worker (conftest.ONE_WORKER), so its module fixture runs once.

TINY = ["task.num_train=256", "task.num_eval=64", "hardware=cpu", "train.progress=false",
        "hardware.max_micro_batch_size=null"]


def write_spec(path, **keys):
    spec = {"model": "tiny-llama", "tasks": ["synthetic"], "budget": {"steps": 4, "batch_size": 16},
            "validation_from_train": 64, "validations": 2, "set": TINY, **keys}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Full fine-tuning under two labels over 5 seeds, and an arm whose updates vanish (lr 1e-30)."""
    folder = tmp_path_factory.mktemp("twins")
    spec = write_spec(folder / "twins.yaml", methods=["full", "twin", "lazy"], seeds=[0, 1, 2, 3, 4],
                      variants={"twin": ["method=full"], "lazy": ["method=full"]}, lr_factors=[1.0, 3.0],
                      lr={"lazy": [1e-30]})
    done = cli("ftbench", "compare", str(spec), "--out", str(folder / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    return spec, folder / "out", done


def rows(out):
    summary = json.loads((out / "comparison.json").read_text())
    return summary, {r["arm"]: r for r in summary["tasks"][0]["rows"]}


def test_the_same_config_under_two_labels_is_never_different(twins):
    _, out, _ = twins
    summary, by_arm = rows(out)
    chosen = summary["tasks"][0]["chosen"]
    assert chosen["full"] == chosen["twin"]  # stage 1 saw the same scores
    twin = by_arm["twin"]
    assert twin["ok_seeds"] == "5/5" and twin["p_vs_full"] >= 0.05
    assert twin["vs_full"] == "not distinguishable at n = 5"
    assert (twin["mean"], twin["ci95"]) == (by_arm["full"]["mean"], by_arm["full"]["ci95"])


def test_an_arm_that_trains_nothing_is_flagged_in_the_report(twins):
    _, out, _ = twins
    _, by_arm = rows(out)
    assert by_arm["lazy"]["warnings"].startswith("trained nothing") and by_arm["lazy"]["changed_pct"] == 0
    assert by_arm["full"]["warnings"] is None
    assert "Engagement warnings:\n\n- lazy: trained nothing" in (out / "comparison.md").read_text()


def test_the_report_files_and_their_figures(twins):
    _, out, done = twins
    assert {"comparison.json", "comparison.md", "comparison.csv", "comparison.png"} <= {p.name for p in out.iterdir()}
    _, by_arm = rows(out)
    full = by_arm["full"]
    assert full["metric"] == "dev/acc" and full["step_s"] > 0 and full["trainable_pct"] == 100
    assert full["time_to_target_s"] > 0 and full["reached"] in ("1/5", "2/5", "3/5", "4/5", "5/5")
    assert "Student's t" in done.stdout and "ttest_rel" in done.stdout
    layout = {p.relative_to(out).as_posix() for p in out.glob("synthetic/*/*/*")}
    assert "synthetic/lr/lazy/lr1e-30" in layout and "synthetic/seeds/twin/seed4" in layout


def test_a_rerun_on_a_finished_folder_runs_nothing_and_prints_the_same_report(twins, tmp_path):
    spec, out, first = twins
    before = (out / "comparison.md").read_text()
    again = cli("ftbench", "compare", str(spec), "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "ftbench -m" not in again.stdout and "Launching" not in again.stdout + again.stderr
    assert (out / "comparison.md").read_text() == before
    assert before in again.stdout and before in first.stdout
    rebuilt = cli("ftbench-report", str(out), "--out", str(tmp_path))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (tmp_path / "comparison.md").read_text() == before


def test_a_comparison_written_where_another_stands_keeps_it(twins, tmp_path):
    """`ftbench-report DIR --out OUT` (and `ftbench compare` with another spec into a folder) wrote over the
    comparison.json/.md/.csv/.png already in OUT: now kept as comparison.previous-N.*, with one line; the
    same comparison written again replaces itself."""
    _, out, _ = twins
    (tmp_path / "comparison.json").write_text('{"spec": "another"}')
    (tmp_path / "comparison.png").write_bytes(b"another plot")
    rebuilt = cli("ftbench-report", str(out), "--out", str(tmp_path))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (tmp_path / "comparison.previous-1.json").read_text() == '{"spec": "another"}'
    assert (tmp_path / "comparison.previous-1.png").read_bytes() == b"another plot"
    assert (tmp_path / "comparison.json").read_bytes() == (out / "comparison.json").read_bytes()
    assert (f"the earlier comparison, which differs, is kept as {tmp_path / 'comparison.previous-1.json'}, "
            f"{tmp_path / 'comparison.previous-1.png'}") in rebuilt.stdout
    before = sorted(p.name for p in tmp_path.iterdir())
    again = cli("ftbench-report", str(out), "--out", str(tmp_path))
    assert again.returncode == 0 and "kept" not in again.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert results.find(list(tmp_path.iterdir())) == []  # ftbench-report OUT/* passes the kept copy over


def test_a_dry_run_with_another_budget_lists_every_run_as_made_from_another_config(twins):
    spec, out, _ = twins
    listed = cli("ftbench", "compare", str(spec), "--out", str(out), "--dry-run", "budget.steps=5")
    assert listed.returncode == 0, listed.stderr
    assert "0 of 5 runs done" in listed.stdout and "made from another config (differs in: train.max_steps)" in listed.stdout
    assert "min" in listed.stdout and "minutes of wall time" in listed.stdout


def test_a_dry_run_estimates_each_run_with_its_setup_and_evaluation(twins, tmp_path):
    """No finished run to measure: every run costs budget.steps x estimate.step_s + estimate.run_s; the 5
    stage-1 runs (2 lrs for full and twin, 1 for lazy) and the 15 of stage 2: 20 x (4 x 1 + 10) s."""
    spec, _, _ = twins
    listed = cli("ftbench", "compare", str(spec), "--out", str(tmp_path), "--dry-run", "estimate.step_s=1",
                 "estimate.run_s=10")
    assert listed.returncode == 0, listed.stderr
    assert "full: 2 runs, ~0.5 min (14 s a run, spec estimate)" in listed.stdout
    assert f"to do: ~{20 * 14 / 60:.1f} minutes of wall time" in listed.stdout  # under an hour: in minutes


def test_a_budget_in_tokens_gives_every_run_the_tokens_and_one_validation_interval(twins):
    """budget.tokens: each run trains to the tokens (train.max_tokens); the validations come every
    (fewest steps over the seeds) / validations steps."""
    spec, out, _ = twins
    listed = cli("ftbench", "compare", str(spec), "--out", str(out), "--dry-run", "budget.steps=null",
                 "budget.tokens=3000")
    assert listed.returncode == 0, listed.stderr
    bought = re.search(r"synthetic: budget.tokens=3000 buys ([\d, ]+) steps \(seeds 0, 1, 2, 3, 4\)", listed.stdout)
    counts = [int(n) for n in bought.group(1).split(", ")]
    assert len(counts) == 5 and min(counts) >= 2
    commands = [line for line in listed.stdout.splitlines() if line.strip().startswith("ftbench -m")]
    assert commands and all("train.max_tokens=3000" in c and "train.max_steps=" not in c for c in commands)
    assert "made from another config" in listed.stdout
    tokens = load(spec, ["budget.steps=null", "budget.tokens=3000"])
    with cells.Composer(tokens) as composer:  # stage 2's runs: the tokens, and validations every fewest // 2 steps
        [run] = cells.make_runs(composer, tokens, out, "seeds", "synthetic", "full", [1e-4], [0])
    assert (run.config["train"]["max_tokens"], run.config["train"]["max_steps"]) == (3000, None)
    assert run.budget_steps == min(counts) and run.config["eval"]["every_steps"] == min(counts) // 2
    too_many = cli("ftbench", "compare", str(spec), "--out", str(out), "--dry-run", "budget.steps=null",
                   "budget.tokens=3000", f"validations={min(counts) + 1}")
    assert too_many.returncode == 2 and too_many.stderr.strip().startswith(
        f"ftbench compare: error: validations: {min(counts) + 1} validations do not fit the {min(counts)} steps")


def test_stage_one_never_reads_the_reported_split(tmp_path):
    """Garbage in place of the dev file: stage 1 still scores every lr on the held-out split and picks one
    (it never opens dev.tsv); only stage 2, which scores dev, is refused on it: every one of its runs alike,
    which stops the comparison on the spec's key (data), exit 2."""
    header, lines = FIXTURES["sst2"]
    write_glue(tmp_path / "sst2", "sst2", header, lines * 40)
    (tmp_path / "sst2" / "dev.tsv").write_bytes(b"\xff\xfe\x00garbage\n")
    spec = write_spec(tmp_path / "garbage.yaml", model="tiny-bert", tasks=["sst2"], data=str(tmp_path),
                      methods=["full"], seeds=[0, 1], validation_from_train=16, set=TINY[2:])
    done = cli("ftbench", "compare", str(spec), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-2000:]
    scored = [json.loads(p.read_text()) for p in (tmp_path / "out/sst2/lr/full").glob("lr*/result.json")]
    assert len(scored) == 3 and all(r["status"] == "ok" and r["metrics"].get("val/acc") is not None for r in scored)
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"ftbench compare: error: data: sst2 full: every stage-2 run was refused: task.data_dir: {tmp_path}/sst2/dev.tsv")


def test_a_bad_spec_is_one_line(tmp_path):
    spec = write_spec(tmp_path / "bad.yaml", methods=["full", "nosuch"])
    done = cli("ftbench", "compare", str(spec))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"ftbench compare: error: {spec}: methods: 'nosuch' is neither a method (adam-mini, ")
    assert line.endswith(") nor a variant's label; give one of them")
    with pytest.raises(SpecError, match="seeds"):
        load(write_spec(tmp_path / "seeds.yaml"), ["seeds=[1,1]"])
    with pytest.raises(SpecError, match="include full"):
        load(write_spec(tmp_path / "nofull.yaml"), ["methods=[lora]"])
    with pytest.raises(SpecError, match="set"):
        load(write_spec(tmp_path / "owned.yaml"), ["set=[optim.lr=0.1]"])


@pytest.mark.parametrize("content,overrides,key", [
    ("model: minilm\ntasks: [sst2\n", [], "file: cannot be read as YAML"),
    (None, ["methods=[full,lora"], "command line: cannot be read as KEY=VALUE"),
    (None, ["data=/nonexistent"], "data: /nonexistent does not exist"),
    (None, ["validations=500"], "validations: 500 validations do not fit 4 steps"),
    (None, ["budget.tokens=1000"], "budget: give one budget: budget.steps=N, or budget.tokens=N with budget.steps="),
    (None, ["budget.steps=null"], "budget: give one budget"),
    (None, ["estimate.run_s=-1"], "estimate.run_s: -1.0 is not >= 0"),
    (None, ["gpu=tpu-9000"], "gpu: 'tpu-9000' is not a hardware option; one of a100-80gb, "),
    (None, ["budget.step=5"], "budget.step: no such key; valid keys here: steps, tokens, batch_size"),
    (None, ["seeds=[abc]"], "seeds[0]: 'abc' is not an integer; write a whole number"),
    (None, ["budget.tokens=1e3"], "budget.tokens: 1000.0 is not an integer (a number written with a point or an exponent, "
        "as 8.0 or 1e3, is a float); write it as one: 1000"),
    (None, ["seeds=3"], "seeds: give a list in brackets, e.g. seeds=[a,b]"),
    (None, ["seeds=[0]"], "seeds: give two or more distinct seeds >= 0"),
    # a seed numpy cannot take (was: accepted by --dry-run; stage 2 would fail after stage 1 ran)
    (None, ["seeds=[0,4294967296]"], "seeds: 4294967296 is not between 0 and 4294967295 (2**32 - 1, the seeds numpy "
     "takes); give seeds in that range, e.g. seeds=[0,1,2]"),
    (None, ["seeds=[-1,0]"], "seeds: -1 is not between 0 and 4294967295"),
    # a float is a fraction: 1.0 would hold out the whole training set (was: read as one example)
    (None, ["validation_from_train=1.0"], "validation_from_train: 1.0 has a point, so it is read as a fraction"),
    (None, ["methods=[full,lora,lora]"], "methods: 'lora' is listed twice"),
    (None, ["tasks=[synthetic,synthetic]"], "tasks: 'synthetic' is listed twice"),
    (None, ["alpha=2"], "alpha: 2.0 is not in (0, 1)"),
    (None, ["validations=0"], "validations: 0 is not >= 1"),
    (None, ["lr_factors=[]"], "lr_factors: give one or more factors, each > 0"),
    ("- model\n- tasks\n", [], "file: holds a list, not the spec's keys"),
    ("", [], "file: is empty (no keys, comments at most); give the spec's keys"),  # was the default comparison
    ("# to fill in\n\n", [], "file: is empty (no keys, comments at most)"),
    (None, ["data=/proc/self"], "data: /proc/self has no synthetic/ folder"),
    (None, ["methods=[full,lora]", "variants={full: [method=lora]}"], "variants.full: 'full' is a method's name"),
    (None, ["methods=[full,v]", "variants={v: [method=lora, optim.lr=0.01]}"], "variants.v: optim.lr=0.01: the "
     "comparison sets this for every arm"),
    (None, ["methods=[full,v]", "variants={v: [method=lora, task.max_length=8]}"], "variants.v: task.max_length=8"),
])
def test_a_bad_spec_or_override_is_one_spec_error_naming_its_key(tmp_path, content, overrides, key):
    spec = tmp_path / "spec.yaml"
    if content is None:
        write_spec(spec)
    else:
        spec.write_text(content)
    with pytest.raises(SpecError) as error:
        load(spec, overrides)
    assert str(error.value).startswith(f"{spec}: {key}") and "\n" not in str(error.value)


def test_an_integer_learning_rate_is_a_float(tmp_path):
    """An lr grid of whole numbers, on the command line or in the file (OmegaConf refuses an int in a dict's
    list of floats when it merges one in: spec.integer_lrs_as_floats)."""
    spec = write_spec(tmp_path / "spec.yaml", methods=["full", "lora"], lr={"lora": [1, 2e-3]})
    assert load(spec, ["lr={full:[1, 2]}"]).lr == {"full": [1.0, 2.0], "lora": [1.0, 2e-3]}
    with pytest.raises(SpecError, match=r"lr.full: Value True \(bool\) is incompatible"):
        load(spec, ["lr={full:[true]}"])


def test_an_out_that_is_a_file_is_refused_before_any_run(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as code:
        runner.main([str(write_spec(tmp_path / "spec.yaml")), "--out", str(tmp_path / "file")])
    error = capsys.readouterr().err.strip()
    assert code.value.code == 2 and error == f"ftbench compare: error: --out: {tmp_path / 'file'} is a file, not a " \
        "folder; give a folder (new or holding this comparison)"


@pytest.mark.parametrize("keys,line", [
    ({"tasks": ["nosuch"]}, "tasks: task=nosuch: no such option; choose one of: "),
    ({"model": "nosuch"}, "model: model=nosuch: no such option; choose one of: "),
    ({"set": [*TINY, "train.nosuch=1"]}, "set: train.nosuch: no such key"),
    ({"set": [*TINY, "optim.warmup_steps=9"]}, "set: optim.warmup_steps: 9 is not below the run's 4 steps: the "
     "learning rate would never reach optim.lr; set optim.warmup_steps below 4, or set budget.steps to at least 10"),
    ({"set": [*TINY, "model.hub_id=x/y"]}, "set: model.hub_id: model=tiny-llama builds a random-init shape"),
    ({"methods": ["full", "v"], "variants": {"v": ["method=full", "method.nosuch=1"]}}, "variants.v: method.nosuch: "),
])
def test_a_refused_run_names_the_spec_key_it_came_from(tmp_path, capsys, keys, line):
    spec = write_spec(tmp_path / "spec.yaml", **keys)
    with pytest.raises(SystemExit) as code:
        runner.main([str(spec), "--dry-run", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code.value.code == 2 and error.startswith(f"ftbench compare: error: {line}") and "\n" not in error


def test_a_model_path_that_holds_no_model_is_refused_before_any_run(tmp_path, capsys):
    adapter = peft_adapter(tmp_path / "adapter", "meta-llama/Llama-2-7b-hf")
    spec = write_spec(tmp_path / "spec.yaml", set=[*TINY, f"model.path={adapter}", "model.random_init=false"])
    with pytest.raises(SystemExit) as code:
        runner.main([str(spec), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code.value.code == 2 and error.startswith(f"ftbench compare: error: set: model.path: '{adapter}' is a PEFT "
                                                     "adapter of base model meta-llama/Llama-2-7b-hf, not a model")
    assert not (tmp_path / "out" / "synthetic").exists()  # nothing ran


def test_a_model_path_whose_sizes_disagree_is_refused_before_any_run(tmp_path, capsys):
    """config/sizes.py: was torch's RuntimeError in every cell's first step."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                                    "num_key_value_heads": 3}))
    (folder / "model.safetensors").touch()
    spec = write_spec(tmp_path / "spec.yaml", set=[*TINY, f"model.path={folder}", "model.random_init=false"])
    with pytest.raises(SystemExit) as code:
        runner.main([str(spec), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code.value.code == 2 and error == (f"ftbench compare: error: set: model.path: '{folder}/config.json': "
                                              "num_attention_heads 4 is not a multiple of num_key_value_heads 3: each "
                                              "key/value head serves an equal group of query heads; write "
                                              "num_key_value_heads as a divisor of 4 (2 or 4)")
    assert not (tmp_path / "out" / "synthetic").exists()  # nothing ran


@pytest.mark.parametrize("values", [[0.5, 0.7, 0.6], [1.0, 2.0], [3.0, 3.1, 2.9, 3.3, 2.7]])
def test_the_interval_is_students_t(values):
    got = stats.interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=got.mean, scale=scipy_stats.sem(values))
    assert got.half_width == pytest.approx((high - low) / 2)
    assert stats.interval([0.5]).half_width is None


def test_paired_tests_say_when_they_cannot_tell():
    same = {0: 0.8, 1: 0.7, 2: 0.9}
    assert stats.paired(same, dict(same), 0.05) == stats.Paired(0.0, 1.0, 3, "not distinguishable at n = 3")
    noisy = stats.paired({0: 0.80, 1: 0.70, 2: 0.90}, {0: 0.79, 1: 0.72, 2: 0.88}, 0.05)
    assert noisy.verdict == "not distinguishable at n = 3" and noisy.p >= 0.05
    clear = stats.paired({s: 0.9 + 0.001 * s for s in range(5)}, {s: 0.5 + 0.002 * s for s in range(5)}, 0.05)
    assert clear.verdict == "better" and clear.p < 0.05
    assert stats.paired({0: 1.0}, {0: 0.0}, 0.05).verdict == "no test at n = 1"
    assert stats.paired({s: 1.0 + s for s in range(3)}, {s: 2.0 + s * 1.01 for s in range(3)}, 0.05).verdict == "worse"


@pytest.mark.parametrize("a,b,p,verdict", [
    ({0: 0.8, 1: 0.7}, {0: 0.8, 1: 0.7}, 1.0, "not distinguishable at n = 2"),  # identical values: no difference
    ({0: 0.5092, 1: 0.5092}, {0: 0.4908, 1: 0.4908}, None, "no test at n = 2: the same difference at every seed"),
    ({0: 0.3, 1: 0.7, 2: 0.9}, {0: 0.2, 1: 0.6, 2: 0.8}, None,  # 0.1 at every seed, to within rounding
     "no test at n = 3: the same difference at every seed"),
])
def test_differences_that_do_not_vary_over_the_seeds_leave_the_test_undefined(a, b, p, verdict):
    """Two arms each predicting one class at every seed: the paired t statistic divides by a spread of 0. The
    verdict says there is no test (was "better"/"worse" at p = 0.000, scipy's precision-loss warning on
    stderr); identical values stay not distinguishable, at p = 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in ((a, b), (b, a)):
            test = stats.paired(x, y, 0.05)
            assert (test.p, test.verdict) == (p, verdict)


def test_the_lr_choice_time_to_target_and_the_front():
    assert stats.choose({1e-4: 0.8, 3e-4: 0.8, 1e-3: None, 3e-3: math.nan}) == 1e-4
    assert stats.choose({1e-4: 0.3, 3e-4: 0.2}, higher_is_better=False) == 3e-4
    assert stats.choose({1e-4: None}) is None
    assert stats.time_to_target([(10, 0.5), (20, 0.85), (30, 0.9)], 0.8, 0.5) == 10.0
    assert stats.time_to_target([(10, 0.5)], 0.8, 0.5) is None
    assert stats.target(0.9, [0.8, 0.7]) == pytest.approx(0.675) and stats.target(0.9, []) is None
    assert stats.target(0.9, [0.0, 0.0, 0.0]) is None  # an MCC at chance: nothing to reach
    assert stats.pareto([(1, 0.5), (2, 0.9), (3, 0.8), (2, 0.4)]) == [0, 1]


def test_time_to_target_on_a_loss_is_within_the_ratio_above_full_fine_tuning():
    """A lower-is-better metric (metric=loss): the target is full's final loss ÷ target, reached from above, so
    full fine-tuning reaches its own target, as it does on accuracy (was 0.9 × full's loss: beating full by 10 %,
    full 0/2 'reached')."""
    full = [[(1, 0.71), (2, 0.66)], [(1, 0.72), (2, 0.6612)]]  # two seeds' validation losses
    goal = stats.target(0.9, [curve[-1][1] for curve in full], higher_is_better=False)
    assert goal == pytest.approx(0.6606 / 0.9)
    assert [stats.time_to_target(curve, goal, 0.5, higher_is_better=False) for curve in full] == [0.5, 0.5]
    assert stats.time_to_target([(1, 0.8), (2, 0.75)], goal, 0.5, higher_is_better=False) is None  # never within
    accuracy = [[(1, 0.5), (2, 0.8)], [(1, 0.6), (2, 0.9)]]
    goal = stats.target(0.9, [curve[-1][1] for curve in accuracy])
    assert goal == pytest.approx(0.765) and [stats.time_to_target(c, goal, 0.5) for c in accuracy] == [1.0, 1.0]
