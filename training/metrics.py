"""Validation metrics and threshold choice, in the JSON-friendly shape the training report stores.

Labels are 1 for "fake" (the positive class) and 0 for "real"; scores are the model's probability of
fake. Everything scikit-learn provides comes from scikit-learn, so the numbers mean what its
documentation says; only the equal error rate and the expected calibration error, which it lacks,
are computed here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import NamedTuple

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

ECE_BINS = 15


def _binary_inputs(labels: np.ndarray, probability_fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checks the pair every metric takes, so a bad call fails here with a message instead of deep in sklearn."""
    labels = np.asarray(labels)
    probability_fake = np.asarray(probability_fake, dtype=np.float64)
    if labels.ndim != 1 or probability_fake.ndim != 1 or len(labels) != len(probability_fake):
        raise ValueError(f"labels and probability_fake must be 1-D and of equal length, got shapes "
                         f"{labels.shape} and {probability_fake.shape}")
    if len(labels) == 0:
        raise ValueError("labels is empty: metrics need at least one example")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {sorted(set(labels.tolist()))}")
    if not (np.isfinite(probability_fake).all() and (probability_fake >= 0).all() and (probability_fake <= 1).all()):
        raise ValueError("probability_fake must hold finite probabilities in [0, 1]")
    return labels.astype(np.int64), probability_fake


def _has_both_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def equal_error_rate(labels: np.ndarray, probability_fake: np.ndarray) -> float:
    """The error rate where false positives and false negatives are equally frequent (NaN with one class).

    The ROC curve is a chain of operating points; between two neighbours FPR − FNR changes sign at
    most once, and the EER is read off the straight line joining them (FPR = FNR there). It is the
    customary single-number summary in the deepfake/biometrics literature and, unlike accuracy,
    does not depend on the threshold.
    """
    labels, probability_fake = _binary_inputs(labels, probability_fake)
    if not _has_both_classes(labels):
        return math.nan
    fpr, tpr, _ = roc_curve(labels, probability_fake)
    fnr = 1.0 - tpr
    difference = fpr - fnr  # strictly increasing along the curve: -1 at its start, +1 at its end
    after = int(np.argmax(difference >= 0))
    if difference[after] == 0:
        return float(fpr[after])
    before = after - 1
    share = -difference[before] / (difference[after] - difference[before])
    return float(fpr[before] + share * (fpr[after] - fpr[before]))


def expected_calibration_error(labels: np.ndarray, probability_fake: np.ndarray, bins: int = ECE_BINS) -> float:
    """Binary expected calibration error of the probability of fake, over equal-width bins.

    ECE = Σ_b (n_b / N) · |mean(label in b) − mean(probability_fake in b)|, with bins
    [0, 1/B], (1/B, 2/B], …, ((B−1)/B, 1] (right-closed, the first also holding 0) and empty
    bins contributing nothing. The bins are exactly those of `sklearn.calibration.calibration_curve`
    with strategy="uniform", so the number matches the reliability diagram it is printed on.
    It is computed on the positive class's probability rather than on the top-label confidence
    because the served product reports the probability of fake, and that is what must be honest.
    """
    labels, probability_fake = _binary_inputs(labels, probability_fake)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    bin_of = np.searchsorted(edges[1:-1], probability_fake)  # same assignment as calibration_curve
    count = np.bincount(bin_of, minlength=bins)
    sum_probability = np.bincount(bin_of, weights=probability_fake, minlength=bins)
    sum_label = np.bincount(bin_of, weights=labels, minlength=bins)
    # Σ_b (n_b/N)·|Σy/n_b − Σp/n_b| = Σ_b |Σy − Σp| / N, so empty bins need no special case.
    return float(np.abs(sum_label - sum_probability).sum() / count.sum())


def confusion_counts(labels: np.ndarray, probability_fake: np.ndarray, threshold: float) -> list[list[int]]:
    """[[tn, fp], [fn, tp]] at `probability_fake >= threshold → fake`, as plain ints for JSON."""
    labels, probability_fake = _binary_inputs(labels, probability_fake)
    predicted = (probability_fake >= threshold).astype(np.int64)
    return confusion_matrix(labels, predicted, labels=[0, 1]).tolist()


def classification_metrics(labels: np.ndarray, probability_fake: np.ndarray,
                           threshold: float) -> dict[str, float | list[list[int]]]:
    """Everything the training report keeps for one evaluation pass, JSON-ready.

    Keys: loss (log loss of probability_fake), roc_auc, average_precision, eer, ece (15 bins) —
    threshold-free — and accuracy, precision, recall, f1 of the fake class and confusion_matrix
    ([[tn, fp], [fn, tp]], ints) at `probability_fake >= threshold`. Ranking metrics (roc_auc,
    average_precision, eer) are NaN when only one class is present, because they are undefined there
    and a crash would lose the run; precision/recall/f1 count 0/0 as 0. Every value but
    confusion_matrix is a plain float.
    """
    labels, probability_fake = _binary_inputs(labels, probability_fake)
    predicted = (probability_fake >= threshold).astype(np.int64)
    both = _has_both_classes(labels)
    return {
        "loss": float(log_loss(labels, probability_fake, labels=[0, 1])),
        "roc_auc": float(roc_auc_score(labels, probability_fake)) if both else math.nan,
        "average_precision": float(average_precision_score(labels, probability_fake)) if both else math.nan,
        "eer": equal_error_rate(labels, probability_fake),
        "ece": expected_calibration_error(labels, probability_fake, ECE_BINS),
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision_score(labels, predicted, pos_label=1, zero_division=0)),
        "recall": float(recall_score(labels, predicted, pos_label=1, zero_division=0)),
        "f1": float(f1_score(labels, predicted, pos_label=1, zero_division=0)),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
    }


# --- threshold choice ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OperatingPoints:
    """Every distinct way a threshold can split the data, as exact counts.

    `thresholds[i]` is an observed score (descending); predicting fake for `p >= thresholds[i]`
    yields `true_positives[i]` and `false_positives[i]`. The "nothing is fake" point that
    roc_curve puts first, at threshold +inf, is left out: no threshold in [0, 1] need express it
    once a tie rule prefers lower thresholds, as both rules below do.
    """

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    positives: int
    negatives: int


def _operating_points(labels: np.ndarray, probability_fake: np.ndarray, rule: str) -> _OperatingPoints:
    labels, probability_fake = _binary_inputs(labels, probability_fake)
    if not _has_both_classes(labels):
        raise ValueError(f"threshold rule {rule!r} needs both real and fake examples, but the labels hold only "
                         f"class {int(labels[0])}; use rule 'fixed' or a validation split with both classes")
    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    fpr, tpr, thresholds = roc_curve(labels, probability_fake, drop_intermediate=False)
    # roc_curve divides integer counts by the class sizes; rounding back recovers them exactly, so ties
    # between operating points are decided in integer arithmetic rather than by floating-point noise.
    return _OperatingPoints(
        thresholds=thresholds[1:],
        true_positives=np.rint(tpr[1:] * positives).astype(np.int64),
        false_positives=np.rint(fpr[1:] * negatives).astype(np.int64),
        positives=positives,
        negatives=negatives,
    )


def _lowest_threshold_of_best(points: _OperatingPoints, is_best: np.ndarray) -> float:
    # Thresholds descend, so the last best index is the lowest threshold, i.e. the highest recall.
    return float(points.thresholds[np.flatnonzero(is_best)[-1]])


def youden_threshold(labels: np.ndarray, probability_fake: np.ndarray, fixed: float = 0.5) -> float:
    """Threshold maximising Youden's J = TPR − FPR (`fixed` is ignored).

    Candidates are the observed scores; ties go to the lowest threshold (highest recall), because a
    missed fake costs more than a second look at a real image. J·P·N = TP·N − FP·P is compared in
    integers, so ties are exact.
    """
    points = _operating_points(labels, probability_fake, "youden")
    scaled_j = points.true_positives * points.negatives - points.false_positives * points.positives
    return _lowest_threshold_of_best(points, scaled_j == scaled_j.max())


def f1_threshold(labels: np.ndarray, probability_fake: np.ndarray, fixed: float = 0.5) -> float:
    """Threshold maximising F1 of the fake class (`fixed` is ignored).

    F1 = 2·TP / (TP + FP + P). Candidates are the observed scores; ties go to the lowest threshold
    (highest recall), decided exactly with fractions among the floating-point near-ties.
    """
    points = _operating_points(labels, probability_fake, "f1")
    numerator = 2 * points.true_positives
    denominator = points.true_positives + points.false_positives + points.positives  # > 0: P >= 1
    f1 = numerator / denominator
    near = np.flatnonzero(f1 >= f1.max() - 1e-9)
    exact = [Fraction(int(numerator[i]), int(denominator[i])) for i in near]
    best = max(exact)
    is_best = np.zeros(len(f1), dtype=bool)
    is_best[[i for i, value in zip(near, exact, strict=True) if value == best]] = True
    return _lowest_threshold_of_best(points, is_best)


def low_fpr_threshold(labels: np.ndarray, probability_fake: np.ndarray, fixed: float = 0.5,
                      max_fpr: float = 0.02) -> float:
    """Lowest threshold whose false-positive rate on validation is at most `max_fpr` (`fixed` is ignored).

    Youden's J weighs a real called fake the same as a fake let through. For a user holding a photo of a
    real person the first costs more, and a source the model never saw only adds false positives, so this
    rule spends its recall on keeping reals real: among the observed scores it takes the one with the most
    fakes caught while at most `max_fpr` of the validation reals are called fake.
    """
    points = _operating_points(labels, probability_fake, "low_fpr")
    allowed = points.false_positives <= max_fpr * points.negatives
    if not allowed.any():  # even the highest score is a real: call only what scores above every real fake
        return float(np.nextafter(points.thresholds[0], np.inf))
    return _lowest_threshold_of_best(points, allowed)


def fixed_threshold(labels: np.ndarray, probability_fake: np.ndarray, fixed: float = 0.5) -> float:
    """Returns `fixed` unchanged: the data are not consulted, so it works with one class or none."""
    if not 0.0 <= fixed <= 1.0:
        raise ValueError(f"fixed threshold must be a probability in [0, 1], got {fixed}")
    return float(fixed)


class ThresholdRule(NamedTuple):
    """A named way to pick the operating threshold; a tuple whose last item is the description, like other registries.

    Attributes:
        choose: (labels, probability_fake, fixed) → threshold.
        description: one line for `--help`.

    """

    choose: Callable[[np.ndarray, np.ndarray, float], float]
    description: str


THRESHOLD_RULES: dict[str, ThresholdRule] = {
    "youden": ThresholdRule(youden_threshold, "maximise TPR - FPR on validation (ties: lowest threshold)"),
    "f1": ThresholdRule(f1_threshold, "maximise F1 of the fake class on validation (ties: lowest threshold)"),
    "fixed": ThresholdRule(fixed_threshold, "use the configured threshold as is"),
    "fpr_2pct": ThresholdRule(partial(low_fpr_threshold, max_fpr=0.02),
                              "catch the most fakes while at most 2 % of validation reals are called fake"),
    "fpr_5pct": ThresholdRule(partial(low_fpr_threshold, max_fpr=0.05),
                              "catch the most fakes while at most 5 % of validation reals are called fake"),
}
DEFAULT_THRESHOLD_RULE = "youden"


def choose_threshold(labels: np.ndarray, probability_fake: np.ndarray, rule: str = DEFAULT_THRESHOLD_RULE,
                     fixed: float = 0.5) -> float:
    """Picks the probability of fake at or above which a prediction is "fake".

    The data-driven rules return an observed score, so `probability_fake >= threshold` reproduces
    the chosen operating point on these data exactly. Choose it on validation data, never test.

    Args:
        labels: 1 = fake, 0 = real.
        probability_fake: (calibrated, if calibration is used) probability of fake per example.
        rule: a key of THRESHOLD_RULES.
        fixed: the threshold the "fixed" rule returns.

    Raises:
        ValueError: unknown rule, or a data-driven rule given only one class.

    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; choose one of {sorted(THRESHOLD_RULES)}")
    return THRESHOLD_RULES[rule].choose(labels, probability_fake, fixed)
