"""Errors a user can act on: `NotFound` becomes a 404, `InputError` a 422 naming each bad field."""

from __future__ import annotations

from typing import Any

from trainer import ConfigError, TableError


class NotFound(LookupError):
    """`str(exc)` is the whole message, e.g. "Run 17 not found"."""


class InputError(ValueError):
    """`errors` are FastAPI-style items: {"loc": [...], "msg": ..., "type": ...} plus any extra keys."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))

    @classmethod
    def at(cls, loc: list[str | int], msg: str, type_: str = "value_error") -> InputError:
        return cls([{"loc": loc, "msg": msg, "type": type_}])


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
