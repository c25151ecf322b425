"""Engagement: what a method claims to train against what changed, per unit (measure/engagement.py)."""

import logging

import torch

from ftbench.measure.engagement import ENGAGED_SHARE, Watch, folded_bytes
from helpers import run

RUN = ["task.max_steps=3", "task.num_train=64", "task.num_eval=32"]


def test_folded_bytes_sees_a_change_of_the_last_bit():
    weight = torch.ones(4, dtype=torch.float32)
    before = folded_bytes(weight)
    weight[2] = torch.nextafter(weight[2], torch.tensor(2.0))
    weight[3] = 0.0  # 1.0 -> 0.0: the lowest byte (0x00) is the same
    assert (folded_bytes(weight) != before).tolist() == [False, False, True, True]
    assert folded_bytes(torch.ones(3, dtype=torch.bfloat16)).dtype == torch.uint8


def test_counts_changes_per_unit_and_warns_when_far_below_the_claim(caplog):
    named = {"embed.weight": torch.zeros(10), "layers.0.w": torch.zeros(100), "head.w": torch.zeros(5)}
    watch = Watch(named, lambda name: name.split(".")[0], claimed=115)
    with caplog.at_level(logging.WARNING, logger="ftbench"):
        untouched = watch.report()
    assert untouched["changed"] == 0 and untouched["warning"].startswith("trained nothing")
    assert "trained nothing" in caplog.text
    named["head.w"] += 1.0  # 5 of 115 changed: below ENGAGED_SHARE
    assert 5 / 115 < ENGAGED_SHARE
    partial = watch.report()
    assert partial["units"] == {"embed": {"watched": 10, "changed": 0}, "layers": {"watched": 100, "changed": 0},
                                "head": {"watched": 5, "changed": 5}}
    assert partial["warning"].startswith("trained far less than it claims") and "embed, layers" in partial["warning"]
    named["layers.0.w"] += 1.0
    assert watch.report()["warning"] is None


def test_nothing_watched_is_no_warning():
    assert Watch({}, str, claimed=10).report()["warning"] is None


def test_a_run_whose_updates_vanish_is_flagged(tmp_path):
    """An lr so small that no fp32 weight moves: the loss curve and the trainable count look normal."""
    result = run(tmp_path / "run", "method=full", "optim.lr=1e-30", *RUN)
    assert result["status"] == "ok"
    assert result["params"]["trainable"] > 0
    assert result["engagement"]["changed"] == 0
    assert result["engagement"]["warning"].startswith("trained nothing")


def test_every_run_records_engagement_by_layer(tmp_path):
    result = run(tmp_path / "run", "method=lora", *RUN)
    units = result["engagement"]["units"]
    assert {"layer 0", "layer 1", "head"} <= set(units) and "embedding" not in units
    assert result["engagement"]["warning"] is None
