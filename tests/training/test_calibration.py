import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from handler.calibration import Calibration, softmax
from training.calibration import (
    CALIBRATORS,
    DEFAULT_CALIBRATOR,
    fit_calibration,
    temperature_nll,
)
from training.metrics import expected_calibration_error

SAMPLES = 4000


def _miscalibrated(scale: float, seed: int = 0, fake_index: int = 1):
    """Logits of a model whose margin is `scale` × an honest one, split into fit and held-out halves.

    Labels are drawn from sigmoid(honest margin), so the honest margin is perfectly calibrated by
    construction; scale 5 is over-confident, 0.2 under-confident, and both rank equally well.
    """
    rng = np.random.default_rng(seed)
    honest_margin = rng.normal(0.0, 3.0, SAMPLES)
    labels = (rng.random(SAMPLES) < 1 / (1 + np.exp(-honest_margin))).astype(int)
    logits = np.zeros((SAMPLES, 2))
    logits[:, fake_index] = scale * honest_margin / 2
    logits[:, 1 - fake_index] = -scale * honest_margin / 2
    half = SAMPLES // 2
    return (logits[:half], labels[:half]), (logits[half:], labels[half:])


def _held_out_ece(calibration: Calibration, logits, labels, fake_index: int = 1) -> float:
    return expected_calibration_error(labels, calibration.probabilities(logits, fake_index)[:, fake_index])


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
@pytest.mark.parametrize("scale", [5.0, 0.2], ids=["over-confident", "under-confident"])
def test_calibration_reduces_held_out_ece(method, scale):
    (fit_logits, fit_labels), (held_logits, held_labels) = _miscalibrated(scale)
    before = _held_out_ece(Calibration.none(), held_logits, held_labels)
    after = _held_out_ece(fit_calibration(fit_logits, fit_labels, method), held_logits, held_labels)
    assert before > 0.1
    assert after < 0.04  # sampling noise of 2000 held-out examples is ~0.02
    assert after < before / 3


@pytest.mark.parametrize(("scale", "low", "high"), [(5.0, 4.0, 6.0), (0.2, 0.16, 0.24)])
@pytest.mark.parametrize("fake_index", [0, 1])
def test_fitted_temperature_undoes_the_scale(scale, low, high, fake_index):
    (logits, labels), _ = _miscalibrated(scale, fake_index=fake_index)
    calibration = fit_calibration(logits, labels, "temperature", fake_index=fake_index)
    assert calibration.method == "temperature"
    assert low < calibration.temperature < high  # > 1 softens the over-confident, < 1 sharpens the under-confident


def test_fitted_temperature_minimises_nll():
    (logits, labels), _ = _miscalibrated(5.0)
    temperature = fit_calibration(logits, labels).temperature
    best = temperature_nll(logits, labels, temperature)
    assert best < temperature_nll(logits, labels, 1.0)
    assert best < temperature_nll(logits, labels, temperature * 1.02)
    assert best < temperature_nll(logits, labels, temperature / 1.02)


def test_temperature_keeps_the_ranking():
    (fit_logits, fit_labels), (held_logits, held_labels) = _miscalibrated(5.0)
    calibration = fit_calibration(fit_logits, fit_labels, "temperature")
    margin_auc = roc_auc_score(held_labels, held_logits[:, 1] - held_logits[:, 0])
    calibrated_auc = roc_auc_score(held_labels, calibration.probabilities(held_logits, 1)[:, 1])
    assert calibrated_auc == pytest.approx(margin_auc, abs=1e-12)


def test_isotonic_apply_matches_sklearn_predict():
    (fit_logits, fit_labels), (held_logits, _) = _miscalibrated(5.0)
    calibration = fit_calibration(fit_logits, fit_labels, "isotonic")
    fit_probability = softmax(fit_logits)[:, 1]  # the uncalibrated probability the knots are defined on
    regression = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1, increasing=True)
    regression.fit(fit_probability, fit_labels)
    # Held-out scores plus ones beyond the knots at both ends (clipped by both).
    logits = np.concatenate([held_logits, [[40.0, -40.0], [-40.0, 40.0], [0.0, 0.0]]])
    probability = softmax(logits)[:, 1]
    served = calibration.probabilities(logits, fake_index=1)
    np.testing.assert_allclose(served[:, 1], regression.predict(probability), rtol=0, atol=1e-12)
    np.testing.assert_allclose(served[:, 0], 1 - regression.predict(probability), rtol=0, atol=1e-12)
    assert len(calibration.x) > 2 and calibration.x == tuple(regression.X_thresholds_)


@pytest.mark.parametrize("method", ["temperature", "isotonic", "none"])
def test_fitted_calibration_survives_json(method, tmp_path):
    (logits, labels), (held_logits, _) = _miscalibrated(5.0)
    calibration = fit_calibration(logits, labels, method)
    calibration.save(tmp_path / "calibration.json")
    loaded = Calibration.load(tmp_path / "calibration.json")
    assert loaded == calibration
    np.testing.assert_array_equal(loaded.probabilities(held_logits, 1), calibration.probabilities(held_logits, 1))


@pytest.mark.parametrize("fake_index", [0, 1])
def test_perfectly_separated_data_keep_temperature_one_with_a_warning(fake_index):
    # NLL falls towards 0 as T -> 0 here: a minimiser would serve hard 0/1 probabilities.
    logits = np.array([[2.0, -2.0], [1.0, -1.0], [-1.0, 1.0], [-3.0, 3.0]])
    labels = np.array([0, 0, 1, 1]) if fake_index == 1 else np.array([1, 1, 0, 0])
    assert temperature_nll(logits, labels, 0.1, fake_index) < temperature_nll(logits, labels, 1.0, fake_index)
    with pytest.warns(UserWarning, match="every example correctly"):
        calibration = fit_calibration(logits, labels, "temperature", fake_index=fake_index)
    assert calibration == Calibration(method="temperature", temperature=1.0)


def test_temperature_on_the_search_bound_is_warned_about():
    # Right answers with margin 0.1 and one mistake with margin 2e-6: NLL still falls, measurably, at T = 1/100.
    logits = np.array([[0.05, -0.05]] * 50 + [[-0.05, 0.05]] * 50 + [[1e-6, -1e-6]])
    labels = np.array([0] * 50 + [1] * 50 + [1])
    with pytest.warns(UserWarning, match="lower search bound"):
        calibration = fit_calibration(logits, labels, "temperature")
    assert calibration.temperature == pytest.approx(0.01, rel=1e-2)


def test_uninformative_logits_flatten_to_the_upper_bound_with_a_warning():
    # Each score is right for one image and wrong for another: NLL falls towards log 2 as T -> infinity.
    logits = np.array([[1.0, -1.0], [1.0, -1.0], [-2.0, 2.0], [-2.0, 2.0]])
    labels = np.array([0, 1, 0, 1])
    with pytest.warns(UserWarning, match="upper search bound.*flattened"):
        calibration = fit_calibration(logits, labels, "temperature")
    assert calibration.temperature == pytest.approx(100, rel=1e-2)


def test_registry_and_bad_inputs():
    assert DEFAULT_CALIBRATOR == "temperature"
    assert set(CALIBRATORS) == {"temperature", "isotonic", "none"}
    assert all(isinstance(calibrator[-1], str) and calibrator[-1] for calibrator in CALIBRATORS.values())
    (logits, labels), _ = _miscalibrated(5.0)
    assert fit_calibration(logits, labels, "none") == Calibration.none()
    with pytest.raises(ValueError, match="unknown calibration method 'platt'.*isotonic"):
        fit_calibration(logits, labels, "platt")
    with pytest.raises(ValueError, match="labels must have shape"):
        fit_calibration(logits, labels[:-1])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        fit_calibration(logits[:, :1], labels)
    with pytest.raises(ValueError, match="labels must be 0"):
        fit_calibration(logits, labels * 2)


def test_class_weight_shift_is_removed_before_the_temperature_is_fitted():
    # A model trained with weights (1, 5) is calibrated in scale but shifted by log 5 towards fake.
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=4000)
    margin = rng.normal(loc=np.where(labels == 1, 1.5, -1.5), scale=1.5)
    true_probability = 1.0 / (1.0 + np.exp(-margin))
    labels = (rng.random(4000) < true_probability).astype(int)  # labels drawn from the model's own probabilities
    shift = np.log(5.0)
    logits = np.stack([np.zeros_like(margin), margin + shift], axis=1)
    fit, held_out = slice(0, 2000), slice(2000, 4000)

    plain = fit_calibration(logits[fit], labels[fit], "temperature")
    unshifted = fit_calibration(logits[fit], labels[fit], "temperature", fake_logit_offset=shift)
    assert unshifted.fake_logit_offset == pytest.approx(shift) and unshifted.temperature == pytest.approx(1, abs=0.15)

    def ece(calibration):
        return expected_calibration_error(labels[held_out], calibration.probabilities(logits[held_out], 1)[:, 1])

    assert ece(unshifted) < 0.05 and ece(unshifted) < 0.5 * ece(plain)  # a temperature alone cannot undo a shift
    assert Calibration.from_dict(unshifted.to_dict()) == unshifted
