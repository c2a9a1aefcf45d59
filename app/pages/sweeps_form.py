"""The new-sweep form: its template context, and turning a submitted form into a queued sweep.

The form is only read here (numbers, lists of choices, the base config as TOML or JSON); every rule about
what a sweep may search, and how, is the API's own (SweepCreate and app/storage/sweeps.create_sweep), whose
errors are mapped back to the input they belong to.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any, get_args

from pydantic import ValidationError
from sqlmodel import Session

from app.budgets import Limits
from app.errors import InputError
from app.pages.config_fields import ALL_FIELDS
from app.pages.sweeps_view import OBJECTIVE_LABELS
from app.storage import sweeps
from app.storage.sweep_models import DEFAULT_TRIALS, MAX_PARALLELISM, MAX_SWEEP_TRIALS, OBJECTIVES, SweepCreate
from app.sweeps.space import field_types
from trainer import PRESET_DESCRIPTIONS, preset_names

# a row's kind -> what the API is sent: {"low", "high"} plus "log": true, or a "step"; or {"choices"}
KINDS = {"range": "range", "log": "log range", "step": "stepped range", "choices": "choices"}
ROW_PARTS = ("field", "kind", "low", "high", "step", "choices")
SAMPLERS = get_args(SweepCreate.model_fields["sampler"].annotation)
_LABELS = {f.name: f.label for f in ALL_FIELDS}
_TOP_FIELDS = ("name", "preset", "config", "sampler", "n_trials", "parallelism", "objective", "seed")


@dataclass
class SpaceRow:
    """One row of the search-space editor, as typed, with its errors by part ("row" for the whole row)."""

    field: str = ""
    kind: str = "range"
    low: str = ""
    high: str = ""
    step: str = ""
    choices: str = ""
    errors: dict[str, list[str]] = default(default_factory=dict)

    def blank(self) -> bool:
        return not (self.field or self.low or self.high or self.step or self.choices)

    def add_error(self, part: str, message: str) -> None:
        self.errors.setdefault(part, []).append(message)


def knob_choices() -> list[tuple[str, str, str]]:
    """(field, label, type) of every config field a sweep may search, as the editor's field list offers them."""
    return [(name, _LABELS.get(name, name), kind) for name, kind in field_types().items()]


def sweep_form_context(**fields: Any) -> dict[str, Any]:
    defaults = SweepCreate.model_fields
    context: dict[str, Any] = {
        "presets": [{"name": n, "description": PRESET_DESCRIPTIONS.get(n, "")} for n in preset_names()],
        "preset": defaults["preset"].default,
        "name": "",
        "config_text": "",
        "rows": [SpaceRow(field="lr", kind="log", low="0.001", high="0.3")],
        "knobs": knob_choices(),
        "kinds": KINDS,
        "samplers": SAMPLERS,
        "sampler": defaults["sampler"].default,
        "objectives": [(key, OBJECTIVE_LABELS[key], direction) for key, (_, direction) in OBJECTIVES.items()],
        "objective": defaults["objective"].default,
        "n_trials": "",
        "parallelism": str(defaults["parallelism"].default),
        "seed": str(defaults["seed"].default),
        "limits": {"trials": MAX_SWEEP_TRIALS, "parallelism": MAX_PARALLELISM, "default_trials": DEFAULT_TRIALS},
        "errors": {},
        "general_errors": [],
        "empty_row": SpaceRow(),  # the markup of a row the page's script adds
    }
    context.update(fields)
    context["rows"] = [*context["rows"], SpaceRow()]  # one empty row to fill (the page's script adds more)
    return context


# --- reading the form -------------------------------------------------------------------------------------
def _number(text: str) -> int | float:
    """ "3" -> 3 (an integer field gets an integer), "0.3" and "1e-3" -> floats; ValueError otherwise."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _choice(text: str) -> Any:
    """A choice as typed: a number, true/false, null or a quoted string as JSON reads it; else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float | str) or value is None else text


def read_rows(form: dict[str, list[str]]) -> list[SpaceRow]:
    columns = {part: form.get(f"space_{part}", []) for part in ROW_PARTS}
    count = max(len(values) for values in columns.values())
    return [
        SpaceRow(**{part: (values[i].strip() if i < len(values) else "") for part, values in columns.items()})
        for i in range(count)
    ]


def _spec(row: SpaceRow) -> dict[str, Any] | None:
    """The API's spec of one row, or None with the row's errors set."""
    if row.kind == "choices":
        return {"choices": [_choice(part.strip()) for part in row.choices.split(",") if part.strip()]}
    if row.kind not in KINDS:
        row.add_error("kind", f"must be one of {', '.join(KINDS)}, got {row.kind!r}")
        return None
    spec: dict[str, Any] = {}
    needed = ("low", "high", "step") if row.kind == "step" else ("low", "high")
    for part in needed:
        text = getattr(row, part)
        try:
            spec[part] = _number(text)
        except ValueError:
            row.add_error(part, f"must be a number, got {text!r}" if text else f"a {KINDS[row.kind]} needs its {part}")
    if row.kind == "log":
        spec["log"] = True
    return None if row.errors else spec


def space_from_rows(rows: list[SpaceRow]) -> dict[str, dict[str, Any]]:
    """The search space of the rows that name a field (errors stay on the rows)."""
    space: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.blank():
            continue
        if not row.field:
            row.add_error("field", "pick the config field this row searches")
            continue
        if row.field in space:
            first = next(j for j, r in enumerate(rows) if r.field == row.field) + 1
            row.add_error("field", f"{row.field} is already searched in row {first}")
            continue
        spec = _spec(row)
        if spec is not None:
            space[row.field] = spec
    return space


def read_config(text: str) -> dict[str, Any]:
    """The base config's overrides, typed as TOML (`epochs = 5`) or JSON (`{"epochs": 5}`); ValueError."""
    if not text.strip():
        return {}
    try:
        values = json.loads(text) if text.lstrip().startswith("{") else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"is neither TOML nor a JSON object: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError("must be a table of config fields (TOML) or a JSON object")
    return values


def _whole(text: str, default: int | None) -> int | None:
    if not text:
        return default
    if not text.lstrip("-").isdigit():
        raise ValueError(f"must be a whole number, got {text!r}")
    return int(text)


# --- from the form to a queued sweep ---------------------------------------------------------------------
def _place(errors: dict[str, list[str]], rows: list[SpaceRow], loc: list[Any], message: str) -> None:
    """Put an API error (loc without "body") beside the input it names."""
    key = str(loc[0]) if loc else ""
    if key == "search_space" and len(loc) > 1:
        row = next((r for r in rows if r.field == loc[1]), None)
        if row is not None:
            part = str(loc[2]) if len(loc) > 2 else "row"
            row.add_error({"log": "kind"}.get(part, part if part in ROW_PARTS else "row"), message)
            return
    if key == "config" and len(loc) > 1:
        message = f"{'.'.join(map(str, loc[1:]))}: {message}"
    errors.setdefault(key if key in (*_TOP_FIELDS, "search_space") else "general", []).append(message)


def _request(first: dict[str, str], rows: list[SpaceRow], errors: dict[str, list[str]]) -> SweepCreate | None:
    """The form as the API's request, or None with the errors set (the form's own and SweepCreate's)."""
    body: dict[str, Any] = {key: first.get(key) or None for key in ("name", "preset", "sampler", "objective")}
    body = {k: v for k, v in body.items() if v is not None}
    try:
        body["config"] = read_config(first.get("config", ""))
    except ValueError as exc:
        errors.setdefault("config", []).append(str(exc))
    defaults = SweepCreate.model_fields
    for key in ("n_trials", "parallelism", "seed"):
        try:
            body[key] = _whole(first.get(key, ""), defaults[key].default)
        except ValueError as exc:
            errors.setdefault(key, []).append(str(exc))
    body["search_space"] = space_from_rows(rows)
    try:
        request = SweepCreate.model_validate({k: v for k, v in body.items() if k not in errors})
    except ValidationError as exc:
        for item in exc.errors():
            _place(errors, rows, list(item["loc"]), str(item["msg"]))
        return None
    return None if errors or any(r.errors for r in rows) else request


def queue_sweep_from_form(
    session: Session, form: dict[str, list[str]], limits: Limits | None = None
) -> tuple[int | None, dict[str, Any]]:
    """Queue the sweep the form describes: (sweep id, {}), or (None, the form's context with every error)."""
    first = {k: (v[-1].strip() if v else "") for k, v in form.items() if not k.startswith("space_")}
    first["config"] = (form.get("config") or [""])[-1]  # as typed: TOML is read line by line
    rows = read_rows(form)
    errors: dict[str, list[str]] = {}
    request = _request(first, rows, errors)
    if request is not None:
        try:  # every rule of the space, the base config, the grid and the budgets: exactly as POST /api/sweeps
            sweep = sweeps.create_sweep(session=session, sweep_in=request, limits=limits)
            return sweep.id, {}
        except InputError as exc:
            for item in exc.errors:
                loc = list(item.get("loc", []))
                _place(errors, rows, loc[1:] if loc[:1] == ["body"] else loc, str(item["msg"]))
    general = errors.pop("general", [])
    # as typed; an empty choice shows its default again
    shown = {key: first.get(key, "") for key in _TOP_FIELDS if first.get(key) or key in ("name", "n_trials", "config")}
    shown["config_text"] = shown.pop("config")
    kept = [r for r in rows if not r.blank()]
    return None, sweep_form_context(**shown, rows=kept, errors=errors, general_errors=general)
