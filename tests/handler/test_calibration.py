import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from handler.calibration import CALIBRATION_FILENAME, Calibration

REPO_ROOT = Path(__file__).resolve().parents[2]
LOGITS = np.array([[0.3, -1.2], [2.0, 2.0], [-4.0, 5.5], [10.0, -10.0]])


def _torch_softmax(logits, temperature=1.0):
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=1).numpy()


def test_none_is_the_plain_softmax():
    probabilities = Calibration.none().probabilities(LOGITS, fake_index=1)
    np.testing.assert_allclose(probabilities, _torch_softmax(LOGITS), rtol=0, atol=1e-15)
    assert probabilities.dtype == np.float64


def test_softmax_is_stable_for_huge_logits():
    probabilities = Calibration.none().probabilities(np.array([[1000.0, -1000.0], [-1e5, 1e5]]), fake_index=1)
    np.testing.assert_array_equal(probabilities, [[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize("temperature", [0.25, 1.0, 3.0])
def test_temperature_divides_the_logits(temperature):
    calibration = Calibration(method="temperature", temperature=temperature)
    np.testing.assert_allclose(calibration.probabilities(LOGITS, 0), _torch_softmax(LOGITS, temperature),
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("fake_index", [0, 1])
def test_isotonic_interpolates_and_clips_the_probability_of_fake(fake_index):
    calibration = Calibration(method="isotonic", x=(0.2, 0.6, 0.8), y=(0.1, 0.5, 0.9))
    # Logit margins giving P(fake) = 0.4 (halfway between knots), 0.05 and 0.99 (outside: clipped).
    margins = np.log(np.array([0.4, 0.05, 0.99]) / (1 - np.array([0.4, 0.05, 0.99])))
    logits = np.zeros((3, 2))
    logits[:, fake_index] = margins
    probabilities = calibration.probabilities(logits, fake_index)
    np.testing.assert_allclose(probabilities[:, fake_index], [0.3, 0.1, 0.9], rtol=0, atol=1e-12)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-15)


def test_rejects_logits_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        Calibration.none().probabilities(np.zeros((4, 3)), 1)


@pytest.mark.parametrize("calibration", [
    Calibration.none(),
    Calibration(method="temperature", temperature=1 / 3),
    Calibration(method="isotonic", x=(0.0, 0.1 + 0.2, 1 / 3, 1.0), y=(0.0, 1 / 7, 1 / 7, 1.0)),
], ids=["none", "temperature", "isotonic"])
def test_round_trip_through_file_is_exact(calibration, tmp_path):
    path = tmp_path / CALIBRATION_FILENAME
    calibration.save(path)
    assert json.loads(path.read_text())["schema_version"] == 1  # plain JSON text, not a pickle
    loaded = Calibration.load(path)
    assert loaded == calibration
    np.testing.assert_array_equal(loaded.probabilities(LOGITS, 1), calibration.probabilities(LOGITS, 1))


def test_numpy_knots_become_plain_float_tuples():
    calibration = Calibration(method="isotonic", x=np.array([0.1, 0.9]), y=np.array([0.2, 0.7], dtype=np.float32))
    assert calibration.x == (0.1, 0.9) and all(type(value) is float for value in calibration.y)
    assert hash(calibration) == hash(Calibration.from_dict(calibration.to_dict()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        calibration.temperature = 2.0


GOOD_ISOTONIC = {"schema_version": 1, "method": "isotonic", "temperature": 1.0, "x": [0.1, 0.5, 0.9],
                 "y": [0.0, 0.5, 1.0]}


@pytest.mark.parametrize(("change", "field"), [
    ({"schema_version": 2}, "schema_version"),
    ({"method": "platt"}, "'method'"),
    ({"method": "temperature", "x": [], "y": [], "temperature": 0.0}, "'temperature'"),
    ({"method": "temperature", "x": [], "y": [], "temperature": -2.0}, "'temperature'"),
    ({"method": "temperature", "x": [], "y": [], "temperature": math.nan}, "'temperature'"),
    ({"method": "temperature", "x": [], "y": [], "temperature": "2"}, "'temperature'"),
    ({"method": "temperature", "x": [], "y": [], "temperature": True}, "'temperature'"),
    ({"temperature": 2.0}, "'temperature'"),  # a temperature the isotonic method would silently ignore
    ({"x": [0.1, 0.9, 0.5]}, "'x'"),
    ({"x": [0.1, 0.5, 0.5]}, "'x'"),
    ({"x": [0.1, 0.5]}, "'x' and 'y'"),
    ({"x": [], "y": []}, "'x'"),
    ({"x": [-0.1, 0.5, 0.9]}, "'x'"),
    ({"x": "0.1 0.5 0.9"}, "'x'"),
    ({"y": [0.0, 0.6, 0.5]}, "'y'"),
    ({"y": [0.0, 0.5, 1.5]}, "'y'"),
    ({"y": [0.0, None, 1.0]}, "'y'"),
    ({"method": "none"}, "'x' and 'y'"),
    ({"knots": []}, "knots"),
])
def test_invalid_fields_are_named(change, field):
    Calibration.from_dict(GOOD_ISOTONIC)  # the base is valid: each case breaks exactly one thing
    with pytest.raises(ValueError, match=field):
        Calibration.from_dict({**GOOD_ISOTONIC, **change})


def test_load_names_the_file(tmp_path):
    path = tmp_path / CALIBRATION_FILENAME
    path.write_text(json.dumps({**GOOD_ISOTONIC, "method": "platt"}))
    with pytest.raises(ValueError, match=f"{CALIBRATION_FILENAME}.*'method'"):
        Calibration.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{CALIBRATION_FILENAME} is not valid JSON"):
        Calibration.load(path)


def test_serving_module_imports_no_training_libraries():
    # It is packaged into the .mar, whose worker has neither scikit-learn nor scipy nor training/.
    code = ("import sys, handler.calibration; "
            "print(sorted(m for m in ('sklearn', 'scipy', 'matplotlib', 'training') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
