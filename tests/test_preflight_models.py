"""Model folders, tokenizers and position tables checked against the task before the first step (preflight.py):
pad tokens, embeddings sized to the tokenizer, sequences cut to the position table, load errors in one line, and
a checkpoint with another head given a new one. Every input is built here: tiny random-init model folders
(save_pretrained), tiny TSV/JSON files."""

import json
import random

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from ftbench.errors import UserError
from ftbench.job import preflight
from ftbench.models.fit import planned_model
from ftbench.models.loading import load_model
from ftbench.models.tokenizer import byte_level_tokenizer, load_tokenizer
from helpers import QUICK, compose, refused, run, trained

TINY_BERT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
SST2_QUICK = ["task=sst2", "task.batch_size=4", "train.max_steps=2", "eval.max_samples=8"]


def save(folder, model, tokenizer=None):
    model.save_pretrained(folder)
    (tokenizer or byte_level_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny model folders and data files shared by the tests of this module."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    made = {"root": root}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    bare = T.PreTrainedTokenizerFast(tokenizer_object=core)  # no pad, eos or unk token
    made["nospecial"] = save(root / "gpt2-nospecial", T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=len(bare), n_positions=64, n_embd=32, n_layer=1, n_head=4, bos_token_id=None,
        eos_token_id=None)), bare)
    made["bert-short"] = save(root / "bert-short", T.BertModel(T.BertConfig(
        vocab_size=260, max_position_embeddings=32, **TINY_BERT)))
    made["gpt2-short"] = save(root / "gpt2-short", T.GPT2LMHeadModel(T.GPT2Config(  # absolute positions: 32
        vocab_size=260, n_positions=32, n_embd=32, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2)))
    big = byte_level_tokenizer()
    big.add_tokens([f"word{i}" for i in range(340)])  # 600 tokens, more than tiny-llama's 512 rows
    big.save_pretrained(root / "big-tokenizer")
    made["big-tokenizer"] = root / "big-tokenizer"
    made["t5"] = save(root / "t5", T.T5ForConditionalGeneration(T.T5Config(
        vocab_size=260, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
        pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)))
    made["llama"] = save(root / "llama-local", T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=512, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0,
        bos_token_id=1, eos_token_id=2)))
    for name, kw in (("bert-sst2-head", dict(num_labels=2)), ("bert-stsb-head", dict(num_labels=1))):
        config = T.BertConfig(vocab_size=260, max_position_embeddings=64, **TINY_BERT, **kw)
        config.problem_type = "regression" if kw["num_labels"] == 1 else "single_label_classification"
        made[name] = save(root / name, T.BertForSequenceClassification(config))
    rng = random.Random(0)
    words = ["a fine film", "dull and slow", "a moving story told with care", "flat", "bright and warm"]
    made["sst2"] = write_tsv(root / "sst2", ("train", "dev"), "sentence\tlabel",
                             [f"{rng.choice(words)}\t{i % 2}" for i in range(16)])
    made["sst2-long"] = write_tsv(root / "sst2-long", ("train", "dev"), "sentence\tlabel",
                                  [f"{'a long sentence ' * 4}{i}\t{i % 2}" for i in range(8)])
    pairs = [f"{i}\t{rng.choice(words)}\t{rng.choice(words)}\t{rng.uniform(0, 5):.2f}" for i in range(16)]
    made["stsb"] = write_tsv(root / "stsb", ("train", "dev"), "index\tsentence1\tsentence2\tscore", pairs)
    labels = ("entailment", "neutral", "contradiction")
    rows = [f"{i}\t{rng.choice(words)}\t{rng.choice(words)}\t{labels[i % 3]}" for i in range(15)]
    made["mnli"] = write_tsv(root / "mnli", ("train", "dev_matched", "dev_mismatched"),
                             "index\tsentence1\tsentence2\tgold_label", rows)
    return made


def write_tsv(folder, splits, header, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        (folder / f"{split}.tsv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return folder


def params(folder, cls=T.AutoModel) -> int:
    return sum(p.numel() for p in cls.from_pretrained(folder).parameters())


# Kind 1: model, tokenizer, task and data against each other, before the first step.

def test_a_checkpoint_tokenizer_without_pad_eos_unk_is_refused_naming_model_tokenizer(tmp_path, folders):
    result = run(tmp_path / "run", "model.random_init=false", f"model.path={folders['nospecial']}",
                 f"task.data_dir={folders['sst2']}", *SST2_QUICK)
    assert "no pad, eos or unk token" in refused(result, "model.tokenizer")


def test_a_random_init_model_gets_a_pad_token_added(tmp_path, folders):
    result = run(tmp_path / "run", f"model.tokenizer={folders['nospecial']}", f"task.data_dir={folders['sst2']}",
                 *SST2_QUICK)
    trained(result, 2)


def test_sequences_longer_than_the_position_table_are_cut_to_it(tmp_path, folders):
    result = run(tmp_path / "run", "model=tiny-bert", f"model.path={folders['bert-short']}",
                 f"task.data_dir={folders['sst2-long']}", *SST2_QUICK)
    trained(result, 2)
    assert result["config"]["task"]["max_length"] == 32 and result["protocol"]["max_length"] == 32
    assert result["config"]["model"]["random_init"] is False  # model.path won over tiny-bert's random init


def test_a_profile_longer_than_the_position_table_is_refused(tmp_path, folders):
    result = run(tmp_path / "run", "mode=profile", "model=tiny-bert", f"model.path={folders['bert-short']}",
                 "profile.seq_len=64", "profile.steps=1", "profile.warmup_steps=0")
    assert "32 positions" in refused(result, "profile.seq_len")


def test_a_random_init_position_table_is_sized_to_the_sequences(tmp_path):
    result = run(tmp_path / "run", "mode=profile", "model=tiny-bert", "model.shape.max_position_embeddings=16",
                 "profile.seq_len=24", "profile.batch_size=2", "profile.steps=1", "profile.warmup_steps=0")
    trained(result, 1)
    default = run(tmp_path / "ref", "mode=profile", "model=tiny-bert", "profile.seq_len=24", "profile.batch_size=2",
                  "profile.steps=1", "profile.warmup_steps=0")  # 512 positions
    assert default["params"]["total"] - result["params"]["total"] == (512 - 24) * 64  # hidden 64


GENERATE_QUICK = ["task=synthetic_lm", "task.batch_size=4", "train.max_steps=2", "eval.max_samples=4"]


@pytest.mark.parametrize("overrides, key", [(["eval.max_new_tokens=40", "task.min_new_tokens=40"], "eval.max_new_tokens"),
                                            (["task.max_new_tokens=32"], "task.max_new_tokens")])
def test_an_answer_cap_that_fills_the_position_table_is_refused(tmp_path, folders, overrides, key):
    result = run(tmp_path / "run", f"model.path={folders['gpt2-short']}", *GENERATE_QUICK, *overrides)
    assert "fill the 32 positions" in refused(result, key) and f"{key}<32" in result["error"]


def test_prompts_longer_than_the_table_leaves_are_cut_from_the_left(tmp_path, folders, caplog):
    """'a+b=' prompts (BOS + 4 or 5 bytes) and 30 new tokens in 32 positions: each prompt keeps BOS and its end."""
    with caplog.at_level("WARNING", logger="ftbench"):
        result = trained(run(tmp_path / "run", f"model.path={folders['gpt2-short']}", *GENERATE_QUICK,
                             "eval.max_new_tokens=30", "task.min_new_tokens=30"), 2)
    assert result["metrics"]["generate/new_tokens"] == 4 * 30
    cut = [r.getMessage() for r in caplog.records if "cut from the left" in r.getMessage()]
    assert len(cut) == 1 and cut[0].startswith("4 of 4 dev prompts are longer than the 2 positions")


def alpaca_inputs(root, prompt_bytes: int) -> list[str]:
    """A GPT-2 folder of 256 positions and alpaca rows whose instructions hold `prompt_bytes` bytes (the
    template's preamble adds ~150 byte-level tokens)."""
    import transformers as T

    folder = save(root / "gpt2-256", T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=260, n_positions=256, n_embd=32, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2)))
    (root / "data").mkdir()
    rows = [{"instruction": f"{'x' * prompt_bytes} {i}", "input": "", "output": str(i)} for i in range(8)]
    (root / "data" / "alpaca_data.json").write_text(json.dumps(rows))
    return [f"model.path={folder}", "task=alpaca", f"task.data_dir={root / 'data'}", "task.val_size=2",
            "task.batch_size=2", "train.max_steps=2"]


def test_an_answer_cap_counts_only_where_the_task_generates(tmp_path):
    """alpaca with task.generate_samples=0 generates nothing: its 256-token answer cap fills no position."""
    common = alpaca_inputs(tmp_path, 1)
    assert "fill the 256 positions" in refused(run(tmp_path / "gen", *common), "task.max_new_tokens")
    trained(run(tmp_path / "run", *common, "task.generate_samples=0"), 2)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])  # rotary, a learned table
def test_a_random_init_table_grown_beyond_what_the_machine_holds_is_refused(tmp_path, model):
    """A random-init table is sized to task.max_length, but not to a sequence whose hidden states alone outgrow
    the machine (was: the synthetic task drew 10^8-token sequences for minutes, and no step came)."""
    error = refused(run(tmp_path / "run", f"model={model}", "task.max_length=1000000000000", "train.max_steps=1"),
                    "task.max_length")
    assert f"1000000000000 tokens grow the 512 positions of the random-init {model} shape" in error
    assert "(3 of 64 bf16 values per token), more than the" in error
    assert "GiB this machine has; give a far shorter task.max_length (this bound alone leaves at most" in error


def test_a_plan_bounds_one_sequence_by_the_planned_device(tmp_path):
    """A plan (mode=plan) for a device with hardware.memory_gib (here 10^6 GiB) sizes the table to a sequence that
    device holds and this machine does not (10^12 tokens of tiny-llama: 357,628 GiB of hidden states; was refused
    on this machine's memory); without memory_gib a plan, and a run whatever memory_gib says, keep this machine's."""
    length = "profile.seq_len=1000000000000"
    planned = compose("model=tiny-llama", "mode=plan", "hardware.memory_gib=1000000", length)
    planned_model(planned)
    assert planned.model.shape.max_position_embeddings == 10**12
    with pytest.raises(UserError, match=r"GiB this machine has; give a far shorter profile.seq_len"):
        planned_model(compose("model=tiny-llama", "mode=plan", length))
    small = compose("model=tiny-llama", "mode=plan", "hardware.memory_gib=1", length)
    with pytest.raises(UserError, match=r"more than the 1.0 GiB the planned device has \(hardware.memory_gib\)"):
        planned_model(small)
    error = refused(run(tmp_path / "run", "model=tiny-llama", "hardware.memory_gib=1000000",
                        "task.max_length=1000000000000", "train.max_steps=1"), "task.max_length")
    assert "GiB this machine has; give a far shorter task.max_length" in error


def test_a_task_refusal_says_when_the_position_table_cut_task_max_length(tmp_path):
    """Every held-out prompt fills the 256 positions the table cut task.max_length=1000 to: raising it cannot help."""
    error = refused(run(tmp_path / "run", *alpaca_inputs(tmp_path, 300), "task.max_length=1000",
                        "task.generate_samples=0"), "task.max_length")
    assert "task.max_length=1000 was cut to the 256 positions of model.path=" in error and "raise" not in error


def test_a_training_set_emptied_by_a_cut_task_max_length_is_refused_before_training(tmp_path):
    """synthetic_lm problems all longer than a checkpoint's 24 positions: refused on task.max_length, saying the
    table cut it (the micro-batch fit took the max of no examples: a ValueError, exit 1)."""
    folder = save(tmp_path / "llama-24", T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=260, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=24, bos_token_id=1, eos_token_id=2)))
    error = refused(run(tmp_path / "run", "model=tiny-llama", f"model.path={folder}", "task=synthetic_lm",
                        "task.max_operand=1000000000000", "task.num_train=64", "task.max_length=32",
                        "train.max_steps=1", "hardware.max_micro_batch_size=auto"), "task.max_length")
    assert error == ("task.max_length: every training prompt fills the 24 tokens of task.max_length, leaving no "
                     f"room for its answer: task.max_length=32 was cut to the 24 positions of model.path={folder}; "
                     "use shorter examples or a model with a longer position table")


def test_a_random_init_position_table_holds_the_answer_too():
    """GPT-2's learned table (16 positions): task.max_length=32 plus max_new_tokens=8; 32 for a task that does not
    generate."""
    cfg = compose(*GENERATE_QUICK, "task.max_length=32", "task.max_new_tokens=8")
    cfg.model.shape = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 16}
    assert preflight.inputs(cfg).shape_overrides == {"n_positions": 40}
    cfg.task = compose("task=synthetic", "task.max_length=32").task
    assert preflight.inputs(cfg).shape_overrides == {"n_positions": 32}


@pytest.mark.parametrize("overrides, closing, positions", [
    (["model=tiny-bert", "model.shape.model_type=bart", "~model.shape.intermediate_size",
      "model.shape.max_position_embeddings=16"], 2, {"max_position_embeddings": 33}),
    (["model=tiny-bert", "model.shape.model_type=t5", "~model.shape.intermediate_size",
      "~model.shape.max_position_embeddings"], 1, {}),  # relative positions: no table
    (["model=tiny-llama"], None, {}),  # a decoder's head reads the last token, whatever it is
], ids=["bart", "t5", "llama"])
def test_an_encoder_decoder_classifier_gets_its_eos_at_the_end_and_a_position_for_it(overrides, closing, positions):
    """task=synthetic speaks token ids, none of them an eos; BART's and T5's heads read the state at the eos."""
    cfg = compose(*overrides, "task=synthetic", "task.max_length=32", "task.num_train=64", "task.num_eval=8")
    inputs = preflight.inputs(cfg)
    assert (inputs.task.closing_id, inputs.shape_overrides) == (closing, positions)
    examples = inputs.task.train_examples()[:4]
    batch = inputs.task.collate(examples)
    lengths = [len(e["input_ids"]) + (closing is not None) for e in examples]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    if closing is not None:
        assert [batch["input_ids"][row, n - 1].item() for row, n in enumerate(lengths)] == [closing] * 4
        closed = inputs.task.collate([{**examples[0], "input_ids": [*examples[0]["input_ids"], closing]}])
        assert closed["input_ids"][0].tolist() == batch["input_ids"][0, :lengths[0]].tolist()  # never twice


def test_a_random_init_embedding_is_sized_to_its_tokenizer(tmp_path, folders):
    result = trained(run(tmp_path / "run", f"model.tokenizer={folders['big-tokenizer']}",
                         f"task.data_dir={folders['sst2']}", *SST2_QUICK), 2)
    small = trained(run(tmp_path / "small", f"task.data_dir={folders['sst2']}", *SST2_QUICK), 2)
    assert result["params"]["total"] - small["params"]["total"] == (600 - 512) * 64


PROFILE_QUICK = ["mode=profile", "profile.batch_size=2", "profile.seq_len=16", "profile.steps=1",
                 "profile.warmup_steps=0"]


def test_a_profile_measures_the_embedding_its_tokenizer_gives(tmp_path, folders):
    """mode=profile (and its plan) sizes a random-init embedding to model.tokenizer as training does, and refuses
    a checkpoint whose embedding it exceeds (training's refusal)."""
    big = f"model.tokenizer={folders['big-tokenizer']}"
    result = trained(run(tmp_path / "big", big, *PROFILE_QUICK), 1)
    small = trained(run(tmp_path / "small", *PROFILE_QUICK), 1)
    assert result["params"]["total"] - small["params"]["total"] == (600 - 512) * 64 * 2  # embedding and LM head
    error = refused(run(tmp_path / "checkpoint", "model=tiny-bert", f"model.path={folders['bert-short']}", big,
                        *PROFILE_QUICK, "profile.objective=seq_cls"), "model.tokenizer")
    assert "the tokenizer has 600 tokens but the embedding of model.path=" in error
    planned = compose(big, "mode=plan", "profile.seq_len=16")  # its plan plans the same embedding
    planned_model(planned)
    assert planned.model.shape.vocab_size == 600


def test_a_random_init_embedding_is_sized_to_a_task_of_token_ids(tmp_path):
    result = run(tmp_path / "run", "model.shape.vocab_size=32", "task.vocab_size=64", "task.num_train=64",
                 "task.num_eval=16", "task.max_steps=1")
    trained(result, 1)


def test_a_task_of_token_ids_over_a_checkpoints_embedding_is_refused_with_its_own_fix(tmp_path, folders):
    """task=synthetic uses no tokenizer: the fix is task.vocab_size, and the ids named are all it draws."""
    result = run(tmp_path / "run", "model=tiny-llama", f"model.path={folders['llama']}", "task=synthetic",
                 "task.vocab_size=600", *QUICK)
    assert refused(result, "task.vocab_size") == (
        "task.vocab_size: the task uses token ids 0..599 (task.vocab_size=600) but the embedding of "
        f"model.path={folders['llama']} has 512 rows; set task.vocab_size to at most 512, or give a model whose vocabulary covers it")


def test_a_checkpoint_with_fewer_rows_than_the_tokenizer_is_refused_with_both_sizes(tmp_path, folders):
    result = run(tmp_path / "run", f"model.path={folders['llama']}", f"model.tokenizer={folders['big-tokenizer']}",
                 f"task.data_dir={folders['sst2']}", *SST2_QUICK)
    error = refused(result, "model.tokenizer")
    assert "600 tokens" in error and "512 rows" in error


@pytest.mark.parametrize("model", ["t5", "bert-short"])
def test_a_causal_lm_run_refuses_a_model_that_is_not_decoder_only(tmp_path, folders, model):
    result = run(tmp_path / "run", "mode=profile", "model.random_init=false", f"model.path={folders[model]}",
                 "profile.seq_len=16", "profile.batch_size=2", "profile.steps=1", "profile.warmup_steps=0")
    error = refused(result, "model.path")
    assert ("encoder-decoder" if model == "t5" else "not a decoder-only") in error


def test_model_path_wins_over_the_groups_random_init(tmp_path, folders, caplog):
    with caplog.at_level("WARNING", logger="ftbench"):
        result = run(tmp_path / "run", f"model.path={folders['llama']}", "task=synthetic_lm", "task.batch_size=8",
                     "train.max_steps=2", "eval.max_samples=4", "train.save=last", "optim.lr=1e-4")
    trained(result, 2)
    assert result["params"]["total"] == params(folders["llama"], T.LlamaForCausalLM)
    assert any("model.path=" in r.getMessage() and "overridden" in r.getMessage() for r in caplog.records)
    from safetensors.torch import load_file

    before = load_file(folders["llama"] / "model.safetensors")
    after = load_file(tmp_path / "run" / "checkpoint" / "merged" / "model.safetensors")
    assert before.keys() == after.keys()
    assert max((after[k].float() - before[k].float()).abs().max().item() for k in before) < 5e-3


# Kind 2: loading errors translated; a checkpoint with another head gets a new one.

@pytest.mark.parametrize("start,task,outputs", [("bert-sst2-head", "mnli", 3), ("bert-sst2-head", "stsb", 1),
                                                ("bert-stsb-head", "sst2", 2)])
def test_a_checkpoint_with_another_head_trains_a_new_one(tmp_path, folders, caplog, start, task, outputs):
    with caplog.at_level("INFO", logger="ftbench"):
        result = run(tmp_path / "run", "model=tiny-bert", f"model.path={folders[start]}", f"task={task}",
                     f"task.data_dir={folders[task]}", "task.batch_size=4", "train.max_steps=2", "eval.max_samples=8")
    trained(result, 2)
    body = params(folders[start], T.BertModel)
    assert result["params"]["total"] == body + 32 * outputs + outputs  # the encoder + the new head
    assert sum("training a new head" in r.getMessage() for r in caplog.records) == 1


def test_model_load_errors_name_the_key_and_the_fix(tmp_path, folders):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = compose("model=tiny-llama", f"model.path={empty}", "model.random_init=false")
    with pytest.raises(UserError, match=r"^model.path: could not load .*empty: \w+Error: .*save_pretrained"):
        load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "fp32", "eager")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folders["llama"] / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cfg = compose("model=tiny-llama", f"model.path={broken}", "model.random_init=false")
    with pytest.raises(UserError, match=r"^model.path: could not load .*broken: \w+"):
        load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "fp32", "eager")
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')  # the config check's line, loaded
    with pytest.raises(UserError, match=r"^model.path: '.*broken/config.json': transformers knows no model_type "
                                        r"'no-such-architecture'; fix its model_type"):
        load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "fp32", "eager")
    cfg = compose("model=tiny-llama", f"model.tokenizer={empty}")
    with pytest.raises(UserError, match=r"^model.tokenizer: the tokenizer of .*empty holds no vocabulary nor any "
                                        r"tokenizer file: .*; set model.tokenizer=DIR"):
        load_tokenizer(cfg.model)
