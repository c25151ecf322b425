"""A plan refuses what its profile run refuses, in one line and exit code 2, and holds profile.seq_len to the
position table as a run does (a random-init table sized to it); a failed plan is planned again, and an unexpected
error ends a plan as it ends a run."""

import json

import pytest
import torch
import transformers as T

from ftbench import report
from ftbench.job.run import run_job
from helpers import cli, compose, run
from plan_helpers import FOLDERS

pytestmark = pytest.mark.usefixtures("one_thread")


# A plan refuses what its profile run refuses, with the same line on the same key (job/preflight.py
# check_profiled): an encoder-decoder folder under a causal-LM objective (the default model group's), an
# encoder asked for a causal LM
PROFILE_REFUSALS = [
    pytest.param(["model.path={tmp_path}/t5"], "model.path: model.path=", id="t5-folder-causal-lm"),
    pytest.param(["model.path={tmp_path}/bart"], "model.path: model.path=", id="bart-folder-causal-lm"),
    pytest.param(["model=minilm", "profile.objective=causal_lm"], "model.package: model.package=", id="package"),
    pytest.param(["model=tiny-bert", "profile.objective=causal_lm"], "model.shape.model_type: the random-init",
                 id="random-init-encoder"),
    # a count above the model's (tests/test_methods.py MORE_THAN_THE_MODEL): the planner's deeper probes hold it
    pytest.param(["method=freeze", "method.layers=3"], "method.layers: 3 is more than the 2 blocks", id="freeze"),
    pytest.param(["method=badam", "method.group_size=3"], "method.group_size: 3 is more than the 2 rotating units",
                 id="badam"),
    pytest.param(["method=galore", "method.rank=33"], "method.rank: 33 is more than the 32 singular vectors",
                 id="galore"),
]


@pytest.mark.parametrize("overrides,refusal", PROFILE_REFUSALS)
def test_a_plan_refuses_what_its_profile_run_refuses(tmp_path, overrides, refusal):
    for family in ("t5", "bart"):
        FOLDERS[family](tmp_path / family)
    args = [o.format(tmp_path=tmp_path) for o in overrides] + ["profile.batch_size=2", "profile.seq_len=16"]
    real = run(tmp_path / "real", "mode=profile", *args, "profile.warmup_steps=1", "profile.steps=1")
    code = run_job(compose("mode=plan", *args), tmp_path / "plan")
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert (real["exit_code"], code, plan["status"]) == (2, 2, "failed")
    assert plan["error"] == real["error"] and plan["error"].startswith(refusal), plan["error"]


def saved(model: str, weights: str = "model.safetensors", layers: int = 1, **config):
    """A maker of a folder holding a tiny `model` of `layers` layers (llama: a causal LM of 300 token rows; llama5: a
    classifier of 5 labels; bert: a BertModel, its tensors' names without the "bert." its classifier adds;
    bert-pretraining: a BertForPreTraining, whose cls.predictions a classifier leaves unused; t5: a T5Model, its
    encoder and decoder each of `layers`) as save_pretrained writes it, its weights as `weights` (shards under
    model.safetensors.index.json, or a pytorch_model.bin that torch.save wrote), then `config` written into its
    config.json (None: the field left out)."""
    def make(folder):
        sizes = {"vocab_size": 300, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": layers,
                 "num_attention_heads": 2}
        built = {"llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**sizes, num_key_value_heads=2)),
                 "llama5": lambda: T.LlamaForSequenceClassification(T.LlamaConfig(**sizes, num_labels=5,
                                                                                  pad_token_id=0)),
                 "bert": lambda: T.BertModel(T.BertConfig(**sizes, max_position_embeddings=32)),
                 "bert-pretraining": lambda: T.BertForPreTraining(T.BertConfig(**sizes, max_position_embeddings=32)),
                 "t5": lambda: T.T5Model(T.T5Config(d_model=16, d_ff=32, d_kv=8, num_layers=layers, num_heads=2,
                                                    vocab_size=300, pad_token_id=0, eos_token_id=1,
                                                    decoder_start_token_id=0))}[model]()
        if weights == "pytorch_model.bin":
            built.config.save_pretrained(folder)
            torch.save(built.state_dict(), folder / weights)
        else:
            built.save_pretrained(folder, max_shard_size="8KB" if weights.endswith(".index.json") else "1GB")
        assert (folder / weights).is_file()
        written = json.loads((folder / "config.json").read_text())
        written.update(config)
        (folder / "config.json").write_text(json.dumps({k: v for k, v in written.items() if v is not None}))
        return folder
    return make


# A folder whose weights disagree with its config.json: its profile run's load refuses it on model.path, naming the
# tensor, both shapes and the field that sized it (models/mismatch.py); its plan, which loads no weights, reads their
# shapes from the weight files' headers and refuses it with the same line (was: planned at the config's sizes,
# exit 0). (folder, profile.objective, the line after "model.path: could not load <folder>: ")
MISMATCHES = [
    pytest.param(saved("llama", vocab_size=None), "causal_lm",
                 "its config.json sets no vocab_size, so the llama default 32000 is taken, but the checkpoint's "
                 "model.embed_tokens.weight is [300, 16] against the model's [32000, 16] (and 1 more tensor); "
                 'write "vocab_size": 300 in its config.json', id="vocab_size-default"),
    pytest.param(saved("llama", "pytorch_model.bin", vocab_size=None), "seq_cls",
                 "its config.json sets no vocab_size, so the llama default 32000 is taken, but the checkpoint's "
                 "model.embed_tokens.weight is [300, 16] against the model's [32000, 16]; "
                 'write "vocab_size": 300 in its config.json', id="pytorch_model.bin"),
    pytest.param(saved("llama", "model.safetensors.index.json", intermediate_size=48), "causal_lm",
                 "its config.json sets intermediate_size 48, but the checkpoint's model.layers.0.mlp.gate_proj.weight "
                 "is [32, 16] against the model's [48, 16] (and 2 more tensors); "
                 'write "intermediate_size": 32 in its config.json', id="intermediate_size-shards"),
    pytest.param(saved("bert", hidden_size=24), "seq_cls",
                 "its config.json sets hidden_size 24, but the checkpoint's bert.embeddings.word_embeddings.weight is "
                 "[300, 16] against the model's [300, 24] (and 21 more tensors); "
                 'write "hidden_size": 16 in its config.json', id="hidden_size-base-model-names"),
]


# A folder whose config.json sets another number of layers than its weights hold, in a stack of either layout
# (architecture.py depth_fields: the field of that stack): its profile run's load refuses it on model.path, naming the
# field, the layers held and the tensors that would be left out or start at random; its plan, from the weight files'
# headers, with the same line (was: both exit 0; transformers dropped the layers beyond the config's count, or
# started the missing ones at random, and only logged it). (folder, profile.objective, the line after
# "model.path: could not load <folder>: ")
DEPTHS = [
    pytest.param(saved("llama", layers=4, num_hidden_layers=2), "causal_lm",
                 "its config.json sets num_hidden_layers 2, but the checkpoint holds layers 0-3 of model.layers "
                 "(model.layers.2.input_layernorm.weight and 17 more tensors of layers 2-3 would be left out); "
                 'write "num_hidden_layers": 4 in its config.json', id="llama-layers-beyond"),
    pytest.param(saved("llama", layers=2, num_hidden_layers=4), "causal_lm",
                 "its config.json sets num_hidden_layers 4, but the checkpoint holds layers 0-1 of model.layers "
                 "(model.layers.2.input_layernorm.weight and 17 more tensors of layers 2-3 would start at random); "
                 'write "num_hidden_layers": 2 in its config.json', id="llama-layers-missing"),
    pytest.param(saved("llama", layers=2, num_hidden_layers=None), "seq_cls",
                 "its config.json sets no num_hidden_layers, so the llama default 32 is taken, but the checkpoint "
                 "holds layers 0-1 of model.layers (model.layers.2.input_layernorm.weight and 269 more tensors of "
                 'layers 2-31 would start at random); write "num_hidden_layers": 2 in its config.json',
                 id="llama-default-depth"),
    pytest.param(saved("llama5", layers=2, num_hidden_layers=1), "seq_cls",
                 "its config.json sets num_hidden_layers 1, but the checkpoint holds layers 0-1 of model.layers "
                 "(model.layers.1.input_layernorm.weight and 8 more tensors of layer 1 would be left out); "
                 'write "num_hidden_layers": 2 in its config.json', id="llama-classifier-one-layer-beyond"),
    pytest.param(saved("bert", layers=4, num_hidden_layers=2), "seq_cls",
                 "its config.json sets num_hidden_layers 2, but the checkpoint holds layers 0-3 of bert.encoder.layer "
                 "(bert.encoder.layer.2.attention.output.LayerNorm.bias and 31 more tensors of layers 2-3 would be "
                 'left out); write "num_hidden_layers": 4 in its config.json', id="bert-layers-beyond"),
    pytest.param(saved("bert", layers=2, num_hidden_layers=3), "seq_cls",
                 "its config.json sets num_hidden_layers 3, but the checkpoint holds layers 0-1 of bert.encoder.layer "
                 "(bert.encoder.layer.2.attention.output.LayerNorm.bias and 15 more tensors of layer 2 would start at "
                 'random); write "num_hidden_layers": 2 in its config.json', id="bert-layers-missing"),
    pytest.param(saved("t5", layers=2, num_decoder_layers=3), "seq_cls",
                 "its config.json sets num_decoder_layers 3, but the checkpoint holds layers 0-1 of "
                 "transformer.decoder.block (transformer.decoder.block.2.layer.0.SelfAttention.k.weight and 12 more "
                 'tensors of layer 2 would start at random); write "num_decoder_layers": 2 in its config.json',
                 id="t5-decoder-layers-missing"),
]


@pytest.mark.parametrize("make,objective,problem", MISMATCHES + DEPTHS)
def test_a_plan_refuses_a_folder_whose_weights_disagree_with_its_config(tmp_path, make, objective, problem):
    """Its sizes (MISMATCHES) or its layer counts (DEPTHS): the plan and its profile run refuse with one line."""
    folder = make(tmp_path / "model")
    args = [f"model.path={folder}", f"profile.objective={objective}", "profile.batch_size=2", "profile.seq_len=16"]
    real = run(tmp_path / "real", "mode=profile", *args, "profile.warmup_steps=1", "profile.steps=1")
    code = run_job(compose("mode=plan", *args), tmp_path / "plan")
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert (real["exit_code"], code, plan["status"]) == (2, 2, "failed")
    assert plan["error"] == real["error"] == f"model.path: could not load {folder}: {problem}"


# Weights its run cannot read: the plan, which now reads their headers, refuses them with the run's line (was:
# planned from config.json, exit 0, and the run refused them)
@pytest.mark.parametrize("weights,content", [("model.safetensors", b""), ("pytorch_model.bin", b""),
                                             ("pytorch_model.bin", b"\x80\x04K")], ids=["empty", "empty-bin", "cut-bin"])
def test_a_plan_refuses_weights_its_run_cannot_read(tmp_path, weights, content):
    folder = saved("llama")(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    (folder / weights).write_bytes(content)
    args = [f"model.path={folder}", "profile.batch_size=2", "profile.seq_len=16"]
    real = run(tmp_path / "real", "mode=profile", *args, "profile.warmup_steps=1", "profile.steps=1")
    code = run_job(compose("mode=plan", *args), tmp_path / "plan")
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert (real["exit_code"], code, plan["status"]) == (2, 2, "failed")
    assert plan["error"] == real["error"] and plan["error"].startswith(f"model.path: could not load {folder}: ")


# Weights that fit: planned, from each kind of weight files; a classifier's head of another size than the task's is
# a new head, not a mismatch (models/loading.py load_model replaces it)
@pytest.mark.parametrize("make,objective", [
    pytest.param(saved("llama", "model.safetensors.index.json"), "causal_lm", id="shards"),
    pytest.param(saved("llama", "pytorch_model.bin"), "causal_lm", id="pytorch_model.bin"),
    pytest.param(saved("llama5"), "seq_cls", id="head-of-5-labels"),
    pytest.param(saved("bert"), "seq_cls", id="base-model-names"),
    # tensors outside the layers that a classifier leaves unused: an LM head, BERT's pretraining heads
    pytest.param(saved("llama", layers=2), "seq_cls", id="lm-head-unused"),
    pytest.param(saved("bert-pretraining", layers=2), "seq_cls", id="pretraining-heads-unused"),
    pytest.param(saved("t5", layers=2), "seq_cls", id="encoder-decoder"),
])
def test_a_plan_plans_a_folder_whose_weights_fit_its_config(tmp_path, make, objective):
    args = [f"model.path={make(tmp_path / 'model')}", f"profile.objective={objective}", "profile.batch_size=2",
            "profile.seq_len=16"]
    assert run_job(compose("mode=plan", *args), tmp_path / "plan") == 0


# profile.seq_len against the position table, by the rule a run applies (models/positions.py), read from model.shape
# before any probe: a checkpoint's refuses a longer one (probes of llama2-7b at 100 000 tokens ran for minutes), a
# random-init table is sized to it (BERT's learned table: the probe's position ids index it).
# (overrides, the refusal's start, the planned table: None when refused)
POSITIONS = [
    pytest.param(["model=llama2-7b", "profile.seq_len=100000"], "100000 tokens exceed the 4096 positions of "
                 "model.hub_id=meta-llama/Llama-2-7b-hf; use profile.seq_len<=4096", None, id="rotary-checkpoint"),
    pytest.param(["model=llama2-7b", "profile.seq_len=5000", "method=lora"], "5000 tokens exceed the 4096",
                 None, id="rotary-checkpoint-lora"),
    pytest.param(["model=roberta-base", "profile.seq_len=513"], "513 tokens exceed the 512 positions", None,
                 id="offset-positions"),  # 514 rows, positions from pad_token_id + 1
    pytest.param(["model=tiny-llama", "model.path={tmp_path}/llama", "profile.seq_len=513"],
                 "513 tokens exceed the 512 positions of model.path=", None, id="a-path-wins-over-random-init"),
    pytest.param(["model=tiny-llama", "model.path={tmp_path}/gpt2", "profile.seq_len=64"],  # the folder's table
                 "64 tokens exceed the 32 positions of model.path=", None, id="a-path-of-another-family"),
    pytest.param(["model=tiny-bert", "model.shape.max_position_embeddings=16", "profile.seq_len=24",
                  "profile.batch_size=2"], None, 24, id="random-init-learned-table-grows"),
    pytest.param(["model=tiny-llama", "model.shape.max_position_embeddings=16", "profile.seq_len=24",
                  "profile.batch_size=2"], None, 24, id="random-init-rotary-table-grows"),
    # a table grown to a sequence no machine holds (was: the probe allocated it, OOM-killed or a torch traceback)
    pytest.param(["model=tiny-llama", "profile.seq_len=1000000000000"], "1000000000000 tokens grow the 512 positions "
                 "of the random-init tiny-llama shape, and one sequence of them keeps at least 357627.9 GiB of hidden "
                 "states (3 of 64 bf16 values per token), more than the", None, id="random-init-beyond-the-machine"),
    pytest.param(["model=tiny-llama", "model.path={tmp_path}/t5", "profile.objective=seq_cls",
                  "profile.seq_len=1000000000000"], "1000000000000 tokens in model.path=", None,
                 id="relative-positions-beyond-the-machine"),
]


@pytest.mark.parametrize("overrides,refusal,rows", POSITIONS)
def test_a_plan_longer_than_the_position_table(tmp_path, overrides, refusal, rows):
    for family, folder in FOLDERS.items():
        folder(tmp_path / family)
    code = run_job(compose("mode=plan", *(o.format(tmp_path=tmp_path) for o in overrides)), tmp_path / "plan")
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    if refusal is not None:
        assert (code, plan["status"]) == (2, "failed")
        assert plan["error"].startswith(f"profile.seq_len: {refusal}")
    else:
        assert (code, plan["status"]) == (0, "ok")
        assert plan["config"]["model"]["shape"]["max_position_embeddings"] == rows


def test_a_refused_plan_is_one_line_and_exit_2(tmp_path):
    done = cli("ftbench", "plan", "model=llama2-7b", "hardware=h100-80gb", "profile.seq_len=100000",
               f"hydra.run.dir={tmp_path / 'plan'}", timeout=120)  # the probes at 100 000 tokens ran for minutes
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["ftbench: failed: profile.seq_len: 100000 tokens exceed the 4096 positions "
                                        "of model.hub_id=meta-llama/Llama-2-7b-hf; use profile.seq_len<=4096"]


def test_a_folder_whose_plan_failed_is_planned_again_and_an_ok_plan_refuses(tmp_path):
    """probe10 F3: a failed plan.json is an earlier attempt, moved aside as a run's result.json is (job/rerun.py);
    an ok one still refuses the folder (was: any plan.json refused it)."""
    folder = tmp_path / "plan"
    args = ["ftbench", "plan", "model=tiny-bert", "hardware=cpu", "profile.seq_len=16", "profile.batch_size=2",
            f"hydra.run.dir={folder}"]
    failed = cli(*args, "profile.objective=causal_lm", timeout=120)
    assert failed.returncode == 2 and json.loads((folder / "plan.json").read_text())["status"] == "failed"
    fixed = cli(*args, timeout=120)
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads((folder / "plan.json").read_text())["status"] == "ok"
    kept = json.loads((folder / "plan.previous-1.json").read_text())
    assert kept["status"] == "failed" and kept["config"]["profile"]["objective"] == "causal_lm"
    again = cli(*args, timeout=120)
    assert again.returncode == 2 and again.stderr.splitlines() == [
        f"ftbench: error: hydra.run.dir: {folder} already holds a plan; pick a new directory"]
    assert sorted(p.name for p in folder.glob("plan*.json")) == ["plan.json", "plan.previous-1.json"]
    assert report.results.OTHER_JSON.fullmatch("plan.previous-1.json")  # ftbench-report passes it over


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_in_a_plan_ends_as_in_a_run(tmp_path, monkeypatch, capsys, debug):
    """A probe that raises what no check foresaw (torch's RuntimeError) fails the plan as it fails a run
    (engine/outcome.py): plan.json says failed with the error's line, exit code 1, one line on stderr (the
    traceback before it with debug=true); the folder's earlier files stay (was: no plan.json, Hydra's traceback)."""
    from ftbench.plan import planner

    def probe(*args, **kwargs):
        raise RuntimeError("The size of tensor a (4) must match the size of tensor b (3)")

    monkeypatch.setattr(planner, "run_probe", probe)
    args = ["model=tiny-llama", "profile.batch_size=2", "profile.seq_len=16", f"debug={str(debug).lower()}"]
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "result.json").write_text("{}")  # a run's, in the folder the plan is given
    code = run_job(compose("mode=plan", *args), tmp_path / "plan")
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    error = "RuntimeError: The size of tensor a (4) must match the size of tensor b (3) (debug=true shows the traceback)"
    assert (code, plan["status"], plan["error"]) == (1, "failed", error)
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"ftbench: failed: {error}"
    assert ("Traceback" in err) == debug
    assert (tmp_path / "plan" / "result.json").read_text() == "{}"
