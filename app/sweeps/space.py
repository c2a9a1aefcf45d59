"""A sweep's search space: which config fields it turns and over what, checked against the trainer's own
limits, and turned into Optuna distributions (or a grid) and back into config overrides.

A field is `{"low": a, "high": b}` (`"log": true` for a positive range, `"step": s` for a stepped one;
integer fields give integers) or `{"choices": [...]}`. A grid sweep takes choices and stepped ranges.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from app.errors import InputError
from trainer import ConfigError, TrainConfig, from_dict
from trainer.config import DataSpec

MAX_FIELDS, MAX_CHOICES, MAX_GRID_POINTS = 20, 64, 1000
# a sweep never turns these: the device is the workers' machine, and a config never names a file
REFUSED = {"device": "the device is the workers' own", "data": "name data fields one by one (data.imbalance)"}
REFUSED |= dict.fromkeys(("data.kind", "data.path", "data.label_column"), "a sweep trains on the built-in data")
_RANGE_KEYS, _CHOICE_KEYS = {"low", "high", "log", "step"}, {"choices"}
Scalar = bool | int | float | str | None
if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


def field_types() -> dict[str, str]:
    """Every config field a sweep may name ("lr", "data.imbalance") with its declared type."""
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig) if f.name != "data"}
    types |= {f"data.{f.name}": str(f.type) for f in dataclasses.fields(DataSpec)}
    return {name: kind for name, kind in types.items() if name not in REFUSED}


def overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's flat params ("data.imbalance": 2.0) as a config's nested overrides."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        head, _, tail = name.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[name] = value
    return out


def config_value(config: dict[str, Any], name: str) -> Any:
    head, _, tail = name.partition(".")
    return (config.get(head) or {}).get(tail) if tail else config.get(name)


def validate_space(space: dict[str, Any], base: TrainConfig, sampler: str) -> dict[str, dict[str, Any]]:
    """The normalized space, or InputError (422) naming the field: unknown, refused, a range outside the
    field's own limits, `log` of a range that is not positive, empty or invalid choices."""
    loc: list[str | int] = ["body", "search_space"]
    if not space:
        raise InputError.at(loc, "name at least one config field to search over")
    if len(space) > MAX_FIELDS:
        raise InputError.at(loc, f"at most {MAX_FIELDS} fields, got {len(space)}")
    known = field_types()
    out = {}
    for name, spec in space.items():
        here = [*loc, name]
        if name in REFUSED:
            raise InputError.at(here, f"a sweep cannot turn {name!r}: {REFUSED[name]}")
        if name not in known:
            raise InputError.at(here, f"unknown config field {name!r}; known fields: {', '.join(sorted(known))}")
        if not isinstance(spec, dict):
            raise InputError.at(here, 'must be {"low": .., "high": ..} or {"choices": [..]}')
        if set(spec) <= _CHOICE_KEYS and spec:
            out[name] = {"choices": _choices(here, name, spec["choices"], base)}
        elif {"low", "high"} <= set(spec) <= _RANGE_KEYS:
            out[name] = _range(here, name, spec, known[name], base)
        else:
            raise InputError.at(here, 'must be {"low": .., "high": .., "log"?: .., "step"?: ..} or {"choices": [..]}')
        if sampler == "grid" and "choices" not in out[name] and out[name].get("step") is None:
            raise InputError.at(here, 'a grid sweep needs choices, or a range with a "step"')
    if sampler == "grid" and grid_size(out) > MAX_GRID_POINTS:
        raise InputError.at(loc, f"the grid has {grid_size(out)} points: at most {MAX_GRID_POINTS}")
    return out


def _check_value(loc: list[str | int], name: str, value: Any, base: TrainConfig) -> None:
    """The trainer's own validation of `name = value` on the base config (its limits, its message)."""
    try:
        from_dict(overrides({name: value}), base=base)
    except ConfigError as exc:
        raise InputError.at(loc, "; ".join(message for _, message in exc.errors), "value_error.config") from exc


def _choices(loc: list[str | int], name: str, choices: Any, base: TrainConfig) -> list[Scalar]:
    if not isinstance(choices, list) or not choices:
        raise InputError.at([*loc, "choices"], "must be a non-empty list of values")
    if len(choices) > MAX_CHOICES:
        raise InputError.at([*loc, "choices"], f"at most {MAX_CHOICES} choices, got {len(choices)}")
    for i, value in enumerate(choices):
        if not isinstance(value, Scalar):  # Optuna's categorical choices are scalars
            raise InputError.at([*loc, "choices", i], f"a choice is a number, a string, true/false or null: {value!r}")
        _check_value([*loc, "choices", i], name, value, base)
    if len({repr(v) for v in choices}) != len(choices):
        raise InputError.at([*loc, "choices"], f"choices must differ from each other: {choices!r}")
    return list(choices)


def _range(loc: list[str | int], name: str, spec: dict[str, Any], kind: str, base: TrainConfig) -> dict[str, Any]:
    if kind not in ("int", "float", "float | None"):
        raise InputError.at(loc, f"{name!r} is not a number ({kind}): give choices instead of a range")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for key, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InputError.at([*loc, key], f"must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError.at([*loc, key], f"must be finite, got {value!r}")
    if not isinstance(log, bool):
        raise InputError.at([*loc, "log"], f"must be true or false, got {log!r}")
    if not low < high:
        raise InputError.at(loc, f"low must be below high, got low={low!r}, high={high!r}")
    if log and low <= 0:
        raise InputError.at([*loc, "log"], f"a log scale needs a positive range, got low={low!r}")
    _check_value([*loc, "low"], name, low, base)
    _check_value([*loc, "high"], name, high, base)
    if step is not None:
        if log:
            raise InputError.at([*loc, "step"], "a range is either on a log scale or stepped, not both")
        if not 0 < step <= high - low:
            raise InputError.at([*loc, "step"], f"must be in (0, high - low = {high - low!r}], got {step!r}")
    integer = kind == "int"
    if integer and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise InputError.at(loc, f"{name!r} is an integer: low, high and step must be integers")
    cast = int if integer else float
    step = None if step is None else cast(step)
    return {"low": cast(low), "high": cast(high), "log": log, "step": step, "int": integer}


def _grid_values(spec: dict[str, Any]) -> list[Scalar]:
    if "choices" in spec:
        return list(spec["choices"])
    low, high, step = spec["low"], spec["high"], spec["step"]
    count = math.floor((high - low) / step + 1e-9) + 1
    values = [low + i * step for i in range(min(count, MAX_GRID_POINTS + 1))]
    return [int(v) for v in values] if spec["int"] else [round(v, 12) for v in values]


def grid_size(space: dict[str, dict[str, Any]]) -> int:
    return math.prod(len(_grid_values(spec)) for spec in space.values())


def grid(space: dict[str, dict[str, Any]]) -> dict[str, list[Scalar]]:
    """The grid sampler's search space: every field's values."""
    return {name: _grid_values(spec) for name, spec in space.items()}


def distributions(space: dict[str, dict[str, Any]], sampler: str) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each field (a grid sweep's are the grid's values)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # the driver's

    if sampler == "grid":
        return {name: CategoricalDistribution(values) for name, values in grid(space).items()}
    out: dict[str, BaseDistribution] = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = CategoricalDistribution(spec["choices"])
        elif spec["int"]:
            out[name] = IntDistribution(spec["low"], spec["high"], log=spec["log"], step=spec["step"] or 1)
        else:
            out[name] = FloatDistribution(spec["low"], spec["high"], log=spec["log"], step=spec["step"])
    return out
