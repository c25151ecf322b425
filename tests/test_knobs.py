"""One owner per knob (knobs.settle): which key wins for each shared setting, table-driven, no model."""

import pytest
from omegaconf import OmegaConf

from ftbench.config.knobs import settle


def config(mode="train", train=None, task=None, optim=None, method=None, eval=None):
    """A composed config reduced to what settle reads; each group's own defaults unless given."""
    return OmegaConf.create({
        "mode": mode,
        "train": {"batch_size": None, "max_steps": None, "max_tokens": None, "epochs": None, **(train or {})},
        "task": {"batch_size": 32, "max_steps": None, "epochs": 3.0, **(task or {})},
        "optim": {"lr": None, **(optim or {})},
        "method": {"lr": 1e-4, **(method or {})},
        "eval": {"num_beams": None, "max_new_tokens": None, **(eval or {})},
        "profile": {"batch_size": 4, "steps": 10},
    })


GENERATIVE = {"num_beams": 4, "max_new_tokens": 256}

# (what is set, the setting, its value, the key that won)
CASES = [
    ({}, "batch_size", 32, "task.batch_size"),
    ({"train": {"batch_size": 8}}, "batch_size", 8, "train.batch_size"),
    ({"mode": "profile", "train": {"batch_size": 8}}, "batch_size", 4, "profile.batch_size"),
    ({}, "steps", 3 * 1000 // 32, "task.epochs"),
    ({"train": {"epochs": 1.0}}, "steps", 1000 // 32, "train.epochs"),
    ({"task": {"max_steps": 50}}, "steps", 50, "task.max_steps"),
    ({"task": {"max_steps": 50}, "train": {"max_steps": 7}}, "steps", 7, "train.max_steps"),
    ({"task": {"max_steps": 50}, "train": {"epochs": 0.1}}, "steps", 100 // 32, "train.epochs"),  # run-wide wins
    ({"train": {"max_steps": 7, "epochs": 2.0}}, "steps", 7, "train.max_steps"),  # steps over epochs
    ({"train": {"max_steps": 0}}, "steps", 0, "train.max_steps"),  # scoring only: 0 is set, not unset
    ({"task": {"max_steps": 50}, "train": {"max_tokens": 9000}}, "steps", None, "train.max_tokens"),  # the job counts
    ({"train": {"max_tokens": 9000}}, "steps", None, "train.max_tokens"),
    ({"train": {"batch_size": 4000}}, "steps", 1, "task.epochs"),  # less than one batch: one step
    ({"mode": "profile"}, "steps", None, "profile.steps"),
    ({}, "lr", 1e-4, "method.lr"),
    ({"optim": {"lr": 3e-5}}, "lr", 3e-5, "optim.lr"),
    ({}, "num_beams", None, None),  # a task that does not generate
    ({"task": GENERATIVE}, "num_beams", 4, "task.num_beams"),
    ({"task": GENERATIVE, "eval": {"num_beams": 1}}, "num_beams", 1, "eval.num_beams"),
    ({"task": GENERATIVE}, "max_new_tokens", 256, "task.max_new_tokens"),
    ({"task": GENERATIVE, "eval": {"max_new_tokens": 32}}, "max_new_tokens", 32, "eval.max_new_tokens"),
]


@pytest.mark.parametrize("given,name,value,owner", CASES)
def test_the_owner_of_each_knob_wins(given, name, value, owner):
    settings = settle(config(**given), train_examples=1000)
    assert getattr(settings, name) == value
    assert settings.owners[name] == owner


def test_steps_from_epochs_wait_for_the_data():
    """Without the training set's size the epochs cannot give steps; the rest still resolves."""
    settings = settle(config(optim={"lr": 0.5}))
    assert settings.steps is None and settings.owners["steps"] == "task.epochs" and settings.lr == 0.5


def test_the_record_names_the_winners():
    record = settle(config(task=GENERATIVE, eval={"num_beams": 1}, train={"batch_size": 8}), 64).record()
    assert record["num_beams"] == 1 and record["max_new_tokens"] == 256
    assert record["owners"] == {"batch_size": "train.batch_size", "steps": "task.epochs", "lr": "method.lr",
                                "num_beams": "eval.num_beams", "max_new_tokens": "task.max_new_tokens"}
