"""Data parallel training (distributed.py) on 2 CPU processes (gloo), every method in one launch:
2 ranks x micro-batch B/2 end with the weights of 1 process x batch B (as two accumulated
micro-batches of B/2: for the top-k methods the selection is per micro-batch, so that is the
same computation), the recorded loss is the global mean, only rank 0 writes, and the
gradient bytes all-reduced per step are the trainable gradient's."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from distributed_methods import COMMAND, METHODS, RESUMED, SHARDED, STEPS
from ftbench.methods import method_class
from helpers import CLI_ENV, REPO, executable, run

# make test runs this whole file on one worker (conftest.ONE_WORKER), so its module fixture runs once.

ENV = {**CLI_ENV, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(two-rank results, one-process results, their folders). The two ranks are two torchrun agents
    of one process each (--nnodes 2, --node_rank 0 and 1) meeting on localhost; the one-process
    references run meanwhile."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    command = [executable("torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port())]
    nodes = [subprocess.Popen([*command, "--node_rank", str(i), str(REPO / "tests" / "distributed_methods.py"),
                               str(two)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = {name: run(one / name, f"method={name}", *COMMAND, *overrides) for name, overrides in METHODS.items()}
    finally:
        torch.set_num_threads(threads)
    started = time.time()
    outputs = [node.communicate(timeout=max(5, 300 - (time.time() - started)))[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    parallel = {name: json.loads((two / name / "result.json").read_text()) for name in METHODS}
    return parallel, reference, two, one


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "checkpoint" / "merged" / "model.safetensors"))


@pytest.mark.parametrize("name", list(METHODS))
def test_two_ranks_train_what_one_process_trains(runs, name):
    parallel, reference, two, one = runs
    assert parallel[name]["status"] == "ok", parallel[name]["error"]
    assert reference[name]["status"] == "ok", reference[name]["error"]
    got, want = weights(two / name), weights(one / name)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
    # The logged loss is the global batch's mean, step by step.
    got_curve, want_curve = parallel[name]["train"]["loss_curve"], reference[name]["train"]["loss_curve"]
    assert [s for s, _ in got_curve] == [s for s, _ in want_curve] == list(range(1, STEPS + 1))
    assert [v for _, v in got_curve] == pytest.approx([v for _, v in want_curve], rel=1e-5)
    assert len({v for _, v in want_curve}) == STEPS  # it trains
    assert parallel[name]["train"]["samples"] == reference[name]["train"]["samples"] == 8 * STEPS


@pytest.mark.parametrize("name", list(METHODS))
def test_the_gradient_bytes_reduced_per_step_are_the_trainable_gradient(runs, name):
    parallel, reference, _, _ = runs
    section = parallel[name]["distributed"]
    assert section["world_size"] == 2 and parallel[name]["env"]["world_size"] == 2
    assert [p["rank"] for p in section["rank_peaks"]] == [0, 1]
    assert all(p["cpu_peak_rss_bytes"] > 0 for p in section["rank_peaks"])
    per_step = section["reduced_bytes_per_step"]["first_steps"]
    assert len(per_step) == STEPS
    trainable = parallel[name]["memory"]["breakdown"]["trainable_bytes"]  # fp32: a gradient's bytes
    model_bytes = 4 * parallel[name]["params"]["total"]
    kind = method_class(name)
    if kind.sparse_gradients:  # the top-k of each MLP weight: k fp32 values and 2 int64 indices each
        described = parallel[name]["method"]
        k_total = described["per_step_trainable"] - described["dense_trainable"]
        assert per_step == [trainable + 16 * k_total] * STEPS
    elif kind.rotates:  # the active group only, following each switch
        assert max(per_step) == trainable < model_bytes
    else:  # traffic follows what trains, not the model: 4 bytes per trained element
        assert per_step == [trainable] * STEPS == [4 * parallel[name]["params"]["trainable"]] * STEPS
    one = reference[name]["distributed"]
    assert one["world_size"] == 1 and one["reduced_bytes_per_step"]["max"] == 0


def test_hift_reduces_the_active_units_bytes(runs):
    """The embedding, then each layer: the bytes follow the switch."""
    per_step = runs[0]["hift"]["distributed"]["reduced_bytes_per_step"]["first_steps"]
    assert per_step[0] != per_step[1] == per_step[2]


def test_only_rank_0_writes(runs):
    _, _, two, _ = runs
    rank0 = json.loads((two / "writes-rank0.json").read_text())
    rank1 = json.loads((two / "writes-rank1.json").read_text())
    jobs = [*METHODS, f"{RESUMED}-resumed", *(f"fsdp-{n}" for n in SHARDED)]
    assert rank1 == [] and sorted(set(rank0)) == sorted(str(two / n) for n in jobs)
    assert sorted(p.parent.name for p in two.glob("*/result.json")) == sorted(jobs)


@pytest.mark.parametrize("name", SHARDED)
def test_fsdp_on_two_ranks_trains_what_one_process_trains(runs, name):
    _, reference, two, one = runs
    result = json.loads((two / f"fsdp-{name}" / "result.json").read_text())
    assert result["status"] == "ok", result["error"]
    assert result["distributed"]["sharding"] == "fsdp" and result["distributed"]["world_size"] == 2
    # FSDP reduce-scatters each micro-batch's whole trainable gradient (one micro-batch per rank here).
    assert result["distributed"]["reduced_bytes_per_step"]["max"] == result["memory"]["breakdown"]["trainable_bytes"]
    assert result["export"]
    for kind in result["export"]:  # what the sharded run exports (LoRA: its adapter)
        (file,) = [p.name for p in (one / name / "checkpoint" / kind).glob("*.safetensors")]
        got = load_file(str(two / f"fsdp-{name}" / "checkpoint" / kind / file))
        want = load_file(str(one / name / "checkpoint" / kind / file))
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=f"fsdp {name} {kind}: {key}")
    got_curve = [v for _, v in result["train"]["loss_curve"]]
    assert got_curve == pytest.approx([v for _, v in reference[name]["train"]["loss_curve"]], rel=1e-5)


def test_methods_fsdp_cannot_shard_refuse_in_one_line(capsys):
    from ftbench.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["method=sift", "hardware.shard=fsdp", "hardware=cpu"])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "hardware.shard" in line and "sift cannot be sharded" in line


def test_a_checkpoint_holds_every_ranks_rng_and_resumes_only_at_its_world_size(runs, tmp_path):
    _, _, two, _ = runs
    saved = two / RESUMED / "checkpoints" / f"step-{STEPS}"
    assert len(torch.load(saved / "state.pt", weights_only=False)["rng_ranks"]) == 2
    # 2 ranks resumed from step 2 end where the 2 ranks that never stopped end (LISA draws its layers at random).
    resumed = json.loads((two / f"{RESUMED}-resumed" / "result.json").read_text())
    assert resumed["resumed_from"]["steps_before"] == 2 and resumed["distributed"]["world_size"] == 2
    straight, again = weights(two / RESUMED), weights(two / f"{RESUMED}-resumed")
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    again = run(tmp_path, f"method={RESUMED}", *COMMAND, *METHODS[RESUMED], f"train.resume={saved}")
    assert again["exit_code"] == 2 and "train.resume" in again["error"] and "2 process" in again["error"]


def test_two_nodes_train_through_the_ftbench_command_into_one_folder(runs):
    """The ranks of `ftbench` under torchrun take rank 0's clock for ${now:...}: one run folder, one
    result.json, one .hydra; the second rank writes no log file."""
    _, _, two, _ = runs
    folders = list((two / "cli").iterdir())
    assert len(folders) == 1, folders
    result = json.loads((folders[0] / "result.json").read_text())
    assert result["status"] == "ok" and result["distributed"]["world_size"] == 2
    assert result["plan"]["micro_batch_size"] == 2 and result["train"]["samples"] == 8
