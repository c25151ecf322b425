"""`make gpu-check`: its dry mode runs end to end on any machine; its table judges what the sweeps measured."""

import subprocess
import sys

from ftbench.methods import config_class, names
from helpers import REPO, gpu_check_script

SCRIPT = REPO / "scripts" / "gpu_check.py"


def test_the_dry_mode_lists_every_step_and_runs_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("pytest -m gpu" in line for line in lines)
    llama = [line for line in lines if "model=llama2-7b" in line]
    assert {m for m in names() if any(f"method={m} " in line for line in llama)} == set(names())
    assert all("profile.batch_size=4 profile.seq_len=512" in line and "hardware.gradient_checkpointing=true" in line
               and "hardware.precision=bf16-pure" in line and "model.random_init=true" in line for line in llama)
    roberta = " ".join(line for line in lines if "model=roberta-large" in line)
    declared = [m for m in names() if "roberta-large" in config_class(m).gpu_targets]
    assert declared and all(f"method={m} " in roberta for m in ["full", *declared])  # after the baseline
    assert lines[-1].startswith("dry run:") and not (tmp_path / "out").exists()


def test_the_table_compares_each_method_with_full_in_the_same_sweep():
    gpu_check = gpu_check_script()
    gib = 2**30

    def measured(peak_gib, step_s=0.5):
        return {"status": "ok", "memory": {"train_peak_allocated_bytes": int(peak_gib * gib),
                                           "train_peak_reserved_bytes": int(peak_gib * gib) + gib},
                "throughput": {"step_time_s_p50": step_s}}

    full = gpu_check.Job("roberta-large", "full (bf16 updates)", [], result=measured(3.0))
    close = gpu_check.Job("roberta-large", "sparsegrad", [], max_ratio=0.95, result=measured(2.7))
    over = gpu_check.Job("roberta-large", "meprop", [], max_ratio=0.9, result=measured(2.85))
    sift = gpu_check.Job("llama2-7b", "sift", [], max_gib=15.95, result=measured(14.4))
    oom = gpu_check.Job("llama2-7b", "lora", [], result={"status": "oom", "error": "CUDA out of memory"})
    text, ok = gpu_check.table([full, close, over, sift, oom])
    rows = {line.split(" | ")[1]: line for line in text.splitlines()[2:]}
    assert "| 0.900 |" in rows["sparsegrad"] and rows["sparsegrad"].endswith("| pass |")
    assert "| 0.950 |" in rows["meprop"] and rows["meprop"].endswith("| FAIL |")
    assert rows["sift"].endswith("| pass |") and "14.40 GiB" in rows["sift"]
    assert "FAIL (oom" in rows["lora"] and not ok


def test_the_table_holds_a_step_time_bound_beside_full_in_the_same_sweep():
    gpu_check = gpu_check_script()
    result = {"status": "ok", "memory": {"train_peak_allocated_bytes": 2**30, "train_peak_reserved_bytes": 2**31}}
    full = gpu_check.Job("llama2-7b", "full (bf16 updates)", [], result={**result, "throughput": {"step_time_s_p50": 2.0}})
    fast = gpu_check.Job("llama2-7b", "sift", [], max_time_ratio=0.85, result={
        **result, "throughput": {"step_time_s_p50": 1.6}})
    slow = gpu_check.Job("llama2-7b", "meprop", [], max_time_ratio=1.05, result={
        **result, "throughput": {"step_time_s_p50": 2.2}})
    text, ok = gpu_check.table([full, fast, slow])
    rows = {line.split(" | ")[1]: line for line in text.splitlines()[2:]}
    assert rows["sift"].endswith("| 0.800 | ≤ 0.85 | pass |") and rows["meprop"].endswith("| 1.100 | ≤ 1.05 | FAIL |")
    assert not ok
