"""Errors a user can act on: `NotFound` becomes a 404, `InputError` a 422 naming each bad field; and
`responses()`, the error answers a route documents in the OpenAPI schema besides its own 422."""

from __future__ import annotations

from typing import Any

from app.storage.models import ErrorPublic, sendable
from trainer import ConfigError, TableError

# What each status means here; app/security.py, app/budgets.py and the handlers in app/main.py send them.
_RESPONSES: dict[int, str] = {
    400: "the Host header is not a name of this server, or a form body could not be parsed",
    401: "the server has a token and the request did not send it (Authorization: Bearer <token>)",
    403: "a write from another origin, or from a page without its CSRF token (X-CSRF-Token)",
    404: "no such run, dataset or warning; the message names the id",
    409: "the records conflict with what the run holds (steps already stored), or the run takes none (finished)",
    413: "the request body is larger than the server's upload limit (COLLAPSEWATCH_MAX_UPLOAD_MB)",
}


class NotFound(LookupError):
    """`str(exc)` is the whole message, e.g. "Run 17 not found"."""


class Conflict(RuntimeError):
    """`str(exc)` is the whole message, e.g. "steps 100-149 overlap the 200 steps stored for run 3 ..." (409)."""


class InputError(ValueError):
    """`errors` are FastAPI-style items: {"loc": [...], "msg": ..., "type": ...} plus any extra keys."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        # a loc can hold a key of the request's own JSON, a lone surrogate included
        self.errors = [{**e, "loc": sendable(e["loc"]), "msg": sendable(e["msg"])} for e in errors]
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))

    @classmethod
    def at(cls, loc: list[str | int], msg: str, type_: str = "value_error") -> InputError:
        return cls([{"loc": loc, "msg": msg, "type": type_}])


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these codes (FastAPI documents 422 itself)."""
    return {code: {"model": ErrorPublic, "description": _RESPONSES[code]} for code in codes}


def config_error_items(exc: ConfigError, prefix: tuple[str, ...] = ("body", "config")) -> list[dict[str, Any]]:
    """Each (field, message) of a ConfigError as a 422 item whose loc ends with the field's path parts
    (`data.n_samples` -> [..., "config", "data", "n_samples"]); an unknown preset points at "preset"."""
    items = []
    for field, message in exc.errors:
        if field == "preset":
            loc = [*prefix[:-1], "preset"]
        elif field == "config":
            loc = list(prefix)
        else:
            loc = [*prefix, *field.split(".")]
        items.append({"loc": loc, "msg": message, "type": "value_error.config"})
    return items


def table_error_items(exc: TableError) -> list[dict[str, Any]]:
    """Each problem of an uploaded table as a 422 item with its row (0 = header) and column."""
    items = [
        {
            "loc": ["body", "file"],
            "msg": str(issue),
            "type": "value_error.table",
            "row": issue.row,
            "column": issue.column,
        }
        for issue in exc.issues
    ]
    if exc.more:
        items.append(
            {
                "loc": ["body", "file"],
                "msg": f"... and {exc.more} more problems",
                "type": "value_error.table",
                "row": None,
                "column": None,
            }
        )
    return items
