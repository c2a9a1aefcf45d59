"""The new-run form: its template context, and turning a submitted form into a queued run.

The config is validated with trainer.from_dict (and once more by crud.create_run, exactly as for
POST /api/runs); every error is mapped back to the input it belongs to.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlmodel import Session

from app.budgets import Limits
from app.errors import InputError, NotFound
from app.pages.config_fields import ALL_FIELDS, FIELD_GROUPS, SYNTHETIC_FIELDS
from app.pages.config_form import form_values, overrides_from, parse_form, unflatten
from app.storage import crud
from app.storage.models import MAX_DOCTOR_ATTEMPTS, MAX_ID, RunCreate, RunPublic
from trainer import PRESET_DESCRIPTIONS, ConfigError, from_dict, preset, preset_names

_FIELD_NAMES = frozenset(f.name for f in ALL_FIELDS)


def find_run(session: Session, run_id: int) -> RunPublic | None:
    try:
        return crud.run_public(session=session, run=crud.get_run(session=session, run_id=run_id))
    except NotFound:
        return None


def form_context(session: Session, **fields: Any) -> dict[str, Any]:
    presets = [{"name": n, "description": PRESET_DESCRIPTIONS.get(n, "")} for n in preset_names()]
    context = {
        "groups": FIELD_GROUPS,
        "presets": presets,
        "preset_values": {n: form_values(preset(n).to_dict()) for n in preset_names()},
        "datasets": crud.list_datasets(session=session),
        "errors": {},
        "general_errors": [],
        "name": "",
        "data_source": "synthetic",
        "dataset_id": None,
        "parent": None,
        # doctor mode (app/worker/doctor.py): off, with the API's default and largest number of attempts
        "doctor": False,
        "doctor_max_attempts": str(RunCreate.model_fields["doctor_max_attempts"].default),
        "max_doctor_attempts": MAX_DOCTOR_ATTEMPTS,
    }
    context.update(fields)
    return context


def preset_values(name: str) -> dict[str, Any]:
    return form_values(preset(name).to_dict())


def parse_id(text: str | None) -> int | None:
    """A run or dataset id typed into a form field or a URL, or None when it is not one: ASCII digits
    only ("²".isdigit() is true and int("²") raises), and no more than the largest id a table holds."""
    text = (text or "").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_ID)):
        return None
    number = int(text)
    return number if 1 <= number <= MAX_ID else None


def _error_field(loc: list[Any]) -> str:
    """An InputError loc as a form field name: ["body", "config", "data", "seed"] -> "data.seed"."""
    parts = [str(p) for p in loc]
    if parts[:2] == ["body", "config"] and len(parts) > 2:
        return ".".join(parts[2:])
    return parts[-1] if parts else "config"


def _config_errors(
    session: Session, chosen: str, values: dict[str, Any], data_source: str, dataset_id: int | None
) -> list[tuple[str, str]]:
    """trainer.from_dict's errors for the readable fields, on the chosen dataset's class count if any."""
    checked = unflatten(values)
    if data_source == "dataset":
        if dataset_id is None:
            return [("dataset_id", "pick an uploaded dataset, or upload one")]
        try:
            dataset = crud.get_dataset(session=session, dataset_id=dataset_id)
        except NotFound as err:
            return [("dataset_id", str(err))]
        checked["data"] = {**checked.get("data", {}), **crud.dataset_data(dataset)}
    try:
        from_dict(checked, base=chosen)
    except ConfigError as err:
        return err.errors
    return []


def _request_errors(name: str | None, doctor_max_attempts: str) -> list[tuple[str, str]]:
    """RunCreate's checks of the name (its length) and of the doctor's attempts (their range), made beside the
    config's so the form shows them all; POST /api/runs answers the same ones as its 422."""
    try:
        RunCreate(name=name, **_attempts(doctor_max_attempts))
    except ValidationError as err:
        return [(str(e["loc"][0]), _request_message(e, name or "")) for e in err.errors()]
    return []


def _attempts(typed: str) -> dict[str, Any]:
    """The form's max attempts as RunCreate takes them (empty: its default)."""
    return {"doctor_max_attempts": typed} if typed else {}


def _request_message(error: Any, name: str) -> str:
    if error["loc"][0] == "doctor_max_attempts":
        return f"must be a whole number from 1 to {MAX_DOCTOR_ATTEMPTS}, got {error['input']!r}"
    if error["type"] == "string_too_long":
        return f"a run's name must be at most {error['ctx']['max_length']} characters; this one has {len(name):,}"
    return str(error["msg"])


def _queue(session: Session, run_in: RunCreate, limits: Limits | None) -> tuple[int | None, list[tuple[str, str]]]:
    try:  # crud validates once more, exactly as POST /api/runs does (parent, dataset, config, budgets)
        return crud.create_run(session=session, run_in=run_in, limits=limits).id, []
    except InputError as err:
        return None, [(_error_field(item.get("loc", [])), item["msg"]) for item in err.errors]


def queue_from_form(
    session: Session, form: dict[str, list[str]], limits: Limits | None = None
) -> tuple[int | None, dict[str, Any]]:
    """Queue the run the form describes: (run id, {}), or (None, the form's context with every error)."""
    first = {k: (v[-1] if v else "") for k, v in form.items()}
    chosen, data_source = first.get("preset", "fixed"), first.get("data_source", "synthetic")
    dataset_id, parent_id = parse_id(first.get("dataset_id")), parse_id(first.get("parent_id"))
    values, problems = parse_form(form, skip=SYNTHETIC_FIELDS if data_source == "dataset" else ())
    doctor, doctor_max_attempts = "on" in form.get("doctor", []), first.get("doctor_max_attempts", "").strip()
    problems += _request_errors(first.get("name") or None, doctor_max_attempts)
    known_preset = chosen in preset_names()
    if not known_preset:
        problems.append(("preset", f"unknown preset {chosen!r}; known presets: {', '.join(preset_names())}"))
    else:  # range errors too, even beside fields that could not be read
        problems += _config_errors(session, chosen, values, data_source, dataset_id)
    if not problems:
        run_in = RunCreate(
            name=first.get("name") or None,
            preset=chosen,
            config=overrides_from(values, preset(chosen).to_dict()),
            dataset_id=dataset_id if data_source == "dataset" else None,
            parent_id=parent_id,
            doctor=doctor,
            **_attempts(doctor_max_attempts),  # read by RunCreate, as checked above
        )
        run_id, problems = _queue(session, run_in, limits)
        if run_id is not None:
            return run_id, {}
    errors: dict[str, list[str]] = {}
    general: list[str] = []
    for field, msg in problems:
        if field in _FIELD_NAMES or field in ("name", "preset", "dataset_id", "doctor_max_attempts"):
            errors.setdefault(field, []).append(msg)
        else:
            general.append(msg if field == "parent_id" else f"{field}: {msg}")
    shown = {**preset_values(chosen if known_preset else "fixed"), **first}
    for f in ALL_FIELDS:  # a checkbox's submitted text is not its state
        if f.kind == "bool" and f.name in values:
            shown[f.name] = values[f.name]
    parent = find_run(session, parent_id) if parent_id is not None else None
    return None, form_context(
        session,
        preset=chosen,
        values=shown,
        errors=errors,
        general_errors=general,
        name=first.get("name", ""),
        data_source=data_source,
        dataset_id=dataset_id,
        parent=parent,
        doctor=doctor,
        doctor_max_attempts=doctor_max_attempts,
    )
