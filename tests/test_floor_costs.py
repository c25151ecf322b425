"""scripts/floor_costs.py runs and prints one row per cost it names (at a small shape: the figures are for
a quiet machine, not for tests)."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_floor_costs_prints_every_row(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("floor_costs", REPO / "scripts" / "floor_costs.py")
    floor_costs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor_costs)
    monkeypatch.setattr(floor_costs, "TOKENS", 64)
    monkeypatch.setattr(floor_costs, "HIDDEN", 32)
    monkeypatch.setattr(floor_costs, "INTERMEDIATE", 48)
    monkeypatch.setattr(floor_costs, "ms", lambda call: (call(), 0.0)[1])
    floor_costs.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms" not in line]
    assert len(rows) == 2 * 7 + 3 * 4
    assert all(line.rstrip(" |").endswith("0.00") for line in rows)


def test_the_bf16_margin_script_compares_every_layer_step(tmp_path):
    """scripts/sparsegrad_bf16_margin.py runs SparseGrad with bf16 rotations and prints how far its kept entries
    sit from the fp32 pair's top-k: a few percent at most on tiny-llama, every kept entry near the k-th."""
    import re
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sparsegrad_bf16_margin.py"), "model=tiny-llama", "mode=profile",
         "profile.batch_size=2", "profile.seq_len=16", "profile.warmup_steps=1", "profile.steps=1",
         "method.calibration_steps=1", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"(\d+) layer-steps: kept entries not in the fp32 top-k ([\d.]+) % on average, ([\d.]+) % at "
                      r"most; smallest kept magnitude ([\d.]+) x the exact k-th; .* at least ([\d.]+)", done.stdout)
    assert found, done.stdout[-2000:]
    steps, mean, most, low, held = (float(v) for v in found.groups())
    assert steps > 0 and 0 <= mean <= most <= 10 and 0.9 <= low <= 1 and 0.99 <= held <= 1
