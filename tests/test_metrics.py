"""GLUE metrics against hand-computed values."""

import pytest

from ftbench.tasks.metrics import compute


def test_classification_metrics():
    # tp=2 tn=1 fp=1 fn=0
    values = compute(["acc", "f1", "mcc"], [1, 0, 1, 1], [1, 0, 0, 1])
    assert values["acc"] == pytest.approx(0.75)
    assert values["f1"] == pytest.approx(0.8)  # precision 2/3, recall 1
    assert values["mcc"] == pytest.approx(2 / 12 ** 0.5)  # (tp·tn − fp·fn)/√((tp+fp)(tp+fn)(tn+fp)(tn+fn))


def test_correlations():
    values = compute(["pearson", "spearman"], [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert values["pearson"] == pytest.approx(0.8)  # Σdxdy=4, Σdx²=Σdy²=5
    assert values["spearman"] == pytest.approx(0.8)


def test_degenerate_predictions_score_zero_not_nan():
    assert compute(["pearson", "spearman"], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}
    assert compute(["mcc"], [1, 1, 1], [0, 1, 0]) == {"mcc": 0.0}


def test_accuracy_is_scikit_learns():
    from sklearn.metrics import accuracy_score

    preds, golds = [2, 0, 1, 1, 2, 0, 1], [2, 1, 1, 0, 2, 0, 0]
    assert compute(["acc"], preds, golds) == {"acc": accuracy_score(golds, preds)}
    with pytest.raises(ValueError, match="3 predictions for 4 labels"):
        compute(["acc"], [1, 0, 1], [1, 0, 1, 1])
    with pytest.raises(ValueError, match="0 predictions for 0 labels"):
        compute(["acc"], [], [])
