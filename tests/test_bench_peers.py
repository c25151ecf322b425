"""The peers benchmark (src/ftbench/peers/): the harness end to end on a tiny shape, and its table."""

from __future__ import annotations

import pytest

from ftbench.bench.peers import timing as bench

TINY = ["model=tiny-llama", "profile.batch_size=2", "profile.seq_len=16", "profile.warmup_steps=1",
        "profile.steps=1"]


def test_full_beside_the_plain_pytorch_loop(tmp_path):
    """Four processes (ftbench and the peer, timed and traced): same model, same batch, same counts."""
    report = bench.main(["--methods", "full", "--repeats", "1", "--memory-steps", "1", "--out", str(tmp_path),
                         *TINY])
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
    report = bench.main(["--methods", "galore", "--repeats", "1", "--memory-steps", "1", "--out", str(tmp_path),
                         *TINY, "profile.steps=2"])
    (row,) = report["rows"]
    ours, peer = row["ftbench"], row["peer_result"]
    assert (row["peer"], ours["status"], peer["status"]) == ("galore", "ok", "ok"), (ours["error"], peer["error"])
    assert row["same_first_loss"] and row["same_last_loss"], (ours, peer)
    assert ours["trainable"] == peer["trainable"] == 139_584
    # One embedding-sized AdamW temporary more at ftbench's peak (its decay split puts the embedding and the
    # head side by side, and galore-torch's loop keeps the previous tensor's update alive): README "Peers".
    assert 1.0 <= row["memory_ratio"] < 1.07


def test_a_peer_that_cannot_run_shows_its_error():
    ok = {"status": "ok", "error": None, "step_time_s": 2.0, "peak_bytes": 2**30, "trainable": 10,
          "loss_first": 1.0, "package": None}
    failed = {**ok, "status": "failed", "error": "ImportError: cannot import name 'x' from 'transformers'",
              "step_time_s": None, "peak_bytes": None, "trainable": None, "loss_first": None}
    summary = {"ftbench:hift": ok, "peer:hift": failed, "peer:torch": {**ok, "step_time_s": 1.0},
               "peer:peft": {**ok, "peak_bytes": 2**29}}
    rows = bench.pairs(["hift"], summary)
    assert [r["peer"] for r in rows] == ["hift", "torch", "peft"]  # no peer that runs: the baselines instead
    assert (rows[1]["time_ratio"], rows[2]["memory_ratio"]) == (2.0, 2.0)
    text = bench.table(rows)
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
