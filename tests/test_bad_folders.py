"""Model and tokenizer folders that are not what the run needs (config/folders.py, models/loading.py): refused
before any run folder is made, one line naming model.path, model.tokenizer or model.gguf_file, what the folder
holds and the fix; in a run, mode=profile, mode=plan and each task family alike."""

import json
import re
from pathlib import Path

import pytest

from ftbench.models.loading import byte_level_tokenizer
from helpers import peft_adapter, run

QUICK = ["task.num_train=64", "task.num_eval=32", "train.max_steps=1"]

@pytest.mark.parametrize("config,reason", [
    ({"hidden_size": "x"}, "Validation error for field 'hidden_size': TypeError: Field 'hidden_size' expected int"),
    ({"num_attention_heads": 3}, "is not a multiple of the number of attention heads (3)"),
    ({"num_hidden_layers": 0}, "sets num_hidden_layers=0, but a size must be a positive integer"),
])
def test_a_folder_whose_config_transformers_refuses_names_model_path(tmp_path, config, reason):
    folder = tmp_path / "model"
    folder.mkdir()
    shape = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "vocab_size": 300}
    (folder / "config.json").write_text(json.dumps({**shape, **config}))
    (folder / "model.safetensors").touch()  # not read: the config is refused first
    result = run(tmp_path / "run", f"model.path={folder}", *QUICK)
    assert result["exit_code"] == 2 and result["status"] == "failed", result["error"]
    assert result["error"].startswith("model.path: ") and reason in result["error"]
    assert "\n" not in result["error"] and not result["error"].endswith(":")


# Kinds 10 and 20: a folder that is not what model.path (or model.tokenizer) needs says what it holds instead,
# in every command that reads it, before anything loads.

def tokenizer_only(folder: Path) -> Path:
    byte_level_tokenizer().save_pretrained(folder)
    return folder


def an_export(folder: Path) -> Path:
    """ftbench's export of a LoRA run (<run>/checkpoint): the adapter and the merged model, each in a subfolder."""
    peft_adapter(folder / "adapter", None)
    (folder / "merged").mkdir()
    (folder / "merged" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def holding(files: dict[str, str]):
    """A maker of a folder holding these files (name: text)."""
    def make(folder: Path) -> Path:
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        return folder
    return make


LLAMA = json.dumps({"model_type": "llama"})
FIX = r"fix it, or give a folder written by save_pretrained \(config.json and weights\)$"

MODEL_FOLDERS = [
    (lambda d: peft_adapter(d, "meta-llama/Llama-2-7b-hf"),
     r"'{f}' is a PEFT adapter of base model meta-llama/Llama-2-7b-hf, not a model \(no config.json\); give the base "
     r"model as model.path, or, to start from the adapted weights, merge the adapter first \(peft: .*"
     r"merge_and_unload\(\).save_pretrained\(DIR\)\) and give DIR$"),
    (lambda d: peft_adapter(d, None),
     r"'{f}' is a PEFT adapter \(its adapter_config.json names no base model\), not a model .*; give the base model .*"),
    (tokenizer_only, r"'{f}' holds a tokenizer but no model \(no config.json\); give model.path the model's folder, "
                     r"written by save_pretrained \(this one can be model.tokenizer\)$"),
    (lambda d: d.mkdir() or d, r"'{f}' is empty; give a folder written by save_pretrained \(config.json and weights\)$"),
    (an_export, r"'{f}' holds no config.json, but its subfolder merged holds a model; give model.path={f}/merged$"),
    (lambda d: peft_adapter(d / "adapter", "/models/base").parent,  # a LoRA run's export under hardware.shard=fsdp
     r"'{f}' holds no config.json, but its subfolder adapter is a PEFT adapter of base model /models/base; give the "
     r"base model as model.path, or, to start from the adapted weights, merge the adapter first .*"),
    (holding({"config.json": "", "model.safetensors": ""}), r"'{f}/config.json' is empty; " + FIX),
    (holding({"config.json": "{not json", "model.safetensors": ""}),
     r"'{f}/config.json' is not JSON \(Expecting property name enclosed in double quotes: line 1 column 2 "
     r"\(char 1\)\); " + FIX),
    (holding({"config.json": "[1, 2]", "model.safetensors": ""}),
     r"'{f}/config.json' holds a JSON array, not an object of the model's settings \(name: value\); " + FIX),
]


@pytest.mark.parametrize("make,message", MODEL_FOLDERS)
@pytest.mark.parametrize("command", [[], ["mode=profile"], ["mode=plan"], ["model=tiny-bert", "task=sst2"]])
def test_a_model_path_that_holds_no_model_says_what_it_holds(tmp_path, make, message, command):
    """Each command that reads model.path (a run, mode=profile, ftbench plan; a comparison runs these) refuses
    the folder when its config is checked, before any model or tokenizer loads."""
    from ftbench.cli import validate

    folder = make(tmp_path / "given")
    error = validate([f"model.path={folder}", "model.random_init=false", *command], multirun=False)
    assert error is not None and re.fullmatch(r"model.path: " + message.format(f=re.escape(str(folder))), error), error


def test_a_run_given_a_peft_adapter_as_model_path_is_refused_before_training(tmp_path):
    folder = peft_adapter(tmp_path / "adapter", str(tmp_path / "base"))
    result = run(tmp_path / "run", f"model.path={folder}", "task=synthetic_lm", *QUICK)
    assert result["exit_code"] == 2 and result["status"] == "failed", result["error"]
    assert result["error"].startswith(f"model.path: '{folder}' is a PEFT adapter of base model {tmp_path / 'base'}, "
                                      "not a model") and "\n" not in result["error"]


@pytest.mark.parametrize("files,message", [
    ({}, r"'{f}' holds config.json but no weights \(model.safetensors, pytorch_model.bin or their shards' "
         r".index.json; it holds config.json\); give a folder written by save_pretrained \(config.json and weights\)$"),
    ({"model-00001-of-00002.safetensors": "", "tokenizer.json": "{}"},
     r"'{f}' holds config.json but no weights \(.*; it holds config.json, model-00001-of-00002.safetensors, "
     r"tokenizer.json\); give a folder written by save_pretrained .*"),
    ({"model.Q4_1.gguf": ""}, r"'{f}' holds config.json but no weights from_pretrained reads \(.*\), only the GGUF "
                              r"file model.Q4_1.gguf; to load it, add model.gguf_file=model.Q4_1.gguf$"),
])
def test_a_model_path_without_weights_is_refused_where_they_load(tmp_path, files, message):
    """A run, mode=profile (any task) loads the folder's weights: refused when its config is checked. A plan
    reads its config.json alone: planned. Each file from_pretrained reads is weights."""
    from ftbench.cli import validate

    folder = holding({"config.json": LLAMA, **files})(tmp_path / "given")
    given = [f"model.path={folder}", "model.random_init=false"]
    for command in [], ["mode=profile"], ["model=tiny-bert", "task=sst2"], ["task=synthetic_lm"]:
        error = validate([*given, *command], multirun=False)
        assert error is not None and re.fullmatch(r"model.path: " + message.format(f=re.escape(str(folder))), error), error
    assert validate([*given, "mode=plan"], multirun=False) is None
    for weights in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json"):
        loaded = holding({"config.json": LLAMA, weights: ""})(tmp_path / weights)
        assert validate([f"model.path={loaded}", "model.random_init=false"], multirun=False) is None, weights


@pytest.mark.parametrize("files,message", [
    ({"config.json": LLAMA, "model.safetensors": ""},
     r"SmolLM2-135M-Instruct.Q4_1.gguf is not in '{f}' \(model.path\), which holds a model written by "
     r"save_pretrained \(config.json\); to load that model, add model.gguf_file=null$"),
    ({"other.gguf": ""}, r"SmolLM2-135M-Instruct.Q4_1.gguf is not in '{f}' \(model.path\), which holds the GGUF "
                         r"file other.gguf; give model.gguf_file=other.gguf$"),
    ({"notes.txt": ""}, r"SmolLM2-135M-Instruct.Q4_1.gguf is not in '{f}' \(model.path\) \(it holds notes.txt\); "
                        r"give model.path the folder that holds it$"),
])
def test_a_model_path_without_the_groups_gguf_file_says_what_to_drop(tmp_path, files, message):
    """model=smollm2-135m names its GGUF file (model.gguf_file); a model.path folder that does not hold it is
    refused on model.gguf_file when the config is checked, with the fix (a save_pretrained folder: drop it)."""
    from ftbench.cli import validate

    folder = holding(files)(tmp_path / "given")
    for command in [], ["mode=plan"]:
        error = validate(["model=smollm2-135m", f"model.path={folder}", *command], multirun=False)
        assert error is not None and re.fullmatch(r"model.gguf_file: " + message.format(f=re.escape(str(folder))),
                                                  error), error
    if "config.json" in files:
        assert validate(["model=smollm2-135m", f"model.path={folder}", "model.gguf_file=null"], multirun=False) is None


@pytest.mark.parametrize("make,message", [
    (lambda d: peft_adapter(d, "meta-llama/Llama-2-7b-hf"),
     r"'{f}' holds no tokenizer, only a PEFT adapter of base model meta-llama/Llama-2-7b-hf; give a folder holding "
     r"a tokenizer \(written by tokenizer.save_pretrained\), such as the base model's$"),
    (lambda d: d.mkdir() or d, r"'{f}' is empty; give a folder holding a tokenizer"),
    (lambda d: an_export(d) / "merged",
     r"'{f}' holds no tokenizer, only a model's files \(config.json\); give a folder holding a tokenizer"),
    (holding({"notes.txt": "hi"}), r"'{f}' holds no tokenizer \(it holds notes.txt\); give a folder holding a "
                                     r"tokenizer \(written by tokenizer.save_pretrained\)$"),
    (lambda d: tokenizer_only(an_export(d) / "merged").parent,  # ftbench's export: merged/ holds the tokenizer
     r"'{f}' holds no tokenizer, but its subfolder merged does; give model.tokenizer={f}/merged$"),
    (an_export, r"'{f}' holds no tokenizer \(it holds adapter, merged\); give a folder holding a tokenizer"),
])
@pytest.mark.parametrize("command", [["task=sst2"], ["task=synthetic"], ["task=synthetic_lm"], ["mode=profile"],
                                     ["mode=plan"]])
def test_a_model_tokenizer_that_holds_no_tokenizer_says_what_it_holds(tmp_path, make, message, command):
    from ftbench.cli import validate

    folder = make(tmp_path / "given")
    error = validate([f"model.tokenizer={folder}", *command], multirun=False)
    assert error is not None and re.match(r"model.tokenizer: " + message.format(f=re.escape(str(folder))), error), error
    assert validate([f"model.tokenizer={tokenizer_only(tmp_path / 'tok')}", *command], multirun=False) is None


@pytest.mark.parametrize("files", [["vocab.txt"], ["vocab.json", "merges.txt"], ["spiece.model"], ["tokenizer.model"],
                                   ["sentencepiece.bpe.model", "config.json"], ["tokenizer_config.json"]])
def test_a_model_tokenizer_of_any_familys_files_is_left_to_the_loader(tmp_path, files):
    from ftbench.cli import validate

    folder = holding(dict.fromkeys(files, ""))(tmp_path / "tok")
    assert validate([f"model.tokenizer={folder}", "task=sst2"], multirun=False) is None
