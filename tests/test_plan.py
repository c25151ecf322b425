"""The memory planner: a plan made from probes of fewer layers and smaller batches
predicts the traced peak of the real run (every method), and the largest micro-batch."""

import pytest

from ftbench.plan import largest_micro_batch, predict
from helpers import compose, run

LAYERS = 8
SHAPE = ["model=tiny-llama", f"model.shape.num_hidden_layers={LAYERS}", "hardware.gradient_checkpointing=true",
         "profile.batch_size=4", "profile.seq_len=32"]
# (method, overrides, traced steps of the real run: a rotating method's whole cycle)
METHODS = [
    ("full", [], 1),
    ("lora", ["method.dropout=0"], 1),
    ("sift", [], 1),
    ("s2ft", [], 1),
    ("sparsegrad", ["method.calibration_steps=2"], 1),
    ("meprop", [], 1),
    ("hift", [], LAYERS + 2),
    ("badam", [], 1),
    ("lisa", [], 1),
]


@pytest.mark.parametrize("method,overrides,steps", METHODS, ids=[m[0] for m in METHODS])
def test_plan_from_fewer_layers_predicts_the_traced_peak(tmp_path, method, overrides, steps):
    args = [*SHAPE, f"method={method}", *overrides]
    real = run(tmp_path / "real", "mode=profile", *args, "profile.warmup_steps=1", f"profile.steps={steps}")
    assert real["status"] == "ok", real["error"]
    plan = predict(compose("mode=plan", *args))
    predicted, traced = plan["memory"]["train_peak_allocated_bytes"], real["memory"]["train_peak_traced_bytes"]
    assert abs(predicted / traced - 1) < 0.03, (predicted, traced, plan["memory"], real["memory"])
