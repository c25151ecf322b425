"""The peers benchmark (src/ftbench/bench/peers/): the harness end to end on a tiny shape, its table, its rounds
and its pairing of both sides in one process."""

from __future__ import annotations

import pytest
import torch

from ftbench.bench.peers import timing as bench
from ftbench.bench.peers.loop import RandomState
from ftbench.bench.peers.paired import paced
from ftbench.bench.peers.rounds import Rounds, spread, step_ratio
from ftbench.bench.peers.table import pairs, table

TINY = ["model=tiny-llama", "profile.batch_size=2", "profile.seq_len=16", "profile.warmup_steps=1",
        "profile.steps=1"]


def test_full_beside_the_plain_pytorch_loop(tmp_path):
    """Four processes (ftbench and the peer, timed and traced): same model, same batch, same counts."""
    report = bench.main(["--methods", "full", "--baselines", "torch", "--max-rounds", "1", "--memory-steps", "1",
                         "--out", str(tmp_path), *TINY])
    (row,) = report["rows"]
    ours, peer = row["ftbench"], row["peer_result"]
    assert (row["method"], row["peer"], ours["status"], peer["status"]) == ("full", "torch", "ok", "ok")
    assert row["same_first_loss"], (ours["loss_first"], peer["loss_first"])  # same init, same data
    assert ours["trainable"] == peer["trainable"] == 139_584  # every weight of tiny-llama
    assert ours["step_time_s"] > 0 and peer["step_time_s"] > 0
    # The same tracer on both sides: only ftbench's AdamW group order differs (one weight's temporary).
    assert 1.0 <= row["memory_ratio"] < 1.05
    assert "| full | plain PyTorch loop, AdamW |" in (tmp_path / "peers.md").read_text()


def test_galore_beside_galore_torchs_readme_loop(tmp_path):
    """The same library stepping the same tensors: the same first and last loss (the weights after the
    steps before it); the peer's held state counts the projection matrices inside its projectors too."""
    report = bench.main(["--methods", "galore", "--baselines", "--max-rounds", "1", "--memory-steps", "1",
                         "--out", str(tmp_path), *TINY, "profile.steps=2"])
    (row,) = report["rows"]
    ours, peer = row["ftbench"], row["peer_result"]
    assert (row["peer"], ours["status"], peer["status"]) == ("galore", "ok", "ok"), (ours["error"], peer["error"])
    assert row["same_first_loss"] and row["same_last_loss"], (ours, peer)
    assert ours["trainable"] == peer["trainable"] == 139_584
    # One embedding-sized AdamW temporary more at ftbench's peak (its decay split puts the embedding and the
    # head side by side, and galore-torch's loop keeps the previous tensor's update alive): README "Peers".
    assert 1.0 <= row["memory_ratio"] < 1.07


def test_a_peer_that_cannot_run_shows_its_error():
    ok = {"status": "ok", "error": None, "step_time_s": 2.0, "step_times_rounds_s": [[2.0]], "peak_bytes": 2**30,
          "trainable": 10, "loss_first": 1.0, "package": None}
    failed = {**ok, "status": "failed", "error": "ImportError: cannot import name 'x' from 'transformers'",
              "step_time_s": None, "step_times_rounds_s": [None], "peak_bytes": None, "trainable": None,
              "loss_first": None}
    summary = {"ftbench:hift": ok, "peer:hift": failed, "peer:torch": {**ok, "step_time_s": 1.0,
                                                                       "step_times_rounds_s": [[1.0]]},
               "peer:peft": {**ok, "peak_bytes": 2**29}}
    rows = pairs(["hift"], summary)
    assert [r["peer"] for r in rows] == ["hift", "torch", "peft"]  # no peer that runs: the baselines instead
    assert (rows[1]["time_ratio"], rows[2]["memory_ratio"]) == (2.0, 2.0)
    text = table(rows)
    assert "peer did not run: ImportError: cannot import name 'x' from 'transformers'" in text
    assert "| 2.00 |" in text


def test_command_line_values_win_over_the_defaults():
    merged = bench.with_defaults(["profile.seq_len=64", "+x=1"], ["profile.seq_len=256", "model=llama-mini"])
    assert merged == ["model=llama-mini", "profile.seq_len=64", "+x=1"]


def test_a_bad_option_is_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--methods", "nosuch", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("bench-peers: error: method=nosuch: no such option")


# -- how many rounds: a fake timer, no process runs ----------------------------------------------------

class FakePlan:
    """full beside torch, whose step times are given per round (one fixed number per round and side)."""

    cuda = True
    entries = [("ftbench", "full"), ("peer", "torch")]
    methods, baselines = ["full"], ("torch",)

    def __init__(self, ftbench_times, torch_times=None):
        self.times = {"ftbench": list(ftbench_times), "torch": list(torch_times or [1.0] * len(ftbench_times))}
        self.order = []

    def run(self, entry, trace, tag):  # the memory runs
        self.order.append(("memory", *entry))
        ok = self.times[entry[1] if entry[0] == "peer" else "ftbench"][0] is not None
        return record(1.0 if ok else None)

    def pair(self, method, peers, tag):
        self.order.append(("pair", method, *peers))
        return {"ftbench": record(self.times["ftbench"].pop(0)), **{p: record(self.times[p].pop(0)) for p in peers}}


def record(time):
    return {"status": "ok" if time else "failed", "error": None if time else "no", "step_time_s": time,
            "step_times_s": [time] if time else None, "peak_bytes": None, "trainable": 1, "loss_first": None, "loss_last": None, "package": None}


RULE = Rounds(max_rounds=12, half_width=0.015)


def rounds_run(plan) -> tuple[int, dict]:
    rule, reports = RULE, []
    summary = bench.measure(plan, lambda summary, n: rule.done(
        [r["time_spread"] for r in pairs(["full"], summary, ("torch",))], n), lambda summary, n: reports.append(n))
    (row,) = pairs(["full"], summary, ("torch",))
    assert reports == list(range(1, len(reports) + 1))  # a table after every round
    return reports[-1], row


def test_rounds_go_on_until_the_interval_is_narrow():
    # Ratios 0.99, 1.01, ... : sd ≈ 0.0107; the 95 % half-width t(n-1)·sd/√n is 0.127 at 2 rounds,
    # 0.0184 at 4, 0.0115 at 6: six rounds.
    plan = FakePlan([0.99, 1.01] * 6)
    rounds, row = rounds_run(plan)
    # each entry's memory run once, then one process a round holding both sides
    assert rounds == 6 and plan.order == [("memory", "ftbench", "full"), ("memory", "peer", "torch"),
                                          *[("pair", "full", "torch")] * 6]
    assert row["time_ratio"] == pytest.approx(1.0) and row["time_spread"]["half_width"] <= 0.015
    assert (row["time_spread"]["low"], row["time_spread"]["high"], row["time_spread"]["rounds"]) == (0.99, 1.01, 6)


def test_rounds_pair_each_round_so_a_drift_on_both_sides_cancels():
    drift = [1.0 + 0.1 * i for i in range(12)]  # the machine slows down round after round
    rounds, row = rounds_run(FakePlan([1.2 * d for d in drift], drift))
    assert rounds == 2 and row["time_ratio"] == pytest.approx(1.2) and row["time_spread"]["half_width"] < 1e-9


def test_a_rounds_ratio_pairs_each_step_with_the_peers_step_beside_it():
    """The machine halves its speed from the middle of ftbench's second step on (3.0 s instead of 2.0, then
    both sides twice as slow): the step ratios are 2, 3, 2 and the round's ratio 2.0, where the ratio of the
    two sides' medians would be 3.0 / 1.0."""
    assert step_ratio([2.0, 3.0, 4.0], [1.0, 1.0, 2.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="3 steps timed against the peer's 2"):
        step_ratio([2.0, 3.0, 4.0], [1.0, 1.0])


def test_rounds_stop_at_the_cap_when_the_ratio_stays_noisy():
    rounds, row = rounds_run(FakePlan([0.8, 1.2] * 6))
    assert rounds == 12 and row["time_spread"]["half_width"] > 0.1


def test_a_row_that_cannot_run_does_not_hold_the_rounds():
    plan = FakePlan([None] * 12)  # ftbench fails its memory run: it is not timed, and its row has no ratio
    rounds, row = rounds_run(plan)
    assert rounds == 2 and row["time_ratio"] is None and plan.order == [("memory", "ftbench", "full"),
                                                                       ("memory", "peer", "torch")]
    assert row["ftbench"]["error"] == "no"


def test_a_method_is_timed_beside_its_own_peer_and_the_baselines_that_ran():
    memory = {("ftbench", "badam"): record(1.0), ("peer", "badam"): record(None), ("peer", "torch"): record(1.0),
              ("peer", "peft"): record(1.0)}
    plan = FakePlan([1.0])
    plan.baselines = ("torch", "peft")
    assert bench.peers_beside(plan, "badam", memory) == ["torch", "peft"]  # badam's own did not run
    assert bench.peers_beside(plan, "badam", {**memory, ("peer", "badam"): record(1.0)}) == ["badam", "torch", "peft"]
    assert bench.peers_beside(plan, "lora", memory) == ["peft", "torch"]  # its own first, no baseline twice
    plan.baselines = ()
    assert bench.peers_beside(plan, "sift", memory) == []


def test_the_spread_of_one_round_has_no_interval():
    assert spread([1.1]) == {"mean": 1.1, "half_width": None, "low": 1.1, "high": 1.1, "rounds": 1}
    assert not Rounds().done([spread([1.1])], 1) and Rounds(max_rounds=1).done([spread([1.1])], 1)


# -- one process, both sides: paired.py ------------------------------------------------------------------

class FakePeer:
    def __init__(self, log):
        self.log = log

    def step(self):
        self.log.append("peer step")


def test_a_peer_steps_before_the_first_micro_batch_of_every_step():
    log = []
    batches = ({"i": i} for i in range(6))
    for batch in paced(batches, 2, [FakePeer(log)]):
        log.append(batch["i"])
    assert log == ["peer step", 0, 1, "peer step", 2, 3, "peer step", 4, 5]


def test_a_random_state_of_its_own_leaves_the_callers_draws_as_they_were():
    torch.manual_seed(0)
    alone = [torch.rand(2) for _ in range(3)]
    torch.manual_seed(0)
    own = RandomState()
    with own:
        torch.manual_seed(123)
        first = torch.rand(2)
    beside = [torch.rand(2)]
    with own:
        second = torch.rand(2)  # it goes on from where it stopped
    beside += [torch.rand(2) for _ in range(2)]
    torch.manual_seed(123)
    assert all(torch.equal(a, b) for a, b in zip(alone, beside))
    assert torch.equal(first, torch.rand(2)) and torch.equal(second, torch.rand(2))


def test_lora_beside_peft_in_one_process_draws_the_same_dropout_masks(tmp_path):
    """Dropout 0.05 on both sides, stepped in turn in one process: each side's masks are those of a process
    of its own, so the last step's loss (after a step trained through the masks) is the same."""
    report = bench.main(["--methods", "lora", "--baselines", "--max-rounds", "1", "--out", str(tmp_path), *TINY,
                         "profile.steps=2"])
    (row,) = report["rows"]
    assert row["peer"] == "peft" and row["ftbench"]["status"] == row["peer_result"]["status"] == "ok"
    assert row["same_first_loss"] and row["same_last_loss"], (row["ftbench"], row["peer_result"])
    assert row["ftbench"]["loss_last"] != row["ftbench"]["loss_first"]
