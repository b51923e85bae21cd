"""95 % intervals for the evaluation's figures: one number from 60 test people is a draw, not a fact.

Rates at the served threshold (false- and true-positive rates) are binomial proportions, so they get a
Wilson score interval (scipy), which stays inside [0, 1] and is honest at 0 of 62. Figures without a
closed form (ROC AUC, ECE) get a percentile bootstrap that resamples reals and fakes separately, so
every resample keeps the class balance the figure was measured at.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of successes/trials; None when there are no trials."""
    if trials <= 0:
        return None
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def bootstrap_interval(
    labels: np.ndarray,
    scores: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Percentile bootstrap of statistic(labels, scores), resampling each class on its own.

    Args:
        labels: 0/1 per item (1 = fake).
        scores: the model's probability of fake per item.
        statistic: e.g. sklearn's roc_auc_score.
        resamples: bootstrap draws; 1000 gives the interval's ends to about ±0.005 AUC.
        seed: fixes the draws, so a report is reproducible.
        confidence: two-sided coverage.

    Returns:
        (low, high), or None when a class is missing (the statistic is undefined).

    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    reals, fakes = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if len(reals) == 0 or len(fakes) == 0:
        return None
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for draw in range(resamples):
        chosen = np.concatenate([rng.choice(reals, len(reals)), rng.choice(fakes, len(fakes))])
        values[draw] = statistic(labels[chosen], scores[chosen])
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def auc_interval(labels: np.ndarray, scores: np.ndarray, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap 95 % interval of ROC AUC."""
    return bootstrap_interval(labels, scores, roc_auc_score, seed=seed)


def rate_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, tuple[float, float] | None]:
    """Wilson intervals of the false- and true-positive rates at `threshold` (fake when score >= threshold)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    called_fake = scores >= threshold
    reals, fakes = labels == 0, labels == 1
    return {
        "fpr_at_threshold": wilson_interval(int(np.sum(called_fake & reals)), int(np.sum(reals))),
        "tpr_at_threshold": wilson_interval(int(np.sum(called_fake & fakes)), int(np.sum(fakes))),
    }
