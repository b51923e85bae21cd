"""Classification metrics from scikit-learn, in the shape the training report stores."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, roc_auc_score


def classification_metrics(labels: np.ndarray, probability_fake: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy at the threshold and ROC AUC (NaN when only one class is present)."""
    labels = np.asarray(labels)
    predicted = (np.asarray(probability_fake) >= threshold).astype(int)
    auc = roc_auc_score(labels, probability_fake) if len(np.unique(labels)) == 2 else math.nan
    return {"accuracy": float(accuracy_score(labels, predicted)), "roc_auc": float(auc)}
