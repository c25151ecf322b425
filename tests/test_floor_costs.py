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
    assert len(rows) == 2 * 5 + 3 * 4
    assert all(line.rstrip(" |").endswith("0.00") for line in rows)
