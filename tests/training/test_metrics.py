import math

import pytest

from training.metrics import classification_metrics


def test_accuracy_and_auc():
    metrics = classification_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], threshold=0.5)
    assert metrics == {"accuracy": 0.5, "roc_auc": pytest.approx(0.75)}


def test_auc_is_nan_with_one_class():
    assert math.isnan(classification_metrics([1, 1], [0.2, 0.9], 0.5)["roc_auc"])
