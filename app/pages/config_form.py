"""Reading the new-run form into config values, and comparing configs field by field.

The fields themselves (meaning, allowed range) live in app/pages/config_fields.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app.pages.config_fields import ALL_FIELDS, FormField


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"data": {"seed": 1}} -> {"data.seed": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def unflatten(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            out.setdefault(head, {})[rest] = value
        else:
            out[key] = value
    return out


def config_differences(configs: list[Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(field, [value in each config]) for every flattened field whose values are not all equal."""
    flat = [flatten(c) for c in configs]
    names = sorted({k for f in flat for k in f})
    rows = []
    for name in names:
        values = [f.get(name) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((name, values))
    return rows


def display_value(value: Any) -> str:
    """How a config value is written in an input and in the tables (parse_form reads it back)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(display_value(v) for v in value)
    return str(value)


def form_values(config: Mapping[str, Any]) -> dict[str, str | bool]:
    """The form inputs' values for an effective config (booleans stay booleans for checkboxes)."""
    flat = flatten(config)
    return {f.name: flat.get(f.name) if f.kind == "bool" else display_value(flat.get(f.name)) for f in ALL_FIELDS}


def _parse_number(text: str, integer: bool) -> int | float:
    number = float(text)  # ValueError for non-numbers; "1e3" and "10.0" are accepted
    if integer:
        if not number.is_integer():
            raise ValueError
        return int(number)
    return number


def _parse_one(f: FormField, raw: list[str]) -> Any:
    text = raw[-1].strip() if raw else ""
    if f.kind == "bool":
        return "on" in raw
    if f.kind in ("choice", "text"):
        return text
    if f.kind == "optional_float":
        return None if text.lower() in ("", "off", "none") else _parse_number(text, integer=False)
    if f.kind == "class_weights":
        if text.lower() in ("", "none", "uniform"):
            return None
        if text.lower() == "balanced":
            return "balanced"
        return [_parse_number(p, integer=False) for p in text.split(",")]
    if f.kind == "int_list":
        return [_parse_number(p, integer=True) for p in text.split(",")] if text else []
    if not text:
        raise ValueError
    return _parse_number(text, integer=f.kind == "int")


_EXPECTED = {
    "float": "a number",
    "optional_float": "a number or empty",
    "int": "an integer",
    "int_list": "integers separated by commas",
    "class_weights": 'empty, "balanced" or numbers separated by commas',
}


def parse_form(form: Mapping[str, list[str]], skip: Iterable[str] = ()) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Read the config inputs present in `form` (name -> submitted values) into a flat dict.

    An input missing from the form is left out (the preset's value stands); one that cannot be read
    as its type gives an error naming the field. Ranges are left to trainer.from_dict.
    """
    skipped = set(skip)
    values: dict[str, Any] = {}
    errors: list[tuple[str, str]] = []
    for f in ALL_FIELDS:
        if f.name in skipped or f.name not in form:
            continue
        raw = form[f.name]
        try:
            values[f.name] = _parse_one(f, raw)
        except ValueError:
            shown = raw[-1] if raw else ""
            errors.append((f.name, f"must be {_EXPECTED[f.kind]}, got {shown!r}"))
    return values, errors


def overrides_from(values: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The nested overrides that turn the effective config `base` into the form's `values`."""
    flat_base = flatten(base)
    return unflatten({k: v for k, v in values.items() if flat_base.get(k, object()) != v})
