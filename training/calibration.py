"""Fitting a probability calibration (handler.calibration.Calibration) on validation logits.

A network trained with cross-entropy ranks well but is usually over-confident; calibration fixes the
probabilities without touching the ranking. It must be fitted on validation data — never the
training split, on which the model is over-confident by construction, and never test data, which
would then no longer measure anything. The caller (training/train.py) guarantees that.

Labels are 1 for fake and 0 for real, as in training/metrics.py; `fake_index` says which logit
column is "fake" in the model's class order.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.isotonic import IsotonicRegression

from handler.calibration import Calibration, softmax

# Searched on log T: [1/100, 100] covers any model worth serving; an optimum on the edge is suspect.
LOG_TEMPERATURE_BOUNDS = (math.log(1e-2), math.log(1e2))


def _validated(logits: np.ndarray, labels: np.ndarray, fake_index: int) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"logits must have shape [N, 2], got {logits.shape}")
    if labels.shape != (len(logits),):
        raise ValueError(f"labels must have shape ({len(logits)},) to match logits, got {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no validation examples to fit a calibration on")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {sorted(set(labels.tolist()))}")
    if not np.isfinite(logits).all():
        raise ValueError("logits must be finite")
    if fake_index not in (0, 1):
        raise ValueError(f"fake_index must be 0 or 1, got {fake_index}")
    return logits, labels.astype(np.int64)


def temperature_nll(logits: np.ndarray, labels: np.ndarray, temperature: float, fake_index: int = 1) -> float:
    """Mean negative log-likelihood of the true class under softmax(logits / temperature)."""
    class_of = np.where(labels == 1, fake_index, 1 - fake_index)
    log_probabilities = log_softmax(logits / temperature, axis=1)
    return float(-log_probabilities[np.arange(len(labels)), class_of].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, fake_index: int = 1) -> Calibration:
    """Temperature scaling (Guo et al., 2017): the single T minimising validation NLL.

    One parameter cannot overfit a validation set of a few hundred images and, dividing both logits
    alike, never changes which image scores higher. The NLL is minimised over log T (so the search
    is symmetric in sharpening and softening) by scipy's bounded Brent method.

    If every validation example is on the right side of the decision boundary, the NLL keeps
    falling as T → 0 and has no minimum: the data say "sharper" but not how much, and minimising
    would serve hard 0/1 probabilities. T = 1 (the model as trained) is returned instead, with a
    warning. An optimum on either search bound is warned about too: at the upper one (T = 100) the
    model barely separates the classes, as after a token amount of training.
    """
    logits, labels = _validated(logits, labels, fake_index)
    class_of = np.where(labels == 1, fake_index, 1 - fake_index)
    true_margin = logits[np.arange(len(labels)), class_of] - logits[np.arange(len(labels)), 1 - class_of]
    if (true_margin > 0).all():
        warnings.warn("validation logits classify every example correctly, so NLL has no minimum in T; keeping "
                      "T = 1 (use more validation data, or method 'isotonic'/'none')", stacklevel=2)
        return Calibration(method="temperature", temperature=1.0)
    result = minimize_scalar(lambda log_t: temperature_nll(logits, labels, math.exp(log_t), fake_index),
                             bounds=LOG_TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-6})
    if not result.success:
        raise RuntimeError(f"temperature fit did not converge: {result.message}")
    lowest, highest = LOG_TEMPERATURE_BOUNDS
    if result.x > highest - 1e-3:
        warnings.warn(f"fitted temperature {math.exp(result.x):.3g} sits on the upper search bound: the validation "
                      f"logits barely separate the classes, so every probability is flattened towards 0.5",
                      stacklevel=2)
    elif result.x < lowest + 1e-3:
        warnings.warn(f"fitted temperature {math.exp(result.x):.3g} sits on the lower search bound: the validation "
                      f"logits do not determine it (too few examples?)", stacklevel=2)
    return Calibration(method="temperature", temperature=float(math.exp(result.x)))


def fit_isotonic(logits: np.ndarray, labels: np.ndarray, fake_index: int = 1) -> Calibration:
    """Isotonic regression of the label on the uncalibrated probability of fake.

    Fits any monotone distortion, not just a global over/under-confidence, but has many degrees of
    freedom, so it wants a larger validation set than temperature scaling. Only the knots
    (X_thresholds_, y_thresholds_) are kept; np.interp over them reproduces
    IsotonicRegression(out_of_bounds="clip").predict, so serving needs no scikit-learn.
    """
    logits, labels = _validated(logits, labels, fake_index)
    probability_fake = softmax(logits)[:, fake_index]
    regression = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True)
    regression.fit(probability_fake, labels.astype(np.float64))
    return Calibration(method="isotonic", x=regression.X_thresholds_, y=regression.y_thresholds_)


def fit_none(logits: np.ndarray, labels: np.ndarray, fake_index: int = 1) -> Calibration:
    """No calibration: serve the plain softmax (the data are only checked)."""
    _validated(logits, labels, fake_index)
    return Calibration.none()


class Calibrator(NamedTuple):
    """A named calibration method; a tuple whose last item is the description, like other registries.

    Attributes:
        fit: (validation logits, labels, fake_index) → Calibration.
        description: one line for `--help`.

    """

    fit: Callable[[np.ndarray, np.ndarray, int], Calibration]
    description: str


CALIBRATORS: dict[str, Calibrator] = {
    "temperature": Calibrator(fit_temperature, "one temperature T minimising validation NLL of softmax(logits / T)"),
    "isotonic": Calibrator(fit_isotonic, "monotone piecewise-linear map of P(fake), isotonic regression on validation"),
    "none": Calibrator(fit_none, "plain softmax, no calibration"),
}
DEFAULT_CALIBRATOR = "temperature"


def fit_calibration(logits: np.ndarray, labels: np.ndarray, method: str = DEFAULT_CALIBRATOR,
                    fake_index: int = 1, fake_logit_offset: float = 0.0) -> Calibration:
    """Fits the named calibration on validation logits.

    Args:
        logits: [N, 2] raw model outputs on the validation split, columns in the model's class order.
        labels: [N] 1 = fake, 0 = real.
        method: a key of CALIBRATORS.
        fake_index: column of "fake" in the logits.
        fake_logit_offset: the known shift of the fake logit, log(w_fake / w_real) for class-weighted
            training; "temperature" removes it before fitting T (isotonic absorbs any monotone shift).

    Raises:
        ValueError: unknown method or malformed inputs.

    """
    if method not in CALIBRATORS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(CALIBRATORS)}")
    if method == "temperature" and fake_logit_offset != 0.0:
        unshifted = np.array(logits, dtype=np.float64)
        unshifted[:, fake_index] -= fake_logit_offset
        fitted = fit_temperature(unshifted, labels, fake_index)
        return dataclasses.replace(fitted, fake_logit_offset=float(fake_logit_offset))
    return CALIBRATORS[method].fit(logits, labels, fake_index)
