"""Generative tasks: prompts and loss masks, data loading, generation, and a tiny train-and-generate run each."""

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftbench import results
from ftbench.errors import UserError
from ftbench.methods import build_method, names
from ftbench.models.tokenizer import byte_level_tokenizer
from ftbench.tasks import answers, build_task, generate
from ftbench.tasks.base import EvalContext
from ftbench.tasks.instruct import (
    TEMPLATES,
    encode_pairs,
    encode_prompts,
    read_json_rows,
    require_keys,
)
from helpers import SHARED_DATA, compose, method_context, run, tiny_model

HEAD = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
# A few steps, two questions per set, four new tokens: the whole pipeline, in seconds.
QUICK = ["train.max_steps=2", "task.batch_size=4", "eval.batch_size=4", "eval.max_samples=2",
         "eval.max_new_tokens=4", "eval.num_beams=1"]
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data absent")



@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def eval_context(tmp_path, batch_size=4, max_samples=None):
    return EvalContext(device=torch.device("cpu"), autocast=contextlib.nullcontext, batch_size=batch_size,
                       max_samples=max_samples, output_dir=tmp_path, pad_to_multiple_of=None)


# Prompts and loss masks.

def test_llm_adapters_prompts_are_the_s2ft_scripts():
    template, row = TEMPLATES["llm-adapters"], {"instruction": "What is {x}?", "input": "", "output": "4"}
    assert template.prompt(row, training=True) == (
        f"{HEAD}  \n\n### Instruction:\nWhat is {{x}}?\n{' ' * 16}\n### Response:\n")
    assert template.prompt(row, training=False) == f"{HEAD} \n\n### Instruction:\nWhat is {{x}}?\n\n### Response:\n"
    assert template.answer_suffix == " "


def test_alpaca_prompts_are_stanford_alpaca():
    template = TEMPLATES["alpaca"]
    assert template.prompt({"instruction": "Add.", "input": ""}, training=True) == (
        f"{HEAD}\n\n### Instruction:\nAdd.\n\n### Response:")
    with_input = template.prompt({"instruction": "Add.", "input": "2 and 3"}, training=False)
    assert with_input == ("Below is an instruction that describes a task, paired with an input that provides "
                          "further context. Write a response that appropriately completes the request.\n\n"
                          "### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:")
    assert template.answer_suffix == ""


def test_prompt_starts_with_bos_not_a_literal_s_and_space(tokenizer):
    """The reference's "<s> " with add_bos_token=False is the BOS id; the byte-level tokenizer would
    otherwise make the space a token of its own."""
    ids = encode_prompts(tokenizer, ["Below"])[0]
    assert ids == [tokenizer.bos_token_id] + tokenizer("Below", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 + len("Below")
    assert tokenizer.decode(ids) == "<s>Below"


def test_loss_is_on_the_target_and_eos_only(tokenizer):
    (example,), dropped = encode_pairs(tokenizer, ["Q: 1+1?\n"], ["2 "], max_length=64, train_on_input=False)
    ids, labels = example["input_ids"], example["labels"]
    assert dropped == 0 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids) == "<s>Q: 1+1?\n2 </s>"
    prompt_len = 1 + len("Q: 1+1?\n")
    assert labels[:prompt_len] == [-100] * prompt_len and labels[prompt_len:] == ids[prompt_len:]
    assert tokenizer.decode([t for t in labels if t != -100]) == "2 </s>"


def test_train_on_input_and_truncation(tokenizer):
    (example,), _ = encode_pairs(tokenizer, ["Q:"], ["yes"], max_length=64, train_on_input=True)
    assert example["labels"] == example["input_ids"]
    (cut,), dropped = encode_pairs(tokenizer, ["Q:"], ["yes"], max_length=5, train_on_input=False)
    assert dropped == 0 and tokenizer.decode(cut["input_ids"]) == "<s>Q:ye"  # EOS is cut off, as the papers do
    assert cut["labels"] == [-100, -100, -100, *cut["input_ids"][3:]]
    kept, dropped = encode_pairs(tokenizer, ["A long prompt"], ["x"], max_length=4, train_on_input=False)
    assert kept == [] and dropped == 1  # nothing left to learn from


def test_task_masks_with_the_template(tmp_path, tokenizer):
    rows = [{"instruction": f"What is {i}+{i}?", "input": "", "output": f"\nA: {2 * i}.", "answer": str(2 * i)}
            for i in range(6)]
    (tmp_path / "toy.train.json").write_text(json.dumps(rows))
    (tmp_path / "gsm8k.test.json").write_text(json.dumps(rows))
    cfg = compose("task=math", f"task.data_dir={tmp_path}")
    task = build_task(cfg.task, tokenizer, seed=0)
    for example in task.train_examples():
        target = tokenizer.decode([t for t in example["labels"] if t != -100])
        text = tokenizer.decode(example["input_ids"])
        assert target.startswith("\nA: ") and target.endswith(". </s>")
        assert text.startswith(f"<s>{HEAD}  \n\n### Instruction:\nWhat is ") and text.endswith(target)


# Data: every shared file loads; bad folders fail with one line naming the key.

@needs_data
@pytest.mark.parametrize("folder", ["commonsense", "math", "alpaca"])
def test_every_shared_file_loads(folder):
    paths = sorted((SHARED_DATA / folder).glob("*.json"))
    if not paths:
        pytest.skip(f"no files in {folder}")
    for path in paths:
        rows = require_keys(read_json_rows(path), ("instruction", "output"), path)
        if ".test." in path.name:  # each gold answer is one its set's rule judges
            require_keys(rows, ("instruction", "answer"), path, gold=answers.rule_for(path.name.split(".")[0]))
        assert len(rows) > 100


def test_bad_data_fails_with_the_key_to_fix(tmp_path, tokenizer):
    (tmp_path / "math_data.train.json").write_text(json.dumps([{"instruction": "q", "output": "a"}] * 4))
    (tmp_path / "gsm8k.test.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    cfg = compose("task=math", f"task.data_dir={tmp_path}")
    with pytest.raises(UserError, match="task.data_dir: .*gsm8k.test.json:1: record 1 has no 'answer' field"):
        build_task(cfg.task, tokenizer, seed=0)
    cfg = compose("task=math", f"task.data_dir={tmp_path}", "task.train_files=[missing.json]")
    with pytest.raises(UserError, match=r"task.train_files: none of \['missing.json'\]"):
        build_task(cfg.task, tokenizer, seed=0)
    cfg = compose("task=math", f"task.data_dir={tmp_path}", "task.val_size=4")
    with pytest.raises(UserError, match="task.val_size"):
        build_task(cfg.task, tokenizer, seed=0)
    (tmp_path / "broken.train.json").write_text("{not json")
    cfg = compose("task=math", f"task.data_dir={tmp_path}", "task.train_files=[broken.train.json]")
    with pytest.raises(UserError, match="broken.train.json: invalid JSON at line 1"):
        build_task(cfg.task, tokenizer, seed=0)


def test_missing_folder_and_unknown_set_exit_2(tmp_path):
    result = run(tmp_path / "a", "task=math", f"task.data_dir={tmp_path / 'nowhere'}", *QUICK)
    assert result["exit_code"] == 2 and result["error"].startswith("task.data_dir:")
    result = run(tmp_path / "b", "task=commonsense", "task.eval_sets=[BoolQ]", *QUICK)
    assert result["exit_code"] == 2 and result["error"].startswith("task.eval_sets:")


# Generation.

def test_generated_lengths_stop_at_the_first_eos():
    new = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert generate.generated_lengths(new, eos=2).tolist() == [2, 4, 1]


@pytest.mark.parametrize("num_beams", [1, 2])
def test_batched_left_padded_generation_matches_one_by_one(tmp_path, tokenizer, num_beams):
    model = tiny_model("tiny-llama", head="causal_lm")
    model.config.use_cache = False
    model.train()
    prompts = [generate.Prompt("s", q, ids) for q, ids in
               zip("abc", encode_prompts(tokenizer, ["1+1=", "a much longer prompt: 12+30=", "7+"]))]
    decoding = generate.Decoding(num_beams=num_beams, max_new_tokens=6, min_new_tokens=0)
    batched = generate.complete(model, tokenizer, prompts, eval_context(tmp_path, 3), decoding, generate.Throughput())
    alone = [generate.complete(model, tokenizer, [p], eval_context(tmp_path, 1), decoding, generate.Throughput())[0]
             for p in prompts]
    assert batched == alone
    assert model.config.use_cache is False and model.training  # restored for training


def test_decoding_takes_eval_overrides_then_the_task_defaults(tmp_path):
    cfg = compose("task=math", "task.min_new_tokens=8").task
    assert generate.Decoding.resolve(eval_context(tmp_path), cfg) == generate.Decoding(4, 256, 8)
    ctx = EvalContext(**{**vars(eval_context(tmp_path)), "num_beams": 1, "max_new_tokens": 16})
    assert generate.Decoding.resolve(ctx, cfg) == generate.Decoding(1, 16, 8)
    ctx.max_new_tokens = 6
    with pytest.raises(UserError, match="task.min_new_tokens: 8 exceeds the answer cap 6"):
        generate.Decoding.resolve(ctx, cfg)


def test_min_new_tokens_forces_the_full_length(tmp_path, tokenizer):
    model = tiny_model("tiny-llama", head="causal_lm")
    prompts = [generate.Prompt("s", "q", ids) for ids in encode_prompts(tokenizer, ["1+1=", "22+"])]
    throughput = generate.Throughput()
    generate.complete(model, tokenizer, prompts, eval_context(tmp_path), generate.Decoding(1, 7, 7), throughput)
    assert throughput.new_tokens == 2 * 7 and throughput.sequences == 2 and throughput.seconds > 0


@pytest.mark.parametrize("name", names())
def test_every_method_generates_as_the_base_model_before_training(tmp_path, tokenizer, name):
    """Generation works on what each method's prepare() returns (PEFT models, partial-weight modules). A method
    that quantizes the base generates as its merged export (the dequantized base) loads with from_pretrained."""
    base = tiny_model("tiny-llama", head="causal_lm")
    prompts = [generate.Prompt("s", "q", ids) for ids in encode_prompts(tokenizer, ["1+1=", "3+4="])]
    decoding = generate.Decoding(num_beams=1, max_new_tokens=5, min_new_tokens=0)
    expected = generate.complete(base, tokenizer, prompts, eval_context(tmp_path), decoding, generate.Throughput())
    method = build_method(compose(f"method={name}").method)
    prepared = method.prepare(base, method_context(head="causal_lm"))
    got = generate.complete(prepared, tokenizer, prompts, eval_context(tmp_path), decoding, generate.Throughput())
    if method.quantizes_base:
        exported = AutoModelForCausalLM.from_pretrained(method.export(prepared, None, tmp_path / "export")["merged"])
        expected = generate.complete(exported, tokenizer, prompts, eval_context(tmp_path), decoding,
                                     generate.Throughput())
    assert got == expected


# One tiny train-and-generate run per task.

def small_copy(tmp_path, folder: str, train_file: str, rows: int = 16):
    """The shared folder's test sets and the first rows of one training file."""
    out = tmp_path / folder
    out.mkdir()
    for path in (SHARED_DATA / folder).glob("*.test.json"):
        (out / path.name).symlink_to(path)
    (out / train_file).write_text(json.dumps(json.loads((SHARED_DATA / folder / train_file).read_text())[:rows]))
    return out


def generations(result) -> list[dict]:
    path = Path(result["run"]["output_dir"]) / generate.GENERATIONS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_data
def test_math_trains_and_generates(tmp_path):
    data = small_copy(tmp_path, "math", "math_data.train.json")
    result = run(tmp_path / "run", "method=lora", "task=math", f"task.data_dir={data}", *QUICK, "eval.num_beams=2")
    assert result["exit_code"] == 0, result["error"]
    assert results.problems(result) == []
    sets = ["MultiArith", "gsm8k", "AddSub", "AQuA", "SingleEq", "SVAMP", "mawps"]
    metrics = result["metrics"]
    assert all(0 <= metrics[f"{s}/acc"] <= 1 and metrics[f"{s}/samples"] == 2 for s in sets)
    assert metrics["avg/acc"] == pytest.approx(sum(metrics[f"{s}/acc"] for s in sets) / 7) and metrics["avg/sets"] == 7
    assert metrics["generate/num_beams"] == 2 and metrics["generate/max_new_tokens"] == 4
    assert metrics["generate/tokens_per_s"] > 0
    lines = generations(result)
    assert len(lines) == 14 and {line["set"] for line in lines} == set(sets)
    assert sum(line["correct"] for line in lines) == round(sum(metrics[f"{s}/acc"] * 2 for s in sets))
    protocol = result["protocol"]
    assert protocol["template"]["name"] == "llm-adapters" and protocol["train_on_input"] is False
    assert protocol["answer_rule"]["AQuA"].startswith("first capital") and protocol["skipped_sets"] == []
    assert protocol["checkpoint_selection"].startswith("last")
    assert protocol["decoding_default"]["num_beams"] == 4 and protocol["decoding_default"]["max_new_tokens"] == 256


@needs_data
def test_math_has_no_validation_set_unless_asked(tmp_path):
    data = small_copy(tmp_path, "math", "math_data.train.json")
    result = run(tmp_path / "run", "task=math", f"task.data_dir={data}", "eval.every_steps=1", *QUICK)
    assert result["exit_code"] == 2 and result["error"].startswith("task.val_size:")


@needs_data
def test_commonsense_selects_the_best_validation_loss_and_skips_missing_sets(tmp_path):
    data = small_copy(tmp_path, "commonsense", "boolq.train.json")
    result = run(tmp_path / "run", "task=commonsense", f"task.data_dir={data}", "task.val_size=4",
                 "train.select=best", "train.select_metric=val/loss", "eval.every_steps=1", *QUICK)
    assert result["exit_code"] == 0, result["error"]
    assert results.problems(result) == []
    assert result["selection"]["policy"] == "best" and result["selection"]["metric"] == "val/loss"
    assert [v["step"] for v in result["validation_history"]] == [1, 2]
    assert result["protocol"]["skipped_sets"] == ["hellaswag"] and "hellaswag/acc" not in result["metrics"]
    assert result["metrics"]["avg/sets"] == 7 and len(generations(result)) == 14


@needs_data
def test_alpaca_reports_heldout_loss_and_generates(tmp_path):
    data = tmp_path / "alpaca"
    data.mkdir()
    rows = json.loads((SHARED_DATA / "alpaca" / "alpaca_5000.json").read_text())[:24]
    (data / "alpaca_data.json").write_text(json.dumps(rows))
    result = run(tmp_path / "run", "task=alpaca", f"task.data_dir={data}", "task.val_size=4",
                 "task.generate_samples=2", *QUICK)
    assert result["exit_code"] == 0, result["error"]
    metrics = result["metrics"]
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]))
    lines = generations(result)
    assert len(lines) == 2 and all({"question", "output", "reference"} <= set(line) for line in lines)
    assert result["protocol"]["template"]["name"] == "alpaca" and result["protocol"]["val_examples"] == 4


def test_synthetic_lm_is_learned(tmp_path):
    """Offline default: tiny-llama learns the additions (chance: ~1 in 19 sums)."""
    result = run(tmp_path / "run", "task=synthetic_lm", "method=full", "optim.lr=2e-3", "task.max_steps=200")
    assert result["exit_code"] == 0, result["error"]
    assert result["metrics"]["dev/acc"] >= 0.5, result["metrics"]
    assert result["metrics"]["generate/num_beams"] == 1 and len(generations(result)) == 200
