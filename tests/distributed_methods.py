"""Every method, data parallel, in one launch (test_distributed.py starts it once, as two 1-process
torchrun nodes meeting on localhost): each rank runs every method's job into OUT/<method> and
writes OUT/writes-rank<r>.json, the folders it wrote a result.json into (rank 0 only should);
then one more job goes through the `ftbench` command itself (Hydra; the ranks agree on one
run folder under OUT/cli)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ftbench.methods import config_class
from helpers import compose, method_table

# name -> overrides: a short setup, what trains switches within the run, and the draws of one process
METHODS = dict(method_table("short_setup", "switching", "same_draws"))
# The method whose run is resumed from step 2 below (its layers are drawn at random): every rank's RNG and
# stream position come back.
RESUMED = "lisa"
METHODS[RESUMED] += ["train.checkpoint_every=2", "train.keep_checkpoints=null"]
SHARDED = [name for name in METHODS if config_class(name).fsdp_refusal is None]  # FSDP is sound for them
# Batch 8 in micro-batches of 4: one process accumulates 2 of them; 2 ranks take one each. STEPS: one
# cycle of HiFT's 4 units and of BAdam's 2 layers at its switching interval (shorter cycles are refused).
STEPS = 4
COMMAND = ["task.num_train=32", "task.num_eval=8", "task.max_length=16", f"train.max_steps={STEPS}", "task.batch_size=8",
           "hardware.max_micro_batch_size=4", "train.save=last", "optim.lr=1e-2"]

CLI = ["hardware=cpu", "train.progress=false", "task.num_train=32", "task.num_eval=8", "task.max_length=16",
       "train.max_steps=2", "task.batch_size=4", "hardware.max_micro_batch_size=null"]


def main(out: Path) -> None:
    import torch
    from accelerate import PartialState

    import ftbench.results
    from ftbench.job.run import run_job
    from ftbench.parallel import distributed

    torch.set_num_threads(1)
    PartialState()  # the process group, from torchrun's environment (as the ftbench command does)
    writes: list[str] = []
    write = ftbench.results.write

    def counted(result, folder):
        writes.append(str(folder))
        return write(result, folder)

    ftbench.results.write = counted
    for name, overrides in METHODS.items():
        run_job(compose(f"method={name}", *COMMAND, *overrides), out / name)
    resumed = [f"method={RESUMED}", *COMMAND, *METHODS[RESUMED]]
    run_job(compose(*resumed, f"train.resume={out}/{RESUMED}/checkpoints/step-2"), out / f"{RESUMED}-resumed")
    for name in SHARDED:  # FSDP2: the same runs, each rank holding half of every weight
        run_job(compose(f"method={name}", *COMMAND, *METHODS[name], "hardware.shard=fsdp"), out / f"fsdp-{name}")
    (out / f"writes-rank{distributed.rank()}.json").write_text(json.dumps(writes))
    from ftbench.cli import main as ftbench

    try:
        ftbench(["method=lora", *CLI, f"hydra.run.dir={out}/cli/" + "${now:%H-%M-%S-%f}"])
    except SystemExit as exc:
        assert exc.code == 0, exc.code


if __name__ == "__main__":
    main(Path(sys.argv[1]))
