import json
import math
from pathlib import Path

import numpy as np

from training.jsonsafe import json_safe, write_json


def test_non_finite_numbers_become_null_and_numpy_becomes_python(tmp_path):
    value = {"auc": math.nan, "inf": -math.inf, "n": np.int64(3), "p": np.float32(0.5), "cm": np.array([[1, 2]]),
             "path": Path("a/b"), "nested": ({"x": np.nan},)}
    assert json_safe(value) == {"auc": None, "inf": None, "n": 3, "p": 0.5, "cm": [[1, 2]], "path": "a/b",
                                "nested": [{"x": None}]}
    write_json(tmp_path / "out.json", value)
    assert json.loads((tmp_path / "out.json").read_text())["auc"] is None  # strict JSON: no bare NaN token
