"""Commonsense and arithmetic reasoning in the LLM-Adapters protocol (S2FT, DoRA, LoRA baselines):
train on commonsense_170k or math_10k, generate an answer for every test question, extract it
with the set's published rule and report accuracy per set and the unweighted average.

Data: a local folder (task.data_dir) in the LLM-Adapters JSON format, or the LLM-Adapters
release on GitHub (task.remote). Eval set files are `<set>.test.json` or `<set>/test.json`;
a set with no file in the folder is skipped and named in the protocol, and the average says
over how many sets it was taken (metric avg/sets).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ftbench.errors import UserError, kind_problem
from ftbench.tasks import answers, generate
from ftbench.tasks.base import EvalContext
from ftbench.tasks.config import ReasoningConfig
from ftbench.tasks.instruct import (
    InstructTask,
    encode_prompts,
    load_remote_rows,
    read_json_rows,
    require_keys,
    resolve_files,
)

log = logging.getLogger(__name__)

COMMONSENSE_SETS = ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge",
                    "openbookqa"]
MATH_SETS = ["MultiArith", "gsm8k", "AddSub", "AQuA", "SingleEq", "SVAMP", "mawps"]
# What the papers keep for the final evaluation (run.py's train.select decides what this run keeps).
PAPER_SELECTION = {
    "commonsense": "best validation loss on 120 held-out training examples, every 80 steps from mid-training: "
                   "train.select=best train.select_metric=val/loss eval.every_steps=80",
    "math": "last checkpoint: train.select=last",
}


class ReasoningTask(InstructTask):
    def __init__(self, cfg: ReasoningConfig, tokenizer, seed: int):
        super().__init__(cfg, tokenizer, seed)
        self.skipped: list[str] = []
        self.tests: dict[str, list[dict]] = {}
        for name in cfg.eval_sets:
            rows = self.test_rows(name)
            if rows is None:
                self.skipped.append(name)
            else:
                self.tests[name] = rows
        if not self.tests:
            raise UserError("task.data_dir", f"no eval set file in {cfg.data_dir}; expected <set>.test.json or "
                            f"<set>/test.json for some of: {', '.join(cfg.eval_sets)}{self._other_task_hint()}")
        if self.skipped:
            log.warning("eval sets skipped (no file in %s): %s; avg/acc averages the other %d",
                        cfg.data_dir, ", ".join(self.skipped), len(self.tests))

    def _other_task_hint(self) -> str:
        """'; it holds the test sets of task=X (...): set task=X' when the folder is the other reasoning task's."""
        folder = Path(self.cfg.data_dir).expanduser()
        other = "commonsense" if self.cfg.name == "math" else "math"
        held = [name for name in (COMMONSENSE_SETS if other == "commonsense" else MATH_SETS)
                if (folder / f"{name}.test.json").is_file() or (folder / name / "test.json").is_file()]
        return f"; it holds the test sets of task={other} ({', '.join(held)}): set task={other}" if held else ""

    def training_rows(self) -> list[dict]:
        cfg = self.cfg
        keys = ("instruction", "output")
        if cfg.data_dir is None:
            url = f"{cfg.remote}/ft-training_set/{cfg.train_files[0]}"
            self.sources = [url]
            rows = load_remote_rows("task.data_dir", url, "download it and set task.data_dir=DIR", "json",
                                    data_files=url)
            return require_keys(rows, keys, url, key="task.remote")
        rows = []
        for path in resolve_files(Path(cfg.data_dir).expanduser(), list(cfg.train_files)):
            self.sources.append(str(path))
            rows += require_keys(read_json_rows(path), keys, path)
        return rows

    def test_rows(self, name: str) -> list[dict] | None:
        """The set's questions and gold answers; None when the local folder has no file for it. Raises
        UserError on task.data_dir when its file's name holds something else (a folder), and as
        `require_keys` on a record without text or with an answer the set's rule cannot judge."""
        cfg = self.cfg
        keys = ("instruction", "answer")
        if cfg.data_dir is None:
            url = f"{cfg.remote}/dataset/{name}/test.json"
            rows = load_remote_rows("task.data_dir", url, "download the test sets and set task.data_dir=DIR",
                                    "json", data_files=url)
            return require_keys(rows, keys, url, key="task.remote", gold=answers.rule_for(name))
        folder = Path(cfg.data_dir).expanduser()
        candidates = (folder / f"{name}.test.json", folder / name / "test.json")
        path = next((p for p in candidates if p.is_file()), None)
        other = next((p for p in candidates if p.exists()), None) if path is None else None
        if other is not None:
            raise UserError("task.data_dir", f"'{other}' {kind_problem(other, 'file')}; the {name} test set is "
                            f"<set>.test.json or <set>/test.json")
        if path is None:
            return None
        return require_keys(read_json_rows(path), keys, path, gold=answers.rule_for(name))

    def evaluate(self, model, ctx: EvalContext) -> dict[str, float]:
        sets = {}
        for name, rows in self.tests.items():
            chosen = rows[: ctx.max_samples] if ctx.max_samples is not None else rows
            prompt_ids = encode_prompts(self.tokenizer, [self.template.prompt(row, training=False) for row in chosen])
            prompts = [generate.Prompt(name, row["instruction"], ids, row["answer"])
                       for row, ids in zip(chosen, prompt_ids)]
            sets[name] = (prompts, answers.rule_for(name))
        return generate.score(model, self.tokenizer, sets, ctx, self.decoding(ctx))

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(),
                "answer_rule": {name: answers.rule_for(name).name for name in self.tests},
                "eval_sets": {name: len(rows) for name, rows in self.tests.items()},
                "skipped_sets": self.skipped, "average": f"unweighted mean over {len(self.tests)} sets",
                "samples_per_set": "all, or eval.max_samples (metrics <set>/samples)",
                "checkpoint_selection": PAPER_SELECTION[self.cfg.name]}
