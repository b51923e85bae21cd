"""JSON that every parser accepts: NaN/inf (e.g. ROC AUC of a one-class split) become null."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """Recursively converts numpy scalars/arrays, tuples and Paths, and turns non-finite floats into None."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, value: Any) -> None:
    """Writes strict JSON (allow_nan=False proves nothing non-standard slipped through)."""
    path.write_text(json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")
