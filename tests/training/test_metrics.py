import json
import math
import warnings

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import f1_score

from training.metrics import (
    DEFAULT_THRESHOLD_RULE,
    THRESHOLD_RULES,
    choose_threshold,
    classification_metrics,
    confusion_counts,
    equal_error_rate,
    expected_calibration_error,
)

# Scores ranked fake, real, fake, real: one mistake each way.
LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.6, 0.4, 0.9]


def test_metrics_of_a_hand_checked_example():
    metrics = classification_metrics(LABELS, SCORES, threshold=0.5)
    assert metrics == {
        "loss": pytest.approx(-(math.log(0.9) + math.log(0.4)) / 2),
        "roc_auc": pytest.approx(0.75),  # 3 of the 4 (fake, real) pairs ordered right
        "average_precision": pytest.approx(0.5 * 1 + 0.5 * 2 / 3),
        "eer": pytest.approx(0.5),
        "ece": pytest.approx((0.1 + 0.6 + 0.6 + 0.1) / 4),  # each score alone in its bin
        "accuracy": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "confusion_matrix": [[1, 1], [1, 1]],
    }


def test_metrics_are_plain_json_values():
    metrics = classification_metrics(np.array(LABELS), np.array(SCORES, dtype=np.float32), 0.5)
    confusion = metrics.pop("confusion_matrix")
    assert all(type(value) is float for value in metrics.values())
    assert all(type(count) is int for row in confusion for count in row)
    metrics["confusion_matrix"] = confusion
    assert json.loads(json.dumps(metrics)) == metrics


def test_perfect_and_inverted_classifiers():
    labels, scores = [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]
    perfect = classification_metrics(labels, scores, 0.5)
    assert (perfect["roc_auc"], perfect["average_precision"], perfect["eer"], perfect["accuracy"]) == (1, 1, 0, 1)
    inverted = classification_metrics(labels, scores[::-1], 0.5)
    assert (inverted["roc_auc"], inverted["eer"], inverted["accuracy"]) == (0, 1, 0)


def test_eer_is_interpolated_between_roc_points():
    # ROC points (0,0) (0,.5) (.5,1) (1,1): FPR = FNR = .25 halfway along the tied-score segment.
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.25)
    # All scores tied: the diagonal, crossing at .5.
    assert equal_error_rate([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_one_class_gives_nan_not_an_exception_or_warning(labels):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = classification_metrics(labels, [0.2, 0.7, 0.9], 0.5)
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["average_precision"]) and math.isnan(metrics["eer"])
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["ece"]) and math.isfinite(metrics["f1"])
    assert metrics["accuracy"] == pytest.approx(2 / 3 if labels[0] == 1 else 1 / 3)


def test_confusion_counts_are_tn_fp_fn_tp_ints():
    confusion = confusion_counts([0, 0, 0, 1, 1], [0.1, 0.7, 0.2, 0.8, 0.3], threshold=0.5)
    assert confusion == [[2, 1], [1, 1]]
    assert classification_metrics([0, 0, 0, 1, 1], [0.1, 0.7, 0.2, 0.8, 0.3], 0.5)["confusion_matrix"] == confusion
    assert all(type(count) is int for row in confusion for count in row)
    assert confusion_counts([0, 1], [0.5, 0.5], threshold=0.5) == [[0, 1], [0, 1]]  # p >= threshold is fake
    assert confusion_counts([1, 1], [0.9, 0.1], 0.5) == [[0, 0], [1, 1]]  # an absent class still gets its row


def test_ece_of_calibrated_and_over_confident_probabilities():
    rng = np.random.default_rng(0)
    honest = rng.random(20_000)
    labels = (rng.random(honest.size) < honest).astype(int)
    assert expected_calibration_error(labels, honest) < 0.03  # sampling error only (~0.01 expected)
    over_confident = 1 / (1 + np.exp(-5 * np.log(honest / (1 - honest))))
    assert expected_calibration_error(labels, over_confident) > 0.1


def test_ece_agrees_with_sklearn_calibration_curve():
    rng = np.random.default_rng(1)
    probability = rng.random(500) ** 2
    labels = (rng.random(500) < 0.3 + 0.4 * probability).astype(int)
    fraction_fake, mean_probability = calibration_curve(labels, probability, n_bins=15, strategy="uniform")
    counts, _ = np.histogram(probability, bins=np.linspace(0, 1, 16))  # no score sits exactly on an edge
    expected = np.sum(counts[counts > 0] * np.abs(fraction_fake - mean_probability)) / len(labels)
    assert expected_calibration_error(labels, probability, bins=15) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("labels", "scores", "match"), [
    ([0, 1], [0.5], "equal length"),
    ([0, 2], [0.5, 0.5], "labels must be 0"),
    ([0, 1], [0.5, 1.5], r"\[0, 1\]"),
    ([0, 1], [0.5, math.nan], r"\[0, 1\]"),
    ([], [], "empty"),
])
def test_bad_inputs_are_refused_with_a_reason(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(labels, scores, 0.5)


# --- threshold choice ------------------------------------------------------------------------------------------

# Scores descending: fake, real, real, real, fake, then five reals. Youden prefers catching both fakes
# (TPR 1, FPR 3/8: J = .625) to catching one cleanly (J = .5); F1 prefers the clean one (2/3 vs 4/7).
RULE_LABELS = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0]
RULE_SCORES = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]


def _rates(labels, scores, threshold):
    labels, predicted = np.asarray(labels), np.asarray(scores) >= threshold
    return predicted[labels == 1].mean(), predicted[labels == 0].mean()


def test_youden_rule_on_a_hand_checked_example():
    threshold = choose_threshold(RULE_LABELS, RULE_SCORES, "youden")
    assert threshold == 0.6
    assert _rates(RULE_LABELS, RULE_SCORES, threshold) == (1.0, 3 / 8)


def test_f1_rule_on_a_hand_checked_example():
    threshold = choose_threshold(RULE_LABELS, RULE_SCORES, "f1")
    assert threshold == 0.95
    assert _rates(RULE_LABELS, RULE_SCORES, threshold) == (0.5, 0.0)


def test_fixed_rule_ignores_the_data_even_with_one_class():
    assert choose_threshold(RULE_LABELS, RULE_SCORES, "fixed", fixed=0.37) == 0.37
    assert choose_threshold([1, 1], [0.2, 0.3], "fixed") == 0.5
    with pytest.raises(ValueError, match="fixed threshold"):
        choose_threshold(RULE_LABELS, RULE_SCORES, "fixed", fixed=1.5)


def test_ties_go_to_the_lowest_threshold():
    # Operating points at .9 (TPR 1/2, FPR 1/3) and .5 (TPR 1, FPR 5/6) have equal J = 1/6, the maximum, but
    # floating point gets 0.16666666666666669 and 0.16666666666666663: only exact arithmetic sees the tie.
    labels = [1, 0, 0, 1, 0, 0, 0, 0]
    scores = [0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5, 0.1]
    assert choose_threshold(labels, scores, "youden") == 0.5
    # F1 is 2/3 at .9 and 4/6 at .4: a tie, resolved downwards.
    assert choose_threshold([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], [0.9, 0.8, 0.7, 0.4, 0.3, 0.3, 0.2, 0.2, 0.1, 0.1],
                            "f1") == 0.4


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rule", ["youden", "f1"])
def test_threshold_reproduces_the_best_operating_point(rule, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(np.clip(0.5 + 0.25 * (labels - 0.5) + 0.25 * rng.normal(size=60), 0, 1), 2)  # ties, 0 and 1

    def score_at(threshold):
        if rule == "f1":
            return f1_score(labels, scores >= threshold, zero_division=0)
        true_positive_rate, false_positive_rate = _rates(labels, scores, threshold)
        return true_positive_rate - false_positive_rate

    candidates = np.unique(scores)  # every distinct operating point p >= t can reach
    achieved = np.array([score_at(t) for t in candidates])
    threshold = choose_threshold(labels, scores, rule)
    assert 0.0 <= threshold <= 1.0 and threshold in candidates
    assert score_at(threshold) == pytest.approx(achieved.max(), abs=1e-12)
    assert threshold == candidates[np.isclose(achieved, achieved.max(), rtol=0, atol=1e-12)].min()


@pytest.mark.parametrize("rule", ["youden", "f1"])
def test_data_driven_rules_refuse_one_class(rule):
    with pytest.raises(ValueError, match="both real and fake.*'fixed'"):
        choose_threshold([0, 0, 0], [0.1, 0.5, 0.9], rule)


def test_rule_registry():
    assert DEFAULT_THRESHOLD_RULE == "youden"
    assert set(THRESHOLD_RULES) == {"youden", "f1", "fixed", "fpr_2pct", "fpr_5pct"}
    assert all(isinstance(rule[-1], str) and rule[-1] for rule in THRESHOLD_RULES.values())  # --help lists entry[-1]
    with pytest.raises(ValueError, match="unknown threshold rule 'best'.*youden"):
        choose_threshold(RULE_LABELS, RULE_SCORES, "best")


def test_low_fpr_rule_keeps_validation_reals_real_at_the_cost_of_recall():
    reals = np.linspace(0.0, 0.5, 50)  # 50 reals; the two highest at 0.49 and 0.5
    fakes = np.array([0.3, 0.45, 0.6, 0.7, 0.8])
    labels = np.r_[np.zeros(50), np.ones(5)]
    scores = np.r_[reals, fakes]
    threshold = choose_threshold(labels, scores, "fpr_2pct")
    called = scores >= threshold
    assert called[labels == 0].sum() <= 1  # at most 2 % of 50 reals
    assert threshold == pytest.approx(0.5)  # the lowest such threshold: one real (0.5) and three fakes
    assert choose_threshold(labels, scores, "fpr_5pct") < threshold  # a looser bound buys recall
    assert choose_threshold(labels, scores, "youden") < threshold


def test_low_fpr_rule_when_a_real_scores_highest_calls_nothing_below_it():
    labels, scores = np.array([0, 1, 0]), np.array([0.9, 0.5, 0.1])
    threshold = choose_threshold(labels, scores, "fpr_2pct")
    assert threshold > 0.9 and not (scores >= threshold).any()
