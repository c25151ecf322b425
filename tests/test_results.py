"""The result.json contract."""

import json
import math

from ftbench import results


def test_skeleton_of_a_failed_run_is_valid_once_it_says_why(tmp_path):
    result = results.skeleton()
    assert results.problems(result) == ["a run that is not ok must say why in 'error'"]
    result["error"] = "task.data_dir: missing"
    assert results.problems(result) == []
    results.write(result, tmp_path)
    assert results.read(tmp_path)["status"] == "failed"


def test_write_is_atomic_and_json_has_no_nan(tmp_path):
    result = results.skeleton()
    result.update(status="ok", metrics={"dev/acc": math.nan})
    path = results.write(result, tmp_path)
    assert json.loads(path.read_text())["metrics"]["dev/acc"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left behind


def test_problems_name_what_is_missing():
    result = results.skeleton()
    result["status"] = "ok"
    del result["memory"]["breakdown"]["grad_bytes"]
    del result["throughput"]
    result["metrics"] = {"acc": 1.0}
    found = results.problems(result)
    assert "missing section 'throughput'" in found
    assert "missing key 'memory.breakdown.grad_bytes'" in found
    assert "metric key 'acc' is not '<split>/<name>'" in found
