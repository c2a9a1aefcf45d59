"""The run form documents every config field with the range trainer.from_dict really enforces."""

from __future__ import annotations

import dataclasses
import re

import pytest

from app.pages.config_fields import ALL_FIELDS, DATASET_FIELDS, FormField
from app.pages.config_form import overrides_from, parse_form
from trainer import ConfigError, DataSpec, TrainConfig, from_dict

_RANGE = re.compile(r"^([\[(])(-?[\d.e]+), ([\d.e]+)([\])])")


def _config_field_names() -> set[str]:
    top = {f.name for f in dataclasses.fields(TrainConfig) if f.name != "data"}
    return top | {f"data.{f.name}" for f in dataclasses.fields(DataSpec)}


def test_every_config_field_has_an_input_or_comes_from_the_dataset_choice() -> None:
    documented = {f.name for f in ALL_FIELDS} | set(DATASET_FIELDS)
    assert documented == _config_field_names()


def _errors_for(name: str, value: float) -> list[str]:
    head, _, tail = name.partition(".")
    values = {"data": {tail: value}} if tail else {head: value}
    if name == "momentum":  # momentum applies to SGD only
        values["optimizer"] = "sgd"
    try:
        from_dict(values, base="fixed")
    except ConfigError as err:
        return [field for field, _ in err.errors]
    return []


@pytest.mark.parametrize("field", [f for f in ALL_FIELDS if _RANGE.match(f.allowed)], ids=lambda f: f.name)
def test_documented_bounds_match_the_validator(field: FormField) -> None:
    left, lo, hi, right = _RANGE.match(field.allowed).groups()
    low, high = float(lo), float(hi)
    if field.kind == "int":
        low, high = int(low), int(high)
    step = 1 if field.kind == "int" else 1e-9 * max(1.0, abs(high))
    # "[" and "]" include the bound, "(" and ")" exclude it
    assert (field.name in _errors_for(field.name, low)) == (left == "(")
    assert (field.name in _errors_for(field.name, high)) == (right == ")")
    assert field.name in _errors_for(field.name, low - max(step, 1e-9))
    assert field.name in _errors_for(field.name, high + step * (1 if field.kind == "int" else 1e3))


def test_parse_form_reads_each_kind_and_names_unreadable_fields() -> None:
    form = {
        "temperature": ["3.5"],
        "epochs": ["4"],
        "max_grad_norm": [""],
        "class_weights": ["1, 2, 3, 4, 1, 1, 1, 1"],
        "hidden_sizes": ["32, 16"],
        "cap_entropy_at_target": ["present", "on"],
        "entropy_penalty": ["linear"],
        "batch_size": ["12.5"],
        "data.n_samples": ["lots"],
    }
    values, errors = parse_form(form)
    assert values["temperature"] == 3.5 and values["epochs"] == 4
    assert values["max_grad_norm"] is None
    assert values["class_weights"] == [1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0]
    assert values["hidden_sizes"] == [32, 16]
    assert values["cap_entropy_at_target"] is True
    assert dict(errors) == {
        "batch_size": "must be an integer, got '12.5'",
        "data.n_samples": "must be an integer, got 'lots'",
    }


def test_overrides_keep_only_what_differs_from_the_base() -> None:
    base = from_dict({}, base="collapse-prone").to_dict()
    same = {"temperature": [str(base["temperature"])], "data.seed": [str(base["data"]["seed"])]}
    values, _ = parse_form({**same, "lr": ["0.037"], "data.n_samples": ["417"]})
    assert overrides_from(values, base) == {"lr": 0.037, "data": {"n_samples": 417}}
