"""Non-finite numbers across JSON: stored as "NaN"/"Infinity"/"-Infinity" strings, served as null."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

NONFINITE_NAMES = ("NaN", "Infinity", "-Infinity")


def nonfinite_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def to_json_safe(value: Any) -> Any:
    """Recursively turn numpy scalars into Python ones and non-finite floats into their names."""
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_name(value)
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    return value


def finite_or_none(value: Any) -> float | None:
    if value is None or value in NONFINITE_NAMES:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def split_nonfinite(values: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, str]]:
    """Stored metrics -> (numbers with null for non-finite ones, {name: "NaN"|...} for those)."""
    numbers: dict[str, float | None] = {}
    named: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, str) and value in NONFINITE_NAMES:
            named[key] = value
        elif isinstance(value, float) and not math.isfinite(value):
            named[key] = nonfinite_name(value)
        numbers[key] = finite_or_none(value) if not isinstance(value, str) or value in NONFINITE_NAMES else None
    return numbers, named
