from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.intervals import auc_interval, bootstrap_interval, rate_intervals, wilson_interval


def test_wilson_interval_contains_the_rate_and_stays_inside_zero_one():
    low, high = wilson_interval(2, 62)
    assert 0.0 < low < 2 / 62 < high < 0.15
    zero_low, zero_high = wilson_interval(0, 62)
    assert zero_low == pytest.approx(0.0, abs=1e-12) and 0.03 < zero_high < 0.07  # 0 of 62 is not "0 %, surely"
    assert wilson_interval(0, 0) is None


def test_wilson_interval_narrows_with_more_trials():
    small, large = wilson_interval(5, 50), wilson_interval(50, 500)
    assert (large[1] - large[0]) < (small[1] - small[0])


def test_bootstrap_interval_brackets_the_auc_and_is_reproducible():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    scores = np.concatenate([rng.normal(0.3, 0.15, 60), rng.normal(0.6, 0.15, 60)])
    auc = roc_auc_score(labels, scores)
    low, high = auc_interval(labels, scores)
    assert low < auc < high and 0.02 < high - low < 0.25
    assert auc_interval(labels, scores) == (low, high)
    assert auc_interval(labels, scores, seed=1) != (low, high)


def test_bootstrap_keeps_each_class_count():
    labels = np.array([0] * 3 + [1] * 7)
    seen = []
    bootstrap_interval(labels, np.arange(10.0), lambda y, _: seen.append(int(y.sum())) or 0.0, resamples=20)
    assert set(seen) == {7}


def test_one_class_has_no_auc_interval():
    assert auc_interval(np.zeros(5), np.linspace(0, 1, 5)) is None


def test_rate_intervals_count_at_the_threshold():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.7, 0.5, 0.9, 0.4])
    rates = rate_intervals(labels, scores, 0.5)
    assert rates["fpr_at_threshold"] == wilson_interval(2, 4)  # 0.5 counts as fake, as served
    assert rates["tpr_at_threshold"] == wilson_interval(1, 2)
