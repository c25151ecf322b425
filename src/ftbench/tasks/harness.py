"""EleutherAI's lm-evaluation-harness after training (`eval.harness.tasks=[...]`): the trained model, in
memory, scored through the harness's Python API (`simple_evaluate` over an `HFLM` that wraps it).

Offline tasks ship here (`harness_tasks/`): `ftbench_math` and `ftbench_commonsense`, groups of one task
per LLM-Adapters test set, each a YAML over a local JSON file (`dataset_path: json`) found under
`eval.harness.data_dir`. Before a run they are copied into `<run>/harness_tasks/` with their data files
made absolute, so the folder records what was scored. Other tasks come from `eval.harness.include_path`
or the harness's own registry; one whose data must be downloaded fails before training, in one line.

result.json gets `harness: {version, tasks, limit, num_fewshot, scores: {task: {metric: value}},
config_sha256: {task: sha256 of the task config as the harness ran it}}`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from ftbench.errors import UserError, exception_line, kind_problem
from ftbench.tasks.answers import rule_for
from ftbench.tasks.instruct import read_json_rows, require_keys

SHIPPED = Path(__file__).with_name("harness_tasks")
COPIED = "harness_tasks"  # the folder in the run's folder the shipped tasks are copied into (job/places.py)
log = logging.getLogger(__name__)


def local_tasks(cfg, output_dir: Path) -> Path:
    """Copy the shipped tasks into `<output_dir>/harness_tasks/` with each task's `data_files` made
    absolute under `cfg.data_dir` (templates and their Python judge copied as they are); return that
    folder. Raises UserError (eval.harness.data_dir) naming the first test file that is not there, or is
    not a file (a folder by its name), when a requested shipped task needs it, and as `require_keys` when
    one of its records has no instruction or an answer the set's rule cannot judge."""
    data_dir = Path(os.path.expanduser(cfg.data_dir)).resolve()
    folder = output_dir / COPIED
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(SHIPPED.iterdir()):
        if path.suffix not in (".yaml", ".py"):
            continue
        text = path.read_text()
        if "data_files:" not in text:  # a group, a template (its `!function` tags), the judge
            shutil.copyfile(path, folder / path.name)
            continue
        config = yaml.safe_load(text)
        test = config["dataset_kwargs"]["data_files"]["test"]
        problem = kind_problem(data_dir / test, "file")
        if _requested(config["task"], cfg.tasks) and problem == "does not exist":
            raise UserError("eval.harness.data_dir", f"'{cfg.data_dir}' has no {test} (task {config['task']}); "
                            "point it at the folder holding math/ and commonsense/ (../shared/data)")
        if _requested(config["task"], cfg.tasks) and problem is not None:
            raise UserError("eval.harness.data_dir", f"'{data_dir / test}' {problem} (task {config['task']}); "
                            f"{test} is a JSON file")
        if _requested(config["task"], cfg.tasks):  # records the set's rule judges (tasks/answers.py)
            rows = read_json_rows(data_dir / test, "eval.harness.data_dir")
            require_keys(rows, ("instruction", "answer"), data_dir / test, "eval.harness.data_dir",
                         gold=rule_for(Path(test).name.split(".")[0]))
        config["dataset_kwargs"]["data_files"] = {"test": str(data_dir / test)}
        (folder / path.name).write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def _requested(task: str, requested) -> bool:
    """`task` is asked for by name or through its group (ftbench_math covers ftbench_math_gsm8k)."""
    return any(task == name or task.startswith(f"{name}_") for name in requested)


class Harness:
    """The harness tasks of one run: checked (their data loads) before training, scored after it.

    Raises UserError (eval.harness.tasks) when the task trains no causal LM (`head`), for a name no folder
    defines, and for a task whose data cannot be read offline, naming the task and the way to run it on
    local files."""

    def __init__(self, cfg, output_dir: Path, head: str):
        from lm_eval.tasks import TaskManager

        if head != "causal_lm":
            raise UserError("eval.harness.tasks", f"the harness scores causal LMs; this task trains a {head} "
                            "head (use a generative task: task=math, commonsense, alpaca, synthetic_lm)")
        self.cfg = cfg
        paths = [local_tasks(cfg, output_dir)]
        if cfg.include_path:
            paths.append(Path(os.path.expanduser(cfg.include_path)))
        self.manager = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
        if any(name not in self.manager.all_tasks and not name.startswith("ftbench_") for name in cfg.tasks):
            # one of the harness's own tasks: its registry takes ~15 s to index
            self.manager = TaskManager(include_path=[str(p) for p in paths])
        for name in cfg.tasks:
            if name not in self.manager.all_tasks:
                raise UserError("eval.harness.tasks", f"no harness task '{name}'; ftbench ships ftbench_math and "
                                "ftbench_commonsense (and one task per set: ftbench_math_gsm8k, ...); add a folder "
                                "of task YAMLs with eval.harness.include_path=DIR")
            try:
                self.manager.load([name])  # reads the task's data now, not after training
            except Exception as exc:
                raise UserError("eval.harness.tasks", f"task '{name}' could not load its data "
                                f"({exception_line(exc)[:200]}); offline, copy its YAML "
                                "with dataset_path: json and dataset_kwargs.data_files over local files into a "
                                "folder and set eval.harness.include_path=DIR") from exc

    def score(self, model, tokenizer) -> dict[str, Any]:
        """Score `model` (a causal LM, in memory, as trained) on the tasks; the `harness` record of
        result.json."""
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        cfg = self.cfg
        was_training = model.training
        model.eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
        gen_kwargs = {"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None
        out = lm_eval.simple_evaluate(model=lm, tasks=list(cfg.tasks), task_manager=self.manager,
                                      limit=cfg.limit, num_fewshot=cfg.num_fewshot, gen_kwargs=gen_kwargs,
                                      log_samples=False, bootstrap_iters=0)
        model.train(was_training)
        return {
            "version": lm_eval.__version__,
            "tasks": list(cfg.tasks),
            "limit": cfg.limit,
            "num_fewshot": cfg.num_fewshot,
            "scores": {task: {_metric(k): v for k, v in values.items() if _is_score(k, v)}
                       for task, values in out["results"].items()},
            "config_sha256": {task: hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
                              .hexdigest() for task, config in out["configs"].items()},
        }


def _is_score(key: str, value: Any) -> bool:
    """A metric ("acc,none"), not its standard error, the alias or the sample count."""
    return "," in key and "_stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool)


def _metric(key: str) -> str:
    """"exact_match,last_number" -> "exact_match/last_number"; "acc,none" -> "acc"."""
    name, kept = key.split(",", 1)
    return name if kept == "none" else f"{name}/{kept}"
