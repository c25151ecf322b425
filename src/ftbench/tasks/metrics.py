"""GLUE metric formulas (scikit-learn / scipy: they run offline)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def compute(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """Metric name -> value for the given predictions; names from acc f1 mcc pearson spearman."""
    preds, golds = np.asarray(predictions), np.asarray(labels)
    formulas = {
        "acc": lambda: accuracy_score(golds, preds),
        "f1": lambda: f1_score(golds, preds, average="binary", pos_label=1),
        "mcc": lambda: matthews_corrcoef(golds, preds),
        "pearson": lambda: _finite(pearsonr(preds, golds)[0]),
        "spearman": lambda: _finite(spearmanr(preds, golds)[0]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs: reported as 0 below, not as a warning
        return {name: float(formulas[name]()) for name in names}


def _finite(value: float) -> float:
    """A constant prediction has no correlation; report 0 rather than NaN."""
    return 0.0 if value is None or not np.isfinite(value) else float(value)
