"""Engagement: what a method claims to train against what changed, per unit (measure/engagement.py)."""

import logging

import pytest
import torch

from ftbench.measure.engagement import ENGAGED_SHARE, Watch, folded_bytes
from helpers import run

RUN = ["task.max_steps=4", "task.num_train=64", "task.num_eval=32"]


def test_folded_bytes_sees_a_change_of_the_last_bit():
    weight = torch.ones(4, dtype=torch.float32)
    before = folded_bytes(weight)
    weight[2] = torch.nextafter(weight[2], torch.tensor(2.0))
    weight[3] = 0.0  # 1.0 -> 0.0: the lowest byte (0x00) is the same
    assert (folded_bytes(weight) != before).tolist() == [False, False, True, True]
    assert folded_bytes(torch.ones(3, dtype=torch.bfloat16)).dtype == torch.uint8


def test_counts_changes_per_unit_and_warns_when_far_below_the_claim(caplog):
    named = {"embed.weight": torch.zeros(10), "layers.0.w": torch.zeros(100), "head.w": torch.zeros(5)}
    watch = Watch(named, lambda name: name.split(".")[0])
    with caplog.at_level(logging.WARNING, logger="ftbench"):
        untouched = watch.report(115, 115)
    assert untouched["changed"] == 0 and untouched["warning"].startswith("trained nothing")
    assert "trained nothing" in caplog.text
    named["head.w"] += 1.0  # 5 of 115 changed: below ENGAGED_SHARE
    assert 5 / 115 < ENGAGED_SHARE
    partial = watch.report(115, 115)
    assert partial["units"] == {"embed": {"watched": 10, "changed": 0}, "layers": {"watched": 100, "changed": 0},
                                "head": {"watched": 5, "changed": 5}}
    assert partial["warning"].startswith("trained far less than it claims") and "embed, layers" in partial["warning"]
    named["layers.0.w"] += 1.0
    assert watch.report(115, 115)["warning"] is None


def test_the_share_is_of_the_whole_run_claim_and_the_warning_of_one_step():
    """A rotation claiming 12 elements over the run and 4 a step: 6 changed is half its claim and more
    than a step's, no warning; 3 changed of 100 claimed a step is flagged."""
    named = {"a.w": torch.zeros(4), "b.w": torch.zeros(4), "c.w": torch.zeros(4)}
    watch = Watch(named, lambda name: name.split(".")[0])
    named["a.w"] += 1.0
    named["b.w"][:2] += 1.0
    report = watch.report(12, 4)
    assert (report["claimed"], report["claimed_per_step"], report["changed"]) == (12, 4, 6)
    assert report["changed_pct_of_claimed"] == 50.0 and report["warning"] is None
    few = Watch({"w": torch.zeros(100)}, str)
    few.named["w"][:3] += 1.0
    assert few.report(1000, 100)["warning"].startswith("trained far less than it claims")


def test_nothing_watched_is_no_warning():
    assert Watch({}, str).report(10, 10)["warning"] is None


def test_a_run_whose_updates_vanish_is_flagged(tmp_path):
    """An lr so small that no fp32 weight moves: the loss curve and the trainable count look normal."""
    result = run(tmp_path / "run", "method=full", "optim.lr=1e-30", *RUN)
    assert result["status"] == "ok"
    assert result["params"]["trainable"] > 0
    assert result["engagement"]["changed"] == 0
    assert result["engagement"]["warning"].startswith("trained nothing")


@pytest.mark.parametrize("method", [
    ("method=badam", "method.steps_per_block=1"),  # a new random layer every step
    ("method=hift",),  # down2up, one unit a step: the embedding, the layers, the head
    ("method=lisa", "method.steps_per_block=1", "method.group_size=1", "seed=1"),  # layer 0, then 1 (seed 1)
])
def test_block_rotations_change_no_more_than_they_claim_over_the_run(tmp_path, method):
    """A rotation trains one group a step (params.trainable, the largest) and others over the run: what
    changed is set against every group it held, so a method that trains what it claims is at most 100 %."""
    engagement = run(tmp_path / "run", *method, *RUN)["engagement"]
    assert engagement["claimed_per_step"] < engagement["claimed"] <= engagement["watched"]
    assert engagement["changed"] > engagement["claimed_per_step"]  # more than one step's group moved
    assert 0 < engagement["changed_pct_of_claimed"] <= 100
    assert engagement["warning"] is None


def test_every_run_records_engagement_by_layer(tmp_path):
    result = run(tmp_path / "run", "method=lora", *RUN)
    units = result["engagement"]["units"]
    assert {"layer 0", "layer 1", "head"} <= set(units) and "embedding" not in units
    assert result["engagement"]["warning"] is None
