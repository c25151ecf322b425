"""The training loop's promises: accumulation, precisions, optimizers, schedules, selection, seeds."""

import pytest
import torch

from ftbench.config.schema import OptimConfig
from ftbench.engine.hardware import split_batch
from ftbench.engine.optim import make_optimizer, make_scheduler
from helpers import run

TINY = ["task.num_train=256", "task.num_eval=64"]


def curve(result):
    return [loss for _, loss in result["train"]["loss_curve"]]


def test_accumulation_equals_one_larger_batch(tmp_path):
    whole = run(tmp_path / "a", "task.batch_size=8", "task.max_steps=6", *TINY)
    split = run(tmp_path / "b", "task.batch_size=8", "task.max_steps=6", "hardware.max_micro_batch_size=2", *TINY)
    assert split["plan"]["accumulation"] == 4 and whole["plan"]["accumulation"] == 1
    assert curve(split) == pytest.approx(curve(whole), rel=1e-5)
    # result.json names the key that set each shared knob (knobs.settle)
    assert whole["plan"]["owners"] == {"batch_size": "task.batch_size", "steps": "task.max_steps", "lr": "method.lr",
                                       "num_beams": None, "max_new_tokens": None}


def test_the_batch_split_keeps_the_effective_batch():
    assert split_batch(32, 16) == (16, 2)
    assert split_batch(24, 16) == (12, 2)  # the largest micro-batch that divides the batch
    assert split_batch(7, 4) == (1, 7)
    assert split_batch(32, None) == (32, 1)
    assert split_batch(64, 16, world_size=2) == (16, 2)


@pytest.mark.parametrize("precision", ["bf16-pure", "bf16-mixed"])
def test_bf16_precisions_train(tmp_path, precision):
    result = run(tmp_path / "run", f"hardware.precision={precision}", "task.max_steps=20", *TINY)
    assert result["exit_code"] == 0, result["error"]
    assert result["env"]["precision"] == precision
    weights = result["memory"]["breakdown"]["weights_bytes"]
    assert weights == pytest.approx(result["params"]["total"] * (2 if precision == "bf16-pure" else 4), rel=0.01)


@pytest.mark.parametrize("optimizer,states", [("sgd", 0), ("adafactor", None), ("adamw", 2)])
def test_optimizers_and_their_state(tmp_path, optimizer, states):
    result = run(tmp_path / "run", f"optim.name={optimizer}", "optim.lr=1e-2", "task.max_steps=3", *TINY)
    assert result["exit_code"] == 0, result["error"]
    held = result["memory"]["breakdown"]["optimizer_state_bytes"]
    if states is None:  # Adafactor factors its second moment: far less than one state per weight
        assert 0 < held < result["memory"]["breakdown"]["weights_bytes"]
    else:
        assert held == pytest.approx(states * result["memory"]["breakdown"]["weights_bytes"], rel=0.01)


@pytest.mark.parametrize("name,expected", [
    ("linear", [0.5, 1.0, 0.75, 0.5, 0.25, 0.0]),
    ("cosine", [0.5, 1.0, 0.8535534, 0.5, 0.1464466, 0.0]),
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_schedules_warm_up_then_follow_their_shape(name, expected):
    optimizer = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], OptimConfig(name="sgd"), 1.0)
    scheduler = make_scheduler(optimizer, OptimConfig(scheduler=name, warmup_steps=2), total_steps=6)
    lrs = []
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert lrs == pytest.approx(expected)  # lr after each step: warm-up 0.5, 1.0, then the shape


def test_best_checkpoint_is_restored_scored_and_exported(tmp_path):
    result = run(tmp_path / "run", "train.select=best", "train.save=best", "eval.every_steps=5", "task.max_steps=20",
                 "optim.lr=3e-3", *TINY)
    assert result["exit_code"] == 0, result["error"]
    history = {v["step"]: v["metrics"]["dev/acc"] for v in result["validation_history"]}
    best_step = max(history, key=lambda s: (history[s], -s))
    assert result["selection"] == {"policy": "best", "metric": "dev/acc", "step": best_step,
                                   "value": history[best_step]}
    assert result["metrics"]["dev/acc"] == history[best_step]  # the final evaluation scored the restored best
    assert (tmp_path / "run" / "checkpoint" / "merged" / "config.json").is_file()


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    first = run(tmp_path / "a", "task.max_steps=5", *TINY)
    again = run(tmp_path / "b", "task.max_steps=5", *TINY)
    other = run(tmp_path / "c", "task.max_steps=5", "seed=1", *TINY)
    assert curve(first) == curve(again)
    assert curve(first) != curve(other)


def test_epochs_set_the_step_count_when_no_max_steps(tmp_path):
    result = run(tmp_path / "run", "task.max_steps=null", "train.epochs=0.5", *TINY)
    assert result["train"]["steps"] == 4  # 0.5 × 256 examples / batch 32


def test_train_epochs_win_over_the_tasks_max_steps(tmp_path):
    """The synthetic task trains for its own max_steps (300) unless the run says how long: train.epochs does."""
    result = run(tmp_path / "run", "train.epochs=0.25", *TINY)
    assert result["train"]["steps"] == 2  # 0.25 × 256 examples / batch 32
    assert result["plan"]["owners"]["steps"] == "train.epochs"


def test_ctrl_c_stops_when_the_step_ends():
    """The interrupt lands while a batch is drawn; the step still completes (optimizer step and write-back)
    and the loop raises KeyboardInterrupt before the next one. The previous handler comes back."""
    import os
    import signal

    from ftbench.methods import build_method
    from helpers import compose, method_context, synthetic_batches, tiny_model, train_steps

    def interrupted(batches, at: int):
        for i, batch in enumerate(batches):
            if i == at:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    model = tiny_model("tiny-llama")
    method = build_method(compose("method=sift", "method.sparse_rate=0.1").method)
    model = method.prepare(model, method_context())
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_steps(model, method, interrupted(synthetic_batches(), at=2), steps=10, lr=1e-2, optimizer="adamw")
    assert signal.getsignal(signal.SIGINT) is handler
    optimizer_steps = {int(method.optimizer.state[p]["step"]) for p in method.master_parameters()}
    assert optimizer_steps == {3}  # the third step, during which Ctrl-C came, completed
    for layer in method.layers:  # and its update was written back into the dense weight
        torch.testing.assert_close(layer.selected_values(), layer.master.detach().reshape(layer.selected_values().shape))


@pytest.mark.parametrize("select", ["last", "best"])
def test_validations_every_n_steps_include_the_last_step(tmp_path, select):
    """eval.every_steps=N validates at N, 2N, ... and at the last step, whichever checkpoint is reported."""
    result = run(tmp_path / "run", f"train.select={select}", "eval.every_steps=2", "task.max_steps=5", *TINY)
    assert result["exit_code"] == 0, result["error"]
    assert [v["step"] for v in result["validation_history"]] == [2, 4, 5]


def test_a_budget_in_tokens_stops_at_the_first_step_that_reaches_it(tmp_path):
    """train.max_tokens: the steps are counted before training (the schedule spans them); the run's
    tokens (padding not counted) reach the budget, one step fewer would not, and micro-batching changes
    neither the steps nor the tokens."""
    budget = 3000
    whole = run(tmp_path / "whole", f"train.max_tokens={budget}", "task.batch_size=8", *TINY)
    split = run(tmp_path / "split", f"train.max_tokens={budget}", "task.batch_size=8",
                "hardware.max_micro_batch_size=2", *TINY)
    steps = whole["plan"]["steps"]
    assert whole["plan"]["owners"]["steps"] == "train.max_tokens" and whole["train"]["steps"] == steps > 1
    assert whole["train"]["tokens_nonpad"] >= budget
    assert (split["plan"]["steps"], split["train"]["tokens_nonpad"]) == (steps, whole["train"]["tokens_nonpad"])
    shorter = run(tmp_path / "shorter", f"train.max_steps={steps - 1}", "task.batch_size=8", *TINY)
    assert shorter["train"]["tokens_nonpad"] < budget
