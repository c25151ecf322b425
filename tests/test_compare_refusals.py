"""`ftbench compare` refuses bad input as one line naming the spec's key, exit 2: before any run where the
spec and the tasks' data tell (a held-out split the training data cannot hold, a budget of 0 steps), and
after the first multirun whose every run was refused alike (what only a run finds)."""

import re
from types import SimpleNamespace

import pytest

from ftbench.compare import cells, runner
from ftbench.compare.spec import SpecError, load
from helpers import cli
from test_compare import TINY, write_spec
from test_glue import FIXTURES, write_glue


def five_rows(tmp_path, **keys):
    """A spec on a local SST-2 of 5 training rows (tiny-bert), one arm unless `keys` say otherwise."""
    header, lines = FIXTURES["sst2"]
    write_glue(tmp_path / "data" / "sst2", "sst2", header, (lines * 3)[:5])
    keys = {"model": "tiny-bert", "tasks": ["sst2"], "data": str(tmp_path / "data"), "methods": ["full"],
            "seeds": [0, 1], "budget": {"steps": 2, "batch_size": 2}, "validations": 1, "set": TINY[2:], **keys}
    return write_spec(tmp_path / "spec.yaml", **keys)


def refused(tmp_path, capsys, spec, *args):
    with pytest.raises(SystemExit) as code:
        runner.main([str(spec), "--out", str(tmp_path / "out"), *args])
    error = capsys.readouterr().err.strip()
    assert code.value.code == 2 and "\n" not in error, error
    return error


@pytest.mark.parametrize("held,say", [(8, "8 of 5"), (5, "5 of 5"), (0.05, "0.05 of 5")])
def test_a_held_out_split_the_training_data_cannot_hold_is_refused_by_a_dry_run(tmp_path, capsys, held, say):
    spec = five_rows(tmp_path, validation_from_train=held)
    error = refused(tmp_path, capsys, spec, "--dry-run")
    assert error == (f"ftbench compare: error: validation_from_train: sst2: task.validation_from_train: {say} "
                     "training examples leaves an empty split; hold out some and keep some (a fraction in (0, 1) or "
                     "a smaller count)")
    assert refused(tmp_path, capsys, spec, "--dry-run", "budget.steps=null", "budget.tokens=40") == error


def test_a_held_out_split_the_training_data_cannot_hold_is_refused_before_any_run(tmp_path):
    spec = five_rows(tmp_path, validation_from_train=8, methods=["full", "lora"])
    done = cli("ftbench", "compare", str(spec), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "ftbench compare: error: validation_from_train: sst2: task.validation_from_train: 8 of 5 training examples "
        "leaves an empty split; hold out some and keep some (a fraction in (0, 1) or a smaller count)"]
    assert not (tmp_path / "out").exists() and "ftbench -m" not in done.stdout


@pytest.mark.parametrize("budget", [{"steps": 2}, {"steps": None, "tokens": 40}])
def test_a_batch_the_training_data_cannot_fill_is_refused_by_a_dry_run(tmp_path, capsys, budget):
    """A split that leaves fewer training examples than one batch: every budget refuses it before any run
    (was, under budget.steps: after the first multirun, every run refused on train.batch_size)."""
    spec = five_rows(tmp_path, validation_from_train=1, budget={**budget, "batch_size": 8})
    assert refused(tmp_path, capsys, spec, "--dry-run") == (
        "ftbench compare: error: budget.batch_size: sst2: the training set holds 4 examples once "
        "validation_from_train=1 is held out, fewer than one batch of 8; lower budget.batch_size to 4 or less, "
        "hold fewer out, or give the task more training data")


def test_a_token_budget_of_more_epochs_than_the_count_walks_names_the_tokens(tmp_path, capsys):
    spec = five_rows(tmp_path, validation_from_train=1, budget={"steps": None, "tokens": 10**11, "batch_size": 2})
    error = refused(tmp_path, capsys, spec, "--dry-run")
    assert re.fullmatch(r"ftbench compare: error: budget.tokens: sst2, seed 0's split: 100000000000 tokens are more than 10000 epochs "
                        r"of the 4 training examples \(\d+ tokens an epoch\); give at most \d+, or a budget in steps "
                        r"\(budget.steps\)", error), error


def test_a_multirun_whose_every_run_is_refused_alike_stops_the_comparison(tmp_path):
    """A rotation that never switches in the budget, which only a run can find (it counts the model's layers):
    the first arm's stage-1 runs are all refused on method.steps_per_block, and the comparison stops there, exit 2."""
    spec = five_rows(tmp_path, validation_from_train=1, methods=["badam", "full"], budget={"steps": 2, "batch_size": 2})
    done = cli("ftbench", "compare", str(spec), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [  # one line: the run leaves its own to the comparison
        "ftbench compare: error: methods: sst2 badam: every stage-1 run was refused: method.steps_per_block: 50 steps "
        "per block in a 2-step run: it never switches, so only layer.0 of the 2 rotating units would train; set "
        "method.steps_per_block=1, or set budget.steps to at least 51"]
    assert (tmp_path / "out/sst2/lr/badam").is_dir() and not (tmp_path / "out/sst2/lr/full").exists()
    assert "runs again" not in done.stdout and not (tmp_path / "out/comparison.md").exists()


def test_a_refusal_under_a_token_budget_advises_budget_tokens_that_pass(tmp_path):
    """A HiFT arm warmed up for one cycle in a 2-step budget: the run's refusal advises train.max_tokens, which the
    comparison owns; its one line names the variant and budget.tokens, the tokens of the steps needed at every
    seed, and the comparison with that budget runs (was: two lines, 'set train.max_steps to at least 4, or
    method.group_size to at least 2', the one owned by budget.tokens, the other then refused on the warm-up)."""
    spec = five_rows(tmp_path, validation_from_train=1, methods=["hift", "full"], lr={"hift": [1e-3], "full": [1e-4]},
                     variants={"hift": ["method=hift", "optim.warmup_steps=1"]},
                     budget={"steps": None, "tokens": 40, "batch_size": 2})
    done = cli("ftbench", "compare", str(spec), "--out", str(tmp_path / "out"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    advised = re.fullmatch(r"ftbench compare: error: variants.hift: sst2 hift: every stage-1 run was refused: "
                           r"method.steps_per_block: .*; set budget.tokens to at least (\d+) \(the tokens of 8 steps "
                           r"at every seed\), or method.group_size=4", lines[0])
    assert advised, lines[0]
    followed = cli("ftbench", "compare", str(spec), "--out", str(tmp_path / "advised"), "budget.steps=null",
                   f"budget.tokens={advised[1]}")
    assert followed.returncode == 0, followed.stderr[-2000:]


def test_a_refusal_that_does_not_stop_the_comparison_is_printed_once(tmp_path, capsys):
    """The runs leave their refusal lines to the comparison (engine/outcome.py REFUSALS_TO_PARENT): one that does not
    stop it (the other lr trained) is printed by it, once."""
    spec = load(five_rows(tmp_path), [])
    results = [SimpleNamespace(status="failed", error="optim.lr: too large", run=SimpleNamespace(exit_code=2)),
               SimpleNamespace(status="ok", error=None, run=SimpleNamespace(exit_code=0))]
    runs = [SimpleNamespace(result=lambda r=r: r, arm="full", task="sst2", stage="lr") for r in results]
    runner.check_refused(None, spec, runs, 2)
    assert capsys.readouterr().err == "ftbench: failed: optim.lr: too large\n"


@pytest.mark.parametrize("overrides,line", [
    (["budget.steps=0"], "budget.steps: 0 is not >= 1; give the optimizer steps every arm trains"),
    (["budget.steps=-3"], "budget.steps: -3 is not >= 1; give the optimizer steps every arm trains"),
    (["budget.steps=null", "budget.tokens=0"], "budget.tokens: 0 is not >= 1; give the training tokens"),
    (["budget.batch_size=0"], "budget.batch_size: 0 is not >= 1; give the effective batch"),
    (["validation_from_train=0"], "validation_from_train: 0 is neither a fraction in (0, 1) nor a whole number"),
    (["validation_from_train=2.5"], "validation_from_train: 2.5 is neither a fraction in (0, 1) nor a whole number"),
    (["validation_from_train=inf"], "validation_from_train: inf is neither a fraction in (0, 1) nor a whole number"),
    (["lr={full: [-1e-4]}"], "lr.full: give one or more learning rates, each > 0"),
    (["lr={full: []}"], "lr.full: give one or more learning rates, each > 0"),
    (["lr_factors=[0]"], "lr_factors: give one or more factors, each > 0"),
    (["estimate.step_s=0"], "estimate.step_s: 0.0 is not > 0 (seconds a step)"),
    (["estimate.run_s=-1"], "estimate.run_s: -1.0 is not >= 0 (seconds a run spends outside its steps)"),
])
def test_a_bad_value_is_refused_on_its_own_key(tmp_path, overrides, line):
    spec = write_spec(tmp_path / "spec.yaml", methods=["full"])
    with pytest.raises(SpecError) as error:
        load(spec, overrides)
    assert str(error.value).startswith(f"{spec}: {line}") and "\n" not in str(error.value)


@pytest.mark.parametrize("arm,message,key", [
    ("full", "model.hub_id: could not load FacebookAI/roberta-base: the hub is unreachable", "model"),
    ("full", "task.max_length: 9 positions are fewer than ...", "tasks"),
    ("full", "hardware.max_micro_batch_size: ...", "set"),  # given in set
    ("full", "train.batch_size: the training set has 4 examples, fewer than one micro-batch of 8", "budget.batch_size"),
    ("full", "train.max_tokens: no step reaches 40 tokens", "budget.tokens"),
    ("full", "task.validation_from_train: 8 of 5 training examples leaves an empty split", "validation_from_train"),
    ("full", "eval.every_steps: ...", "validations"),
    ("full", "optim.lr: must be finite", "lr_factors"),
    ("v", "optim.lr: must be finite", "lr.v"),
    ("v", "method.rank: must be >= 1", "variants.v"),
    ("full", "method.rank: must be >= 1", "methods"),
])
def test_a_refused_ftbench_key_is_blamed_on_the_spec_key_that_gave_it(tmp_path, arm, message, key):
    spec = load(write_spec(tmp_path / "spec.yaml", methods=["full", "v"], variants={"v": ["method=lora", "method.rank=4"]},
                           lr={"v": [1e-3]}), [])
    assert cells.blame(spec, arm, message) == key


def passes(tmp_path, capsys, spec, *args):
    with pytest.raises(SystemExit) as code:
        runner.main([str(spec), "--out", str(tmp_path / "out"), "--dry-run", *args])
    assert code.value.code == 0, capsys.readouterr().err
    capsys.readouterr()


@pytest.mark.parametrize("keys,advice", [
    # seed 4 holds out a long row, seed 0 a short one: seed 0's split has more tokens an epoch
    ({"seeds": [0, 4], "budget": {"steps": None, "tokens": 10**11, "batch_size": 2}},
     r"budget.tokens: sst2, seed 4's split: .*; give at most (\d+), or"),
    # sst2 keeps 4 rows, cola 2
    ({"tasks": ["sst2", "cola"], "budget": {"steps": 2, "batch_size": 8}},
     r"budget.batch_size: cola: .*; lower budget.batch_size to (\d+) or less"),
    # cola's long rows buy fewer steps than sst2's
    ({"tasks": ["sst2", "cola"], "budget": {"steps": None, "tokens": 200, "batch_size": 2}, "validations": 99},
     r"validations: 99 validations do not fit the \d+ steps budget.tokens buys on cola; lower validations to (\d+)"),
])
def test_following_a_dry_runs_advice_passes_the_dry_run(tmp_path, capsys, keys, advice):
    """A bound a refusal advises holds for every task and seed of the spec, not only the first one read
    (was: the first seed's tokens an epoch, the first task's examples, then refused again on the next)."""
    short, long = "a fine film\t1", "dull and slow and long and tiresome and flat\t0"
    write_glue(tmp_path / "data" / "cola", "cola", None, [long.replace("\t0", " .\t0")] * 3)
    spec = five_rows(tmp_path, validation_from_train=1, **keys)
    write_glue(tmp_path / "data" / "sst2", "sst2", FIXTURES["sst2"][0], [short, long, short, long, short])
    found = re.search(advice, refused(tmp_path, capsys, spec, "--dry-run"))
    assert found, advice
    key = advice.split(":", 1)[0]
    passes(tmp_path, capsys, spec, f"{key}={found.group(1)}")


def test_an_lr_entry_of_a_method_left_out_of_methods_is_unused(tmp_path, capsys):
    """methods=[full] on the command line narrows a spec whose lr also names lora (the command line's lr merges
    into the spec's map): lora's entry is unused, as a variant's that no arm names."""
    spec = five_rows(tmp_path, validation_from_train=1, methods=["full", "lora"], lr={"full": [1e-3], "lora": [1e-3]})
    passes(tmp_path, capsys, spec, "methods=[full]", "lr={full: [1]}")
    assert load(spec, ["methods=[full]"]).lr == {"full": [1e-3], "lora": [1e-3]}


@pytest.mark.parametrize("override,refusal,fix", [("lr={loar: [1e-3]}", "lr: 'loar'", "did you mean lora?"),
                                                   ("lr={zzzzzz: [1e-3]}", "lr: 'zzzzzz'", "give one of them"),
                                                   ("methods=[full,loar]", "methods: 'loar'", "did you mean lora?")])
def test_a_label_naming_no_method_or_variant_is_refused(tmp_path, override, refusal, fix):
    """A misspelled method in lr (or methods) is refused, with the nearest label where one is near."""
    spec = write_spec(tmp_path / "spec.yaml", methods=["full"])
    with pytest.raises(SpecError) as error:
        load(spec, [override])
    assert str(error.value).startswith(f"{spec}: {refusal} is neither a method (adam-mini, ")
    assert str(error.value).endswith(f") nor a variant's label; {fix}")


def test_an_lr_entry_keyed_by_the_method_a_variant_arm_runs_is_refused(tmp_path, capsys):
    """lr={badam: [...]} beside a variant bk2 of method=badam is surely meant for bk2: refused (was: unused, bk2
    at its default lr, no line). The same entry with badam an arm, or no arm running badam, is used or unused."""
    spec = five_rows(tmp_path, validation_from_train=1)
    bk2 = ["methods=[full,bk2]", "variants={bk2: [method=badam, method.steps_per_block=2]}"]
    with pytest.raises(SpecError) as error:
        load(spec, [*bk2, "lr={badam: [5e-4, 2e-3]}"])
    assert str(error.value) == (f"{spec}: lr: 'badam' names no arm; the variant bk2 runs method=badam, so key its "
                                "grid as bk2: lr={bk2:[...]}")
    assert load(spec, [*bk2, "lr={bk2: [5e-4, 2e-3]}"]).lr == {"bk2": [5e-4, 2e-3]}
    assert load(spec, ["methods=[full,badam,bk2]", bk2[1], "lr={badam: [5e-4]}"]).lr == {"badam": [5e-4]}
    assert load(spec, ["methods=[full]", bk2[1], "lr={badam: [5e-4]}"]).lr == {"badam": [5e-4]}  # bk2 no arm


@pytest.mark.parametrize("held", ["sst2/lr/full/lr0.001", "sst2/seeds/full/seed1", "sst2/plan/full"])
@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_a_run_folder_another_process_runs_in_is_refused_before_any_run(tmp_path, capsys, held, dry_run):
    """Another ftbench process running in one of the comparison's folders (a stage-1 lr, a stage-2 seed, the
    planner's with gpu:): the comparison is refused whole on --out, naming the folder and the process, before
    any run (was: that arm's multirun refused on hydra.sweep.dir, the other arms run, a report, exit 1)."""
    from test_lock import Holder

    spec = five_rows(tmp_path, validation_from_train=2, lr={"full": [1e-3]}, gpu="h100-80gb")
    with Holder(tmp_path / "out" / held) as holder:
        error = refused(tmp_path, capsys, spec, *dry_run)
        assert error == (f"ftbench compare: error: --out: {tmp_path / 'out' / held} is in use by another ftbench "
                         f"process (pid {holder.pid}), which holds its lock run.lock; wait for it to end, or give "
                         "another --out")
        made = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
        assert made == [f"{held}/run.lock"]  # nothing run


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_a_metric_no_task_reports_is_refused_before_any_run(tmp_path, capsys, dry_run):
    """metric names the deciding score: one the task does not report is refused with those it does, before any
    run and by a dry run (was: every run made, exit 0, a report of '—' with no lr chosen)."""
    spec = write_spec(tmp_path / "spec.yaml", methods=["full", "lora"], metric="nonsense")
    assert refused(tmp_path, capsys, spec, *dry_run) == (
        "ftbench compare: error: metric: 'nonsense' is not a metric synthetic reports (it reports acc, loss); set "
        "metric to one of them, or null for the task's headline")
    assert not (tmp_path / "out").exists()
    passes(tmp_path, capsys, spec, "metric=loss")


@pytest.mark.parametrize("key,value,problem", [
    ("variants", "..", "'..' is the parent of the folder it would be in"),
    ("variants", ".", "'.' is the folder it would be in, not one inside it"),
    ("variants", "", "'' (empty) names no folder"),
    ("variants", "a/b", "'a/b' holds a /, which no folder's name holds"),
    ("variants", "../../../escape", "'../../../escape' holds a /, which no folder's name holds"),
    ("variants", "a\0b", "'a\0b' holds a NUL, which no folder's name holds"),
    ("tasks", "../sst2", "'../sst2' holds a /, which no folder's name holds"),
])
def test_a_label_that_is_not_a_plain_folder_name_is_refused(tmp_path, key, value, problem):
    """A variant's label (or a task) names the arm's folders, <task>/lr/<label>/: '..' put its runs beside the
    stage folders, '../../../x' outside --out (was: run there, exit 0)."""
    keys = ({"variants": {value: ["method=lora"]}, "methods": ["full", value]} if key == "variants"
            else {"tasks": [value]})
    spec = write_spec(tmp_path / "spec.yaml", **keys)
    example = "a label such as lora-r4" if key == "variants" else "a conf/task option such as sst2"
    with pytest.raises(SpecError) as error:
        load(spec, [])
    assert str(error.value) == (f"{spec}: {key}: {problem}; each names a folder of the comparison (<task>/lr/<arm>/): "
                                f"give {example}, a plain folder name (no '/', not '.' or '..')")


def test_a_folder_hydra_would_read_as_a_sweep_is_quoted_in_the_multirun(tmp_path):
    """A label or --out holding a comma (or a quote, a tilde): the multirun's hydra.sweep.dir is quoted for Hydra's
    parser, so it names that folder (was: hydra.sweep.dir=OUT/sst2/lr/a,b, a sweep over 'OUT/sst2/lr/a' and 'b';
    OUT/a~b, a syntax error)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    spec = load(five_rows(tmp_path, methods=["full", "a,b"], variants={"a,b": ["method=lora"]}), [])
    for out, arm in ((tmp_path / "x,y'z", "a,b"), (tmp_path / "a~b", "full")):
        run = cells.Run("lr", "sst2", arm, 1e-3, 0, cells.folder(out, "lr", "sst2", arm, 1e-3, 0), {}, 2)
        [given] = [a for a in cells.argv(spec, [run]) if a.startswith("hydra.sweep.dir=")]
        parsed = OverridesParser.create().parse_override(given)
        assert not parsed.is_sweep_override() and parsed.value() == str(out / "sst2/lr" / arm)


def test_the_planned_peak_is_planned_at_the_runs_shape(tmp_path, capsys):
    """gpu: the plan of each arm's stage-2 run at its batch (budget.batch_size) and the task's longest training
    sequence, padded to the hardware's multiple, as a run's micro-batch fit collates it (was: profile.batch_size=4
    x profile.seq_len=512 whatever the runs trained)."""
    from ftbench.compare import plans

    spec = load(five_rows(tmp_path, validation_from_train=1, gpu="gpu-24gb"), [])
    with cells.Composer(spec) as composer:
        found = plans.predict(composer, spec, tmp_path / "out", {("sst2", "full"): 1e-3})
        longest = max(composer.train_lengths("sst2", 0))
    profile = found["sst2"]["full"]["config"]["profile"]
    assert (profile["batch_size"], profile["seq_len"]) == (2, -(-longest // 8) * 8) and longest < 24
    assert f"micro-batch 2 x {profile['seq_len']} tokens" in capsys.readouterr().out
