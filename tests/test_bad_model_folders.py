"""Model folders that are not what the run needs (config/folders.py, models/loading.py): one line naming
model.path, model.package or model.gguf_file, what the folder holds and the fix, refused when the config is checked
(before any run folder is made; weights that do not read, where they load); in a run, mode=profile, mode=plan and
each task family alike."""

import json
import re

import pytest

from ftbench.errors import UserError
from helpers import QUICK, an_export, holding, peft_adapter, run, tokenizer_only


@pytest.mark.parametrize("config,reason", [
    ({"hidden_size": "x"}, "/config.json': hidden_size is \"x\", a string; transformers needs an integer: write one"),
    # sizes that disagree (config/sizes.py): in our words (was transformers' text, the fix "give a folder written by
    # save_pretrained"; grouped key/value heads: torch's RuntimeError at the first step, exit 1)
    ({"num_attention_heads": 3}, "/config.json': hidden_size 64 is not a multiple of num_attention_heads 3: llama "
                                 "cuts hidden_size into 3 heads of equal width; write num_attention_heads as a "
                                 "divisor of 64 (2 or 4) or hidden_size as a multiple of 3 (63 or 66)"),
    ({"num_key_value_heads": 3}, "/config.json': num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
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
    (holding({"config.json": json.dumps({"model_type": "lama"}), "model.safetensors": ""}),  # was transformers' text
     r"'{f}/config.json': transformers knows no model_type 'lama' \(did you mean 'llama'\?\); fix its model_type, or "
     r"give a folder written by save_pretrained \(config.json and weights\)$"),
    # values the family's config refuses: was transformers' text, at load, the fix "give a folder written by
    # save_pretrained" (the folder was one)
    (holding({"config.json": '{"model_type": "llama", "hidden_size": 6.4e1}', "model.safetensors": ""}),
     r"'{f}/config.json': hidden_size is 64.0, a float; transformers needs an integer: write 64$"),
    (holding({"config.json": json.dumps({"model_type": "llama", "num_hidden_layers": 2.0}), "model.safetensors": ""}),
     r"'{f}/config.json': num_hidden_layers is 2.0, a float; transformers needs an integer: write 2$"),
    (holding({"config.json": json.dumps({"model_type": "llama", "hidden_size": 64.5}), "model.safetensors": ""}),
     r"'{f}/config.json': hidden_size is 64.5, a float; transformers needs an integer: write a whole number$"),
    (holding({"config.json": json.dumps({"model_type": "llama", "hidden_size": "64"}), "model.safetensors": ""}),
     r"'{f}/config.json': hidden_size is \"64\", a string; transformers needs an integer: write 64 \(no quotes\)$"),
    (holding({"config.json": json.dumps({"model_type": "llama", "hidden_size": None}), "model.safetensors": ""}),
     r"'{f}/config.json': hidden_size is null; transformers needs an integer: write one$"),
    (holding({"config.json": json.dumps({"model_type": "llama", "rms_norm_eps": "1e-6"}), "model.safetensors": ""}),
     r"'{f}/config.json': rms_norm_eps is \"1e-6\", a string; transformers needs a number: write 1e-06 \(no quotes\)$"),
    (holding({"config.json": json.dumps({"model_type": "gpt2", "n_inner": 256.0}), "model.safetensors": ""}),
     r"'{f}/config.json': n_inner is 256.0, a float; transformers needs an integer or null: write 256$"),
    # sizes that disagree with each other (config/sizes.py): was transformers' or torch's text, at load or at the
    # first step (a plan: no plan.json)
    (holding({"config.json": json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                         "num_key_value_heads": 3}), "model.safetensors": ""}),
     r"'{f}/config.json': num_attention_heads 4 is not a multiple of num_key_value_heads 3: each key/value head "
     r"serves an equal group of query heads; write num_key_value_heads as a divisor of 4 \(2 or 4\)$"),
    (holding({"config.json": json.dumps({"model_type": "bert", "hidden_size": 64, "num_attention_heads": 3}),
              "model.safetensors": ""}),
     r"'{f}/config.json': hidden_size 64 is not a multiple of num_attention_heads 3: bert cuts hidden_size into 3 "
     r"heads of equal width; write num_attention_heads as a divisor of 64 \(2 or 4\) or hidden_size as a multiple "
     r"of 3 \(63 or 66\)$"),
    (holding({"config.json": json.dumps({"model_type": "qwen2", "hidden_size": 63, "num_attention_heads": 3,
                                         "num_key_value_heads": 3}), "model.safetensors": ""}),
     r"'{f}/config.json': the attention heads are 21 wide \(hidden_size 63 // num_attention_heads 3\), an odd width, "
     r"and rotary position embeddings turn pairs of dimensions; write head_dim 20 or 22$"),
    (holding({"config.json": json.dumps({"model_type": "t5", "vocab_size": 300, "decoder_start_token_id": 400}),
              "model.safetensors": ""}),
     r"'{f}/config.json': decoder_start_token_id 400 is past the embedding's last row \(ids 0 to 299: vocab_size "
     r"300\), and t5 reads that row; write the tokenizer's decoder_start_token_id, below 300$"),
    (holding({"config.json": json.dumps({"architectures": ["LlamaForCausalLM"]}), "model.safetensors": ""}),
     r"'{f}/config.json' names no model_type, which transformers picks the model's class by; add \"model_type\": "
     r"\"llama\" \(its architectures name LlamaForCausalLM\)$"),
    (holding({"config.json": json.dumps({"hidden_size": 64}), "model.safetensors": ""}),
     r"'{f}/config.json' names no model_type, .*; add the model's family, e.g. \"model_type\": \"llama\" or \"bert\"$"),
]


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", "t5", "bart", "bert",
                                        "roberta"])
def test_the_config_values_check_accepts_what_save_pretrained_writes_and_refuses_a_float_size(tmp_path, model_type):
    """Each family ftbench knows: its config as save_pretrained writes it passes; its hidden width written as a
    float (GPT-2 calls it n_embd, T5 and BART d_model) is refused naming the field, as from_pretrained would."""
    from transformers import CONFIG_MAPPING

    from ftbench.config.folders import require_config

    CONFIG_MAPPING[model_type]().save_pretrained(tmp_path)
    require_config(tmp_path / "config.json", "model.path")
    values = json.loads((tmp_path / "config.json").read_text())
    width = next(name for name in ("hidden_size", "n_embd", "d_model") if name in values)
    (tmp_path / "config.json").write_text(json.dumps({**values, width: float(values[width])}))
    with pytest.raises(UserError, match=rf"^model.path: '.*config.json': {width} is {values[width]}.0, a float; "
                                        rf"transformers needs an integer( or null)?: write {values[width]}$"):
        require_config(tmp_path / "config.json", "model.path")


@pytest.mark.parametrize("config,message", [
    ({"hidden_size": 64.0}, "hidden_size is 64.0, a float; transformers needs an integer: write 64$"),
    ({"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3: "),  # it loads
])
def test_a_packaged_model_whose_config_transformers_refuses_names_model_package(tmp_path, monkeypatch, config,
                                                                                 message):
    """model.package's folder is checked where it loads (the package is imported then): the same line."""
    from ftbench.models.loading import pretrained_config
    from helpers import compose

    values = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, **config}
    holding({"config.json": json.dumps(values)})(tmp_path / "model")
    package = f"fake_model_pkg_{next(iter(config))}"  # one per case: an imported package stays in sys.modules
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(f"MODEL_DIR = {str(tmp_path / 'model')!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose(f"model.package={package}", "model.random_init=false")
    with pytest.raises(UserError, match=r"^model.package: '.*/model/config.json': " + message):
        pretrained_config(cfg.model)


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
    ({"M.GGUF": ""}, r"'{f}' holds config.json but no weights from_pretrained reads \(.*\), only the GGUF file M.GGUF; "
                     r"to load it, add model.gguf_file=M.GGUF$"),  # was: "(it holds config.json, M.GGUF)"
])
def test_a_model_path_without_weights_is_refused_where_they_load(tmp_path, files, message):
    """A run, mode=profile (any task) loads the folder's weights: refused when its config is checked. A plan
    loads no weights: planned from its config.json. Each file from_pretrained reads is weights."""
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
    ({"OTHER.GGUF": ""}, r"SmolLM2-135M-Instruct.Q4_1.gguf is not in '{f}' \(model.path\), which holds the GGUF "
                         r"file OTHER.GGUF; give model.gguf_file=OTHER.GGUF$"),  # was: "(it holds OTHER.GGUF)"
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


@pytest.mark.parametrize("content,message", [
    (b"", "is empty; download it again"),
    (b"GGUF\x03\x00\x00\x00", r"stops within its header \(8 bytes\): it is cut short"),
    (b"PK\x03\x04" + bytes(40), r"is not a GGUF file \(it does not open with b'GGUF'\)"),
    (b"GGUF\x03\x00\x00\x00" + (1).to_bytes(8, "little") + (1).to_bytes(8, "little"), "is cut short or corrupt"),
])
def test_a_gguf_file_cut_short_or_not_gguf_is_named(tmp_path, content, message):
    """An empty, truncated or foreign .gguf: was rc 1 with the reader's struct text (`unpack_from requires a buffer
    of at least 24 bytes`) or an mmap error reported as an architecture transformers cannot de-quantize."""
    (tmp_path / "model.gguf").write_bytes(content)
    pytest.importorskip("gguf")
    result = run(tmp_path / "run", f"model.path={tmp_path / 'model.gguf'}", *QUICK)
    assert (result["exit_code"], result["status"]) == (2, "failed"), result["error"]
    assert result["error"].startswith("model.path: ") and re.search(message, result["error"]), result["error"]


@pytest.mark.parametrize("weights,reason", [
    (b"", ": pytorch_model.bin is empty (0 bytes; EOFError); copy or download it again, or save the model again"),
    (b"\x80\x02", ": pytorch_model.bin ends before its data does (EOFError): it is cut short; copy or download it"),
    (b"\x80\x04K", ": pytorch_model.bin ends before its data does (IndexError): it is cut short; copy or download it"),
    (b"not a pickle at all", ": UnpicklingError: "),
])
def test_a_pytorch_model_bin_that_is_empty_or_not_a_pickle_names_model_path(tmp_path, weights, reason):
    """Was rc 1 `ftbench: failed: EOFError` (empty) and the unpickler's error (garbage); then rc 2 with the bare
    exception's name for an empty or cut-short file: the file is named, and what is wrong with it."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                                    "num_hidden_layers": 2, "num_attention_heads": 4,
                                                    "vocab_size": 300}))
    (folder / "pytorch_model.bin").write_bytes(weights)
    result = run(tmp_path / "run", f"model.path={folder}", *QUICK)
    assert (result["exit_code"], result["status"]) == (2, "failed"), result["error"]
    assert result["error"].startswith(f"model.path: could not load {folder}{reason}"), result["error"]
