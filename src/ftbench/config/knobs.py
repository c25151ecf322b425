"""One owner per knob: the settings two config groups can both set, resolved in one place.

A task says what its protocol trains with (batch, length of training, decoding) and a method says
the learning rate it works with; the run-wide groups (`train`, `optim`, `eval`) override them.
Which key wins, in order (the first that is set):

| setting        | wins                 | else                 | else                                        |
| -------------- | -------------------- | -------------------- | ------------------------------------------- |
| batch_size     | `train.batch_size`   | `task.batch_size`    |                                             |
| steps          | `train.max_steps`    | `train.max_tokens`   | `train.epochs`, else `task.max_steps`, else |
|                |                      | (steps: the job)     | `task.epochs`; epochs x training examples //|
|                |                      |                      | batch_size, at least 1                      |
| lr             | `optim.lr`           | `method.lr`          |                                             |
| num_beams      | `eval.num_beams`     | `task.num_beams`     | (tasks that do not generate: none)          |
| max_new_tokens | `eval.max_new_tokens`| `task.max_new_tokens`| (tasks that do not generate: none)          |

The run-wide length wins over the task's in every form: `train.epochs` over a task's `max_steps` (the
synthetic tasks set one) as much as over its epochs. `train.max_steps` wins over `train.epochs` (a preset
that trains for epochs stays shortenable by steps); `train.max_tokens` with `train.max_steps` or
`train.epochs` is refused (TrainConfig.check).

`mode=profile` trains on random tokens: `profile.batch_size` and `profile.steps` own the batch and
the steps there. A job records the values in result.json's `plan` and which key won in `plan.owners`.
This module imports no torch: the planner and the tests resolve without building a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _first(*candidates: tuple[str, Any]) -> tuple[str, Any]:
    """(key, value) of the first candidate whose value is set (not None); (None, None) if none is."""
    for key, value in candidates:
        if value is not None:
            return key, value
    return None, None


def decoding(eval_num_beams: int | None, eval_max_new_tokens: int | None, task_cfg) -> dict[str, tuple[str, Any]]:
    """num_beams and max_new_tokens -> (winning key, value): eval.* over the task's protocol default
    (None for a task that does not generate)."""
    return {"num_beams": _first(("eval.num_beams", eval_num_beams),
                                ("task.num_beams", _get(task_cfg, "num_beams"))),
            "max_new_tokens": _first(("eval.max_new_tokens", eval_max_new_tokens),
                                     ("task.max_new_tokens", _get(task_cfg, "max_new_tokens")))}


def _get(node, key: str) -> Any:
    """`node.key`, or None where the node has no such key (a DictConfig, a dataclass or a namespace)."""
    return node.get(key) if hasattr(node, "get") else getattr(node, key, None)


@dataclass(frozen=True)
class Settings:
    """The resolved values and, for each, the config key that won (`owners`)."""

    batch_size: int
    steps: int | None  # None under mode=profile (the method's warm-up adds to profile.steps: steps.train_spec),
    # when train.max_tokens decides (the job counts the steps from the data's order: batches.steps_for_tokens),
    # or when epochs decide and the training set was not counted
    lr: float
    num_beams: int | None  # None: the task does not generate
    max_new_tokens: int | None
    owners: dict[str, str | None] = field(default_factory=dict)  # None: nothing sets it

    def record(self) -> dict[str, Any]:
        """What result.json's `plan` adds of them (batch_size, steps and lr it holds already, as planned):
        the decoding settings and, for each setting, the key that won (`owners`)."""
        return {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens, "owners": dict(self.owners)}


def settle(cfg, train_examples: int | None = None) -> Settings:
    """Resolve every shared knob of the composed config `cfg` (see the table above).

    `train_examples`: the size of the training set, needed only when epochs decide the steps (without
    it those steps stay None: the planner and the benchmarks ask for the lr alone)."""
    winners: dict[str, tuple[str, Any]] = {}
    profiling = cfg.mode == "profile"
    if profiling:
        winners["batch_size"] = ("profile.batch_size", cfg.profile.batch_size)
        winners["steps"] = ("profile.steps", None)
    else:
        winners["batch_size"] = _first(("train.batch_size", cfg.train.batch_size), ("task.batch_size", cfg.task.batch_size))
        winners["steps"] = _first(("train.max_steps", cfg.train.max_steps), ("train.epochs", cfg.train.epochs),
                                  ("task.max_steps", cfg.task.max_steps), ("task.epochs", cfg.task.epochs))
        key, length = winners["steps"]
        if cfg.train.max_tokens is not None:  # never with train.max_steps or train.epochs (TrainConfig.check)
            winners["steps"] = ("train.max_tokens", None)
        elif key in ("train.epochs", "task.epochs"):
            steps = None if train_examples is None else max(1, int(length * train_examples // winners["batch_size"][1]))
            winners["steps"] = (key, steps)
    winners["lr"] = _first(("optim.lr", cfg.optim.lr), ("method.lr", cfg.method.lr))
    winners.update(decoding(cfg.eval.num_beams, cfg.eval.max_new_tokens, cfg.task))
    return Settings(**{name: value for name, (_, value) in winners.items()},
                    owners={name: key for name, (key, _) in winners.items()})
