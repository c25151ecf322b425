"""eval.harness: the shipped offline tasks score an oracle right and a wrong answerer wrong, a run writes
its harness scores into result.json, and every way to ask for a task that cannot run fails in one line
before training."""

import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ftbench.config.schema import check
from ftbench.errors import UserError
from ftbench.tasks.harness import local_tasks
from helpers import SHARED_DATA, compose, run

MATH = ("task=math", f"task.data_dir={SHARED_DATA / 'math'}", "task.eval_sets=[gsm8k]", "task.max_steps=2",
        "train.batch_size=4", "task.max_length=512", "eval.max_samples=2", "eval.max_new_tokens=4", "eval.num_beams=1")


def answerer(right: bool):
    """A harness LM that reads each request's document: the gold rationale (or a wrong number) for
    generation, the gold choice (or another) as the likeliest continuation."""
    from lm_eval.api.model import LM

    class Oracle(LM):
        def generate_until(self, requests):
            return [f"The answer is {r.doc['answer']}." if right else "The answer is 123456789." for r in requests]

        def loglikelihood(self, requests):
            return [(0.0 if (r.args[1].strip() == r.doc["answer"]) == right else -10.0, True) for r in requests]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError("no shipped task scores perplexity")

    return Oracle()


@pytest.mark.parametrize("right", [True, False])
def test_the_shipped_tasks_score_an_oracle_right_and_a_wrong_answerer_wrong(tmp_path, right):
    import lm_eval
    from lm_eval.tasks import TaskManager

    cfg = compose("eval.harness.tasks=[ftbench_math,ftbench_commonsense]", f"eval.harness.data_dir={SHARED_DATA}")
    manager = TaskManager(include_path=str(local_tasks(cfg.eval.harness, tmp_path)), include_defaults=False)
    out = lm_eval.simple_evaluate(model=answerer(right), tasks=["ftbench_math", "ftbench_commonsense"],
                                  task_manager=manager, limit=6, bootstrap_iters=0, log_samples=False)
    scores = {task: values["acc,none"] for task, values in out["results"].items()}
    assert len(scores) == 2 + 7 + 7  # two groups, seven arithmetic sets, seven commonsense sets
    assert set(scores.values()) == {1.0 if right else 0.0}, scores


def test_the_copied_tasks_point_at_the_data_dir(tmp_path):
    cfg = compose("eval.harness.tasks=[ftbench_math_gsm8k]", f"eval.harness.data_dir={SHARED_DATA}")
    folder = local_tasks(cfg.eval.harness, tmp_path)
    config = yaml.safe_load((folder / "ftbench_math_gsm8k.yaml").read_text())
    assert config["dataset_kwargs"]["data_files"]["test"] == str((SHARED_DATA / "math" / "gsm8k.test.json").resolve())
    cfg = compose("eval.harness.tasks=[ftbench_math]", f"eval.harness.data_dir={tmp_path}")
    with pytest.raises(UserError, match=r"eval.harness.data_dir: .* has no math/\w+.test.json \(task ftbench_math_"):
        local_tasks(cfg.eval.harness, tmp_path / "out")


def test_a_gold_answer_the_rule_cannot_judge_is_refused_before_training(tmp_path):
    (tmp_path / "math").mkdir()
    rows = [{"instruction": "q", "answer": "3"}, {"instruction": "r", "answer": "banana"}]
    (tmp_path / "math" / "gsm8k.test.json").write_text("\n".join(json.dumps(row) for row in rows))
    cfg = compose("eval.harness.tasks=[ftbench_math_gsm8k]", f"eval.harness.data_dir={tmp_path}")
    with pytest.raises(UserError, match=r"^eval.harness.data_dir: .*gsm8k.test.json:2: record 2 has 'answer' "
                                        r"'banana', not a number; .* \(answer: a number\)$"):
        local_tasks(cfg.eval.harness, tmp_path / "out")


def test_a_run_writes_its_harness_scores(tmp_path):
    result = run(tmp_path / "run", *MATH, "eval.harness.tasks=[ftbench_math_gsm8k,ftbench_commonsense_piqa]",
                 "eval.harness.limit=2", "eval.harness.max_gen_toks=4", f"eval.harness.data_dir={SHARED_DATA}")
    assert result["exit_code"] == 0, result["error"]
    harness = result["harness"]
    assert harness["version"] == importlib.metadata.version("lm-eval") and harness["limit"] == 2
    assert set(harness["scores"]) == {"ftbench_math_gsm8k", "ftbench_commonsense_piqa"}
    assert 0 <= harness["scores"]["ftbench_math_gsm8k"]["acc"] <= 1
    assert 0 <= harness["scores"]["ftbench_commonsense_piqa"]["acc"] <= 1
    digests = harness["config_sha256"]
    assert set(digests) == set(harness["scores"]) and len(set(digests.values())) == 2
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests.values())
    assert (tmp_path / "run" / "harness_tasks" / "ftbench_math_gsm8k.yaml").is_file()


def hub_task(folder: Path) -> Path:
    """A task YAML whose data lives on the hub (the offline tests cannot fetch it)."""
    folder.mkdir()
    (folder / "hub_task.yaml").write_text(yaml.safe_dump({
        "task": "hub_task", "dataset_path": "allenai/ai2_arc", "dataset_name": "ARC-Easy", "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices.text}}",
        "doc_to_target": "{{answerKey}}"}))
    return folder


@pytest.mark.parametrize("overrides, message", [
    (lambda tmp: [*MATH, "eval.harness.tasks=[hub_task]", f"eval.harness.include_path={hub_task(tmp / 'yamls')}"],
     r"eval.harness.tasks: task 'hub_task' could not load its data \(.*\); offline, copy its YAML with "
     r"dataset_path: json"),
    (lambda tmp: [*MATH, "eval.harness.tasks=[ftbench_nothing]"], r"eval.harness.tasks: no harness task 'ftbench_nothing'"),
    (lambda tmp: ["eval.harness.tasks=[ftbench_math]", "task=synthetic", "task.max_steps=2"],
     r"eval.harness.tasks: the harness scores causal LMs; this task trains a seq_cls head"),
])
def test_a_task_that_cannot_run_fails_in_one_line_before_training(tmp_path, overrides, message):
    result = run(tmp_path / "run", f"eval.harness.data_dir={SHARED_DATA}", *overrides(tmp_path))
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert "\n" not in result["error"]
    assert re.match(message, result["error"]), result["error"]
    assert not result["train"]["loss_curve"]  # nothing was trained


def test_a_missing_harness_is_named_in_one_line(monkeypatch):
    cfg = compose("eval.harness.tasks=[ftbench_math]")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(UserError, match=r"eval.harness.tasks: .*pip install 'ftbench\[harness\]'"):
        OmegaConf.to_object(cfg.eval).check("eval")



def test_a_sharded_model_is_refused_before_anything_runs():
    with pytest.raises(UserError, match=r"eval.harness.tasks: .*hardware.shard=fsdp .*model.path=<run>/checkpoint"):
        check(compose("eval.harness.tasks=[ftbench_math]", "hardware.shard=fsdp"))
