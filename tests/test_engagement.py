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
    assert untouched["changed"] == 0 and untouched["warning"] == (
        "trained nothing: none of the 115 parameters the method claims a step trains changed; unchanged: embed, "
        "layers, head")
    assert untouched["unchanged"] == ["embed", "layers", "head"]  # the model's order
    assert "trained nothing" in caplog.text
    named["head.w"] += 1.0  # 5 of 115 changed: below ENGAGED_SHARE
    assert 5 / 115 < ENGAGED_SHARE
    partial = watch.report(115, 115)
    assert partial["units"] == {"embed": {"watched": 10, "changed": 0}, "layers": {"watched": 100, "changed": 0},
                                "head": {"watched": 5, "changed": 5}}
    assert partial["warning"].startswith("trained far less than it claims") and partial["warning"].endswith(
        "; unchanged: embed, layers") and partial["unchanged"] == ["embed", "layers"]
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


def test_the_warning_names_what_is_claimed_and_never_changed_first_few_then_how_many_more():
    """Units the run does not claim (a rotation's unvisited blocks) are not named; where every claimed unit
    changed somewhere, the claimed parameters that did not are."""
    named = {f"layers.{i}.w": torch.zeros(10) for i in range(8)} | {"head.w": torch.zeros(10)}
    watch = Watch(named, lambda name: name.rsplit(".", 1)[0])
    report = watch.report(90, 90)
    assert report["warning"].endswith("; unchanged: layers.0, layers.1, layers.2, layers.3, layers.4 and 4 more")
    assert len(report["unchanged"]) == 9
    claimed = frozenset({"layers.2.w", "layers.5.w", "head.w"})
    report = watch.report(30, 10, claimed)
    assert report["unchanged"] == ["layers.2", "layers.5", "head"]
    assert report["warning"].endswith("changed; unchanged: layers.2, layers.5, head")
    whole = Watch({"layer.q": torch.zeros(100), "layer.k": torch.zeros(100)}, lambda name: "layer 0")
    whole.named["layer.q"][:5] += 1.0  # the unit changed, its k never did
    report = whole.report(200, 200)
    assert report["unchanged"] == [] and report["warning"].endswith("(2.5 %, below 10 %); unchanged: layer.k")


def test_nothing_watched_is_no_warning():
    assert Watch({}, str).report(10, 10)["warning"] is None


def test_a_run_whose_updates_vanish_is_flagged(tmp_path):
    """An lr so small that no fp32 weight moves: the loss curve and the trainable count look normal."""
    result = run(tmp_path / "run", "method=full", "optim.lr=1e-30", *RUN)
    assert result["status"] == "ok"
    assert result["params"]["trainable"] > 0
    assert result["engagement"]["changed"] == 0
    assert result["engagement"]["warning"].startswith("trained nothing")
    assert result["engagement"]["warning"].endswith("; unchanged: embedding, layer 0, layer 1, other, head")


def test_a_rotation_that_trains_nothing_names_the_units_it_held(tmp_path):
    """BAdam over 2 of 4 layers (a layer a step) whose updates vanish: the two layers it held and the units it
    always trains are named, the two it never reached (not claimed) are not."""
    engagement = run(tmp_path / "run", "method=badam", "method.steps_per_block=1", "model.shape.num_hidden_layers=4",
                     "optim.lr=1e-30", *RUN[1:], "task.max_steps=2")["engagement"]
    held = [unit for unit in engagement["unchanged"] if unit.startswith("layer")]
    assert len(held) == 2 and engagement["unchanged"] == [*held, "other", "head"]
    assert engagement["claimed"] == sum(engagement["units"][unit]["watched"] for unit in engagement["unchanged"])
    assert engagement["warning"].endswith("; unchanged: " + ", ".join(engagement["unchanged"]))


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
