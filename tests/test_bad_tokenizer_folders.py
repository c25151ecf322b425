"""Tokenizer folders that are not what the run needs (config/folders.py, models/loading.py): refused before
training, one line naming model.tokenizer, what the folder holds and the fix; a folder of any family's tokenizer
files is left to the loader."""

import json
import re
from pathlib import Path

import pytest

from helpers import an_export, holding, peft_adapter, run, tokenizer_only


def test_a_tokenizer_folder_whose_config_json_is_bad_is_left_to_the_tokenizer(tmp_path):
    """The tokenizer loads without the model's config.json (tokenizer_config.json names its class): a bad
    value there is the model's concern, not model.tokenizer's."""
    from ftbench.cli import validate

    folder = holding({"config.json": json.dumps({"model_type": "llama", "hidden_size": 64.0})})(
        tokenizer_only(tmp_path / "tokenizer"))
    assert validate([f"model.tokenizer={folder}"], multirun=False) is None


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
    (lambda d: tokenizer_only(d / "a" / "b").parent.parent,  # was: "holds no tokenizer (it holds a)"
     r"'{f}' holds no tokenizer, but its subfolder a/b does; give model.tokenizer={f}/a/b$"),
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


def wordpiece_folder(folder: Path) -> Path:
    """A BERT tokenizer (WordPiece, 9 tokens: 5 special, 4 words) saved with save_pretrained."""
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "fine", "dull", "film"]
    BertTokenizer(vocab={word: i for i, word in enumerate(words)}).save_pretrained(folder)
    return folder


def test_a_tokenizer_without_its_vocabulary_is_refused_not_trained_on_unk(tmp_path):
    """A tokenizer folder of tokenizer_config.json alone (or a model.path folder with no tokenizer files): the library
    builds the named class with its 5 special tokens, and every word became [UNK] (was: rc 0, status ok). Refused on
    model.tokenizer; a tokenizer in a subfolder of the model's folder is named."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    whole = wordpiece_folder(tmp_path / "whole")
    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "tokenizer_config.json").write_text((whole / "tokenizer_config.json").read_text())
    rows = "".join(f"a {'fine' if i % 2 else 'dull'} film\t{i % 2}\n" for i in range(16))
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text(f"sentence\tlabel\n{rows}")
    sst2 = ["task=sst2", f"task.data_dir={tmp_path}", "train.max_steps=1", "task.batch_size=8", "eval.max_samples=8"]
    result = run(tmp_path / "settings-run", "model=tiny-bert", f"model.tokenizer={settings}", *sst2)
    assert (result["exit_code"], result["run"]["phase"]) == (2, "setup"), result["error"]
    assert result["error"].startswith(f"model.tokenizer: the tokenizer of {settings} holds no vocabulary, only its 5 "
                                      "special tokens"), result["error"]
    assert run(tmp_path / "whole-run", "model=tiny-bert", f"model.tokenizer={whole}", *sst2)["status"] == "ok"
    model = tmp_path / "model"
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(model)
    wordpiece_folder(model / "tk" / "x")
    result = run(tmp_path / "model-run", "model=minilm", f"model.path={model}", *sst2)
    assert result["error"].endswith(f"its subfolder {model / 'tk' / 'x'} holds one: set model.tokenizer="
                                    f"{model / 'tk' / 'x'}"), result["error"]
    done = run(tmp_path / "advised", "model=minilm", f"model.path={model}", f"model.tokenizer={model / 'tk' / 'x'}", *sst2)
    assert done["status"] == "ok", done["error"]


def sst2_data(folder: Path) -> list[str]:
    """A 16-example SST-2 folder of the words of `wordpiece_folder`; the overrides of a quick run on it."""
    rows = "".join(f"a {'fine' if i % 2 else 'dull'} film\t{i % 2}\n" for i in range(16))
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text(f"sentence\tlabel\n{rows}")
    return ["task=sst2", f"task.data_dir={folder}", "train.max_steps=1", "task.batch_size=8", "eval.max_samples=8"]


@pytest.mark.parametrize("files,held", [
    (["special_tokens_map.json"], ", only special_tokens_map.json"),
    (["added_tokens.json", "special_tokens_map.json"], ", only added_tokens.json, special_tokens_map.json"),
    ([], " nor any tokenizer file"),  # a model.path folder of config.json and weights alone
])
def test_a_tokenizer_folder_the_library_builds_nothing_from_is_refused_as_without_vocabulary(tmp_path, files, held):
    """special_tokens_map.json alone names no tokenizer class: was the library's ValueError, cut mid-sentence
    ("Couldn't instantiate the backend tokenizer from one of: (1) a `tokenizers` library serialization file,")."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path / "given"
    if files:  # model.tokenizer
        folder.mkdir()
        for name in files:
            (folder / name).write_text(json.dumps({"pad_token": "[PAD]"} if name.startswith("special") else {"a": 9}))
        source = ["model=tiny-bert", f"model.tokenizer={folder}"]
    else:  # the tokenizer of model.path: a LLaMA's class needs tokenizer.json or tokenizer.model
        config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        source = ["model=tiny-llama", f"model.path={folder}"]
    result = run(tmp_path / "run", *source, *sst2_data(tmp_path))
    assert (result["exit_code"], result["run"]["phase"]) == (2, "setup"), result["error"]
    assert result["error"] == (f"model.tokenizer: the tokenizer of {folder} holds no vocabulary{held}: the folder lacks "
                               "its vocabulary file (vocab.txt, tokenizer.json, ...); set model.tokenizer=DIR (a folder "
                               "saved with tokenizer.save_pretrained)"), result["error"]


def test_a_model_folders_own_tokenizer_too_large_for_its_embedding_is_not_advised_again(tmp_path):
    """With model.tokenizer unset the tokenizer is the folder's own: the refusal advised model.tokenizer=null,
    which gave the same line word for word. It now asks for a tokenizer that fits, or another model."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(vocab_size=6, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "model")
    wordpiece_folder(tmp_path / "model")  # 9 tokens
    rows = "".join(f"a {'fine' if i % 2 else 'dull'} film\t{i % 2}\n" for i in range(16))
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text(f"sentence\tlabel\n{rows}")
    result = run(tmp_path / "run", "model=minilm", f"model.path={tmp_path / 'model'}", "task=sst2",
                 f"task.data_dir={tmp_path}", "train.max_steps=1", "task.batch_size=8")
    assert (result["exit_code"], result["run"]["phase"]) == (2, "setup"), result["error"]
    assert result["error"].endswith("has 6 rows; give a tokenizer of at most 6 tokens (model.tokenizer=DIR) or a "
                                    "model whose vocabulary covers it"), result["error"]
