"""GLUE metric formulas (scikit-learn / scipy: they run offline). Accuracy is NumPy's mean of the matches, and
the libraries are imported only for the other metrics: importing sklearn.metrics costs ~1.5 s of CPU, in every
ftbench process whose task scores accuracy alone."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def compute(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """Metric name -> value for the given predictions; names from acc f1 mcc pearson spearman."""
    preds, golds = np.asarray(predictions), np.asarray(labels)
    if preds.shape != golds.shape or not golds.size:  # as scikit-learn refuses them
        raise ValueError(f"{preds.shape[0]} predictions for {golds.shape[0]} labels")
    formulas = {
        "acc": lambda: np.mean(preds == golds),
        "f1": lambda: _sklearn("f1_score")(golds, preds, average="binary", pos_label=1),
        "mcc": lambda: _sklearn("matthews_corrcoef")(golds, preds),
        "pearson": lambda: _finite(_scipy("pearsonr")(preds, golds)[0]),
        "spearman": lambda: _finite(_scipy("spearmanr")(preds, golds)[0]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs: reported as 0 below, not as a warning
        return {name: float(formulas[name]()) for name in names}


def _finite(value: float) -> float:
    """A constant prediction has no correlation; report 0 rather than NaN."""
    return 0.0 if value is None or not np.isfinite(value) else float(value)


def _sklearn(name: str):
    import sklearn.metrics

    return getattr(sklearn.metrics, name)


def _scipy(name: str):
    import scipy.stats

    return getattr(scipy.stats, name)
