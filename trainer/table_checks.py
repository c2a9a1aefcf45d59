"""Cell-level checks shared by the table readers: numbers, labels and probabilities, with row and column.

Rows are numbered as a user sees them: the header is row 0 and data rows count from 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_ISSUES = 20
MAX_CLASSES = 1000  # the config's limit on num_classes
PROB_TOLERANCE = 1e-3


@dataclass(frozen=True)
class TableIssue:
    row: int | None  # 0 = header, 1.. = data rows; None = the whole file
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [] if self.row is None else ["header" if self.row == 0 else f"row {self.row}"]
        if self.column is not None:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class TableError(ValueError):
    """A user table is unusable; `issues` lists every problem found (the first `MAX_ISSUES`)."""

    def __init__(self, issues: list[TableIssue], more: int = 0):
        self.issues = list(issues)
        self.more = more  # problems found beyond the ones listed
        text = "; ".join(str(issue) for issue in self.issues)
        tail = f"; ... and {more} more" if more else ""
        count = len(self.issues) + more
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the table: {text}{tail}")

    @property
    def errors(self) -> list[TableIssue]:
        return self.issues


class Issues:
    """Collects problems up to a cap, so one broken column does not produce a million messages."""

    def __init__(self, limit: int = MAX_ISSUES):
        self.items: list[TableIssue] = []
        self.more = 0
        self.limit = limit

    def add(self, row: int | None, column: str | None, message: str) -> None:
        if len(self.items) < self.limit:
            self.items.append(TableIssue(row, column, message))
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            # file-level problems first, then header, then rows in file order (stable: columns keep theirs)
            ordered = sorted(self.items, key=lambda issue: -1 if issue.row is None else issue.row)
            raise TableError(ordered, self.more)


def float_or_none(cell: Any) -> float | None:
    """The cell as a float (NaN and inf included), or None when it is empty or not a number."""
    if cell is None or isinstance(cell, bool):
        return None
    try:
        return float(cell.strip()) if isinstance(cell, str) else float(cell)
    except (TypeError, ValueError):
        return None


def _is_empty(cell: Any) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def float_column(cells: Sequence[Any], name: str, numbers: list[int], issues: Issues, kind: str) -> np.ndarray:
    """One column as float64; empty, non-numeric, NaN and infinite cells become issues (and NaN)."""
    values: np.ndarray | None = None
    if not any(cell is None or isinstance(cell, bool) for cell in cells):
        try:  # fast path: numpy parses a clean column of strings or numbers in C
            values = np.asarray(cells, dtype=np.float64)
        except (TypeError, ValueError):
            values = None
    unparsed = np.zeros(len(cells), dtype=bool)
    if values is None:
        values = np.full(len(cells), np.nan)
        for i, cell in enumerate(cells):
            parsed = float_or_none(cell)
            if parsed is None:
                unparsed[i] = True
                message = "empty cell" if _is_empty(cell) else f"{cell!r} is not a number"
                issues.add(numbers[i], name, f"{message} (expected a numeric {kind})")
            else:
                values[i] = parsed
    for i in np.flatnonzero(~np.isfinite(values) & ~unparsed):
        issues.add(numbers[i], name, f"{kind} is {values[i]}; only finite numbers are allowed")
    return values


def finite_matrix(x: np.ndarray, names: list[str], numbers: list[int], issues: Issues, kind: str) -> np.ndarray:
    """A numeric array as float64, with each NaN or infinite entry reported by row and column."""
    values = x.astype(np.float64)
    for i, j in np.argwhere(~np.isfinite(values)):
        issues.add(numbers[i], names[j], f"{kind} is {values[i, j]}; only finite numbers are allowed")
    return values


def labels_to_targets(
    cells: Sequence[Any], column: str, numbers: list[int], num_classes: int | None, issues: Issues
) -> tuple[np.ndarray, list[str]]:
    """One-hot targets from integer class ids (0..C-1) or class names (mapped in sorted order).

    The column holds ids when most of its non-empty cells are numbers (the rest are then reported),
    otherwise names.
    """
    present = [i for i, cell in enumerate(cells) if not _is_empty(cell)]
    for i in sorted(set(range(len(cells))) - set(present)):
        issues.add(numbers[i], column, "empty label")
    values = [float_or_none(cells[i]) for i in range(len(cells))]
    numeric = sum(values[i] is not None for i in present)
    ids = np.full(len(cells), -1, dtype=np.int64)
    if present and numeric * 2 > len(present):
        class_names = _integer_ids(cells, values, present, column, numbers, num_classes, ids, issues)
    else:
        names = {i: str(cells[i]).strip() for i in present}
        class_names = sorted(set(names.values()))
        if num_classes is not None and num_classes != len(class_names):
            shown = ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")
            issues.add(
                0, column, f"the labels name {len(class_names)} classes ({shown}) but num_classes is {num_classes}"
            )
        if len(class_names) > MAX_CLASSES:
            issues.add(
                0,
                column,
                f"the labels name {len(class_names)} distinct classes, more than the {MAX_CLASSES} "
                "supported; is this the label column?",
            )
            return np.zeros((len(cells), 0)), []
        index = {name: c for c, name in enumerate(class_names)}
        for i, name in names.items():
            ids[i] = index[name]
    if len(class_names) < 2:
        issues.add(0, column, f"need at least 2 classes, the labels have {len(class_names)}")
    targets = np.zeros((len(cells), len(class_names)))
    ok = ids >= 0
    targets[np.flatnonzero(ok), ids[ok]] = 1.0
    return targets, class_names


def _integer_ids(
    cells: Sequence[Any],
    values: list[float | None],
    present: list[int],
    column: str,
    numbers: list[int],
    num_classes: int | None,
    ids: np.ndarray,
    issues: Issues,
) -> list[str]:
    limit = num_classes if num_classes is not None else MAX_CLASSES
    why = f"num_classes is {num_classes}" if num_classes is not None else f"at most {MAX_CLASSES} classes"
    for i in present:
        value = values[i]
        if value is None or not math.isfinite(value) or not value.is_integer():
            issues.add(numbers[i], column, f"label {cells[i]!r} is not an integer class id")
        elif not 0 <= value < limit:
            issues.add(numbers[i], column, f"label {int(value)} is out of range 0..{limit - 1} ({why})")
        else:
            ids[i] = int(value)
    n_classes = num_classes if num_classes is not None else int(ids.max()) + 1
    return [str(c) for c in range(n_classes)]


def check_probabilities(
    probs: np.ndarray, columns: list[str], numbers: list[int], num_classes: int | None, issues: Issues
) -> np.ndarray:
    """Validate one probability column per class (non-negative, rows summing to 1); return rows renormalised."""
    n_classes = probs.shape[1]
    if num_classes is not None and num_classes != n_classes:
        issues.add(0, None, f"{n_classes} probability columns ({', '.join(columns)}) but num_classes is {num_classes}")
    if n_classes < 2:
        issues.add(0, columns[0] if columns else None, "need at least 2 probability columns, one per class")
    finite = np.isfinite(probs)
    for i, j in np.argwhere(finite & (probs < 0)):
        issues.add(numbers[i], columns[j], f"probability {probs[i, j]:g} is negative")
    sums = probs.sum(axis=1)
    for i in np.flatnonzero(finite.all(axis=1) & (np.abs(sums - 1.0) > PROB_TOLERANCE)):
        issues.add(numbers[i], None, f"probabilities sum to {sums[i]:.6g}, not 1 (tolerance {PROB_TOLERANCE:g})")
    # within tolerance: renormalise so every target is an exact distribution
    safe = np.where(np.isfinite(sums) & (sums > 0), sums, 1.0)
    return probs / safe[:, None]
