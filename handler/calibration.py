"""Probability calibration as served: a fitted map from logits to honest class probabilities.

training/calibration.py fits it on validation data and writes calibration.json next to the exported
model; the handler loads that file and applies it. Applying needs only numpy, so the file is plain
JSON (never pickle) and this module imports nothing from training/ or scikit-learn.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILENAME = "calibration.json"
SCHEMA_VERSION = 1
METHODS = ("none", "temperature", "isotonic")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; subtracting the row maximum keeps exp() from overflowing."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Calibration:
    """How to turn the model's two logits into calibrated probabilities.

    Attributes:
        method: "none" (plain softmax), "temperature" (softmax(logits / temperature)) or "isotonic"
            (a monotone piecewise-linear map of the uncalibrated probability of fake).
        temperature: > 1 softens an over-confident model, < 1 sharpens an under-confident one;
            must stay 1.0 unless method is "temperature", so no setting is silently ignored.
        fake_logit_offset: subtracted from the fake logit before the temperature (method "temperature"
            only). Class-weighted training (weights w_real, w_fake) shifts that logit by
            log(w_fake / w_real) on purpose; a temperature can scale but never un-shift, so the known
            shift is removed first and only the scale is fitted.
        x: isotonic knots, uncalibrated probability of fake, strictly increasing, in [0, 1].
        y: calibrated probability of fake at each knot, non-decreasing (ranking is kept), in [0, 1].
            Between knots the map is linear; outside them it is clipped to the end values, which is
            exactly `sklearn.isotonic.IsotonicRegression(out_of_bounds="clip").predict`.

    """

    method: str = "none"
    temperature: float = 1.0
    fake_logit_offset: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # Knots may arrive as numpy arrays (from a fit); tuples of plain floats keep the instance hashable,
        # comparable and JSON-ready.
        object.__setattr__(self, "temperature", _number("temperature", self.temperature))
        object.__setattr__(self, "fake_logit_offset", _number("fake_logit_offset", self.fake_logit_offset))
        object.__setattr__(self, "x", _knots("x", self.x))
        object.__setattr__(self, "y", _knots("y", self.y))
        _validate(self)

    @classmethod
    def none(cls) -> Calibration:
        """Identity calibration, for models exported without a calibration.json."""
        return cls(method="none")

    def probabilities(self, logits: np.ndarray, fake_index: int) -> np.ndarray:
        """Calibrated class probabilities [N, 2] (float64, rows sum to 1) from logits [N, 2].

        Args:
            logits: raw model outputs, one row per image, columns in the model's class order.
            fake_index: column of "fake" in that order (from metadata.json).

        """
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise ValueError(f"logits must have shape [N, 2], got {logits.shape}")
        if fake_index not in (0, 1):
            raise ValueError(f"fake_index must be 0 or 1, got {fake_index}")
        if self.method == "temperature":
            shifted = logits.copy()
            shifted[:, fake_index] -= self.fake_logit_offset
            return softmax(shifted / self.temperature)
        probabilities = softmax(logits)
        if self.method == "isotonic":
            fake = np.interp(probabilities[:, fake_index], self.x, self.y)
            probabilities[:, fake_index] = fake
            probabilities[:, 1 - fake_index] = 1.0 - fake
        return probabilities

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form; floats survive json.dumps/loads bit for bit."""
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "temperature": self.temperature,
            "fake_logit_offset": self.fake_logit_offset,
            "x": list(self.x),
            "y": list(self.y),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        """Parses calibration.json's content; a ValueError names the field at fault."""
        if not isinstance(values, dict):
            raise ValueError(f"calibration must be a JSON object, got {type(values).__name__}")
        version = values.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"calibration schema_version {version!r} is not supported (expected {SCHEMA_VERSION}); "
                             f"re-export the model with this version of training/")
        unknown = set(values) - {"schema_version", "method", "temperature", "fake_logit_offset", "x", "y"}
        if unknown:
            raise ValueError(f"calibration has unknown field(s) {sorted(unknown)}")
        return cls(
            method=values.get("method", "none"),
            temperature=values.get("temperature", 1.0),
            fake_logit_offset=values.get("fake_logit_offset", 0.0),
            x=values.get("x", []),
            y=values.get("y", []),
        )

    def save(self, path: Path) -> None:
        """Writes the JSON file."""
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Reads the JSON file."""
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        try:
            return cls.from_dict(values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


def _number(field: str, value: Any) -> float:
    # bool is an int subclass; true/false in a JSON number field is a mistake, not 1/0.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"calibration field {field!r} must be a number, got {value!r}")
    return float(value)


def _knots(field: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"calibration field {field!r} must be a list of numbers, got {type(value).__name__}")
    return tuple(_number(field, item) for item in value)


def _validate(calibration: Calibration) -> None:
    """Refuses any calibration that could not have been fitted, so a damaged file fails at load, not per request."""
    method, temperature, x, y = calibration.method, calibration.temperature, calibration.x, calibration.y
    if method not in METHODS:
        raise ValueError(f"calibration field 'method' must be one of {list(METHODS)}, got {method!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"calibration field 'temperature' must be a finite number > 0, got {temperature!r}")
    if method != "temperature" and temperature != 1.0:
        raise ValueError(f"calibration field 'temperature' must be 1.0 for method {method!r}, got {temperature}")
    offset = calibration.fake_logit_offset
    if not math.isfinite(offset):
        raise ValueError(f"calibration field 'fake_logit_offset' must be finite, got {offset!r}")
    if method != "temperature" and offset != 0.0:
        raise ValueError(f"calibration field 'fake_logit_offset' must be 0 for method {method!r}, got {offset}")
    if method != "isotonic":
        if x or y:
            raise ValueError(f"calibration fields 'x' and 'y' must be empty for method {method!r}")
        return
    if len(x) != len(y):
        raise ValueError(f"calibration fields 'x' and 'y' must have equal lengths, got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError("calibration field 'x' must hold at least one knot for method 'isotonic'")
    for field, knots in (("x", x), ("y", y)):
        values = np.asarray(knots, dtype=np.float64)
        if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
            raise ValueError(f"calibration field {field!r} must hold probabilities in [0, 1]")
    if not (np.diff(x) > 0).all():
        raise ValueError("calibration field 'x' must be strictly increasing")
    if not (np.diff(y) >= 0).all():
        raise ValueError("calibration field 'y' must be non-decreasing (a calibration must not reorder images)")
