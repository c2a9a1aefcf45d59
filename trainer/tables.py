"""Read user tables (CSV, Parquet, NPZ) into features and soft targets, collecting every problem.

Each problem is a `TableIssue` naming the row and column, so a user can fix the file in one pass.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.table_checks import (
    Issues,
    TableError,
    TableIssue,
    check_probabilities,
    finite_matrix,
    float_column,
    float_or_none,
    labels_to_targets,
)

__all__ = ["ParsedTable", "TableError", "TableIssue", "read_table", "table_format"]

_PROB_DIGIT = re.compile(r"p(\d+)", re.IGNORECASE)
_PROB_PREFIXES = ("prob_", "p_")
_PANDAS_INDEX = "__index_level_"


@dataclass
class ParsedTable:
    """A validated table: features and targets (rows summing to 1) with their names."""

    format: str  # "csv" | "parquet" | "npz"
    features: np.ndarray  # (N, F) float64
    targets: np.ndarray  # (N, C) float64
    feature_columns: list[str]
    class_names: list[str]
    target_kind: str  # "label" | "probabilities"
    target_columns: list[str]  # the label column, the probability columns, or the NPZ array ("y" or "p")

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "rows": int(self.features.shape[0]),
            "n_features": int(self.features.shape[1]),
            "num_classes": int(self.targets.shape[1]),
            "target_kind": self.target_kind,
            "feature_columns": list(self.feature_columns),
            "target_columns": list(self.target_columns),
            "class_names": list(self.class_names),
        }


def table_format(path: Path) -> str:
    """The format from the file extension, else from the first bytes (uploads may lose their name)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".npz":
        return "npz"
    with path.open("rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return "parquet"
    if head.startswith(b"PK"):
        return "npz"
    return "csv"


def read_table(path: str | Path, label_column: str | None = None, num_classes: int | None = None) -> ParsedTable:
    """Parse and validate a table; raises `TableError` listing every problem found (up to 20)."""
    path = Path(path)
    if not path.is_file():
        raise TableError([TableIssue(None, None, f"file not found: {path}")])
    fmt = table_format(path)
    issues = Issues()
    if fmt == "npz":
        parsed = _read_npz(path, label_column, num_classes, issues)
    else:
        grid = _read_csv(path, issues) if fmt == "csv" else _read_parquet(path, issues)
        parsed = None if grid is None else _from_columns(fmt, *grid, label_column, num_classes, issues)
    if parsed is not None and parsed.features.shape[0] < 2:
        issues.add(None, None, "need at least 2 data rows (one to train on, one to validate)")
    issues.raise_if_any()
    assert parsed is not None  # every path that returns None has recorded an issue
    return parsed


# --- CSV and Parquet: a header plus columns of cells ---------------------------------------------
Grid = tuple[list[str], list[list[Any]], list[int]]  # header, columns of cells, file row number per cell


def _read_csv(path: Path, issues: Issues) -> Grid | None:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as exc:
        issues.add(None, None, f"not a UTF-8 text file (undecodable byte at offset {exc.start})")
        return None
    if not text.strip():
        issues.add(None, None, "the file is empty")
        return None
    first_line = text.lstrip().partition("\n")[0]
    delimiter = next((d for d in (",", "\t", ";") if d in first_line), ",")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        records = list(reader)
    except csv.Error as exc:
        issues.add(reader.line_num, None, f"unreadable CSV: {exc}")
        return None
    while records and not records[0]:  # blank lines before the header
        records.pop(0)
    header = [name.strip() for name in records[0]]
    if all(float_or_none(name) is not None for name in header):
        issues.add(0, None, f"the first row must be a header of column names, but it holds only numbers: {records[0]}")
        return None
    rows, numbers = [], []
    for number, record in enumerate(records[1:], start=1):
        if not record:  # a blank line (often a trailing newline); it still counts as a row in the file
            continue
        if len(record) != len(header):
            issues.add(number, None, f"has {len(record)} cells but the header has {len(header)} columns")
            continue
        rows.append(record)
        numbers.append(number)
    if not rows:
        if not issues:
            issues.add(None, None, "no data rows after the header")
        return None
    columns = [[row[j] for row in rows] for j in range(len(header))]
    return header, columns, numbers


def _read_parquet(path: Path, issues: Issues) -> Grid | None:
    try:
        import pyarrow.parquet as pq  # lazily: trainer/ must not need pyarrow unless a Parquet file is read
    except ImportError:
        issues.add(None, None, "reading Parquet files needs the pyarrow package: pip install pyarrow")
        return None
    try:
        table = pq.read_table(path)
        header = [str(name) for name in table.column_names]
        columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    except Exception as exc:  # corrupt bytes raise a zoo of pyarrow/OS errors; all mean "unreadable"
        issues.add(None, None, f"not a readable Parquet file: {exc}")
        return None
    keep = [j for j, name in enumerate(header) if not name.startswith(_PANDAS_INDEX)]  # pandas' saved index
    header, columns = [header[j] for j in keep], [columns[j] for j in keep]
    if not header:
        issues.add(None, None, "the Parquet file has no columns")
        return None
    if table.num_rows == 0:
        issues.add(None, None, "no data rows in the Parquet file")
        return None
    return header, columns, list(range(1, table.num_rows + 1))


def _check_header(header: list[str], issues: Issues) -> None:
    seen: set[str] = set()
    for j, name in enumerate(header):
        if not name:
            issues.add(0, None, f"column {j + 1} has an empty name in the header")
        elif name in seen:
            issues.add(0, name, "this column name appears more than once in the header")
        seen.add(name)


def _target_columns(
    header: list[str], label_column: str | None, issues: Issues
) -> tuple[str, list[str], list[str]] | None:
    """(kind, target column names, class names from the column names) or None after an issue."""
    if label_column is not None:
        if label_column not in header:
            issues.add(0, label_column, f"label column not found; the columns are: {', '.join(header)}")
            return None
        return "label", [label_column], []
    labels = [name for name in header if name.lower() == "label"]
    digit = {name: int(m[1]) for name in header if (m := _PROB_DIGIT.fullmatch(name))}
    prefixed = [name for name in header if name.lower().startswith(_PROB_PREFIXES) and name not in digit]
    if labels and (digit or prefixed):
        issues.add(
            0,
            labels[0],
            "the table has both a label column and probability columns; pass "
            f"label_column={labels[0]!r} to train on the labels, or remove it to train on the probabilities",
        )
        return None
    if labels:
        return "label", labels[:1], []
    if digit and prefixed:
        issues.add(0, prefixed[0], "probability columns must be all p0..p{C-1} or all prob_*/p_*, not a mix")
        return None
    if digit:
        by_index = sorted(digit, key=digit.__getitem__)
        missing = sorted(set(range(len(digit))) - set(digit.values()))
        if missing:
            issues.add(
                0, None, f"probability columns must be p0..p{len(digit) - 1} without gaps; missing p{missing[0]}"
            )
            return None
        return "probabilities", by_index, [str(digit[name]) for name in by_index]
    if prefixed:
        names = [name.split("_", 1)[1] for name in prefixed]
        if len(set(names)) < len(names):
            issues.add(0, None, f"two probability columns name the same class: {', '.join(prefixed)}")
            return None
        return "probabilities", prefixed, names
    issues.add(
        0,
        None,
        "no target columns: add a 'label' column (or pass label_column), or one probability "
        "column per class named p0, p1, ... or prob_<class> / p_<class>",
    )
    return None


def _from_columns(
    fmt: str,
    header: list[str],
    columns: list[list[Any]],
    numbers: list[int],
    label_column: str | None,
    num_classes: int | None,
    issues: Issues,
) -> ParsedTable | None:
    _check_header(header, issues)
    found = _target_columns(header, label_column, issues)
    if found is None:
        return None
    kind, target_cols, class_names = found
    feature_cols = [name for name in header if name not in target_cols]
    if not feature_cols:
        issues.add(0, None, f"no feature columns: every column ({', '.join(header)}) is a target column")
    index = {name: j for j, name in enumerate(header)}
    feats = [float_column(columns[index[name]], name, numbers, issues, kind="feature") for name in feature_cols]
    features = np.stack(feats, axis=1) if feats else np.zeros((len(numbers), 0))
    if kind == "label":
        targets, class_names = labels_to_targets(
            columns[index[target_cols[0]]], target_cols[0], numbers, num_classes, issues
        )
    else:
        probs = [float_column(columns[index[name]], name, numbers, issues, kind="probability") for name in target_cols]
        targets = check_probabilities(np.stack(probs, axis=1), target_cols, numbers, num_classes, issues)
    return ParsedTable(fmt, features, targets, feature_cols, class_names, kind, target_cols)


# --- NPZ: arrays x and y (labels) or p (probabilities) -------------------------------------------
def _read_npz(path: Path, label_column: str | None, num_classes: int | None, issues: Issues) -> ParsedTable | None:
    with path.open("rb") as fh:
        head = fh.read(6)
    if head == b"\x93NUMPY":
        issues.add(None, None, "this is a single .npy array; save an .npz archive with arrays x and y (or p)")
        return None
    if not head.startswith(b"PK"):
        issues.add(None, None, "not a readable NPZ archive: an .npz file is a zip archive of .npy arrays")
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # corrupt archives raise BadZipFile, zlib.error, ValueError, EOFError...
        issues.add(None, None, f"not a readable NPZ archive: {exc}")
        return None
    target_name = label_column or ("y" if "y" in arrays else "p")
    if "x" not in arrays:
        issues.add(None, "x", f"the NPZ archive has no array 'x'; arrays found: {', '.join(arrays) or 'none'}")
    if label_column is None and "y" in arrays and "p" in arrays:
        issues.add(None, "y", "the archive has both 'y' (labels) and 'p' (probabilities); keep one of them")
        return None
    if target_name not in arrays:
        issues.add(
            None,
            target_name,
            "the NPZ archive needs an array 'y' (integer labels) or 'p' (probabilities); "
            f"arrays found: {', '.join(arrays) or 'none'}",
        )
    if issues:
        return None
    return _npz_arrays(arrays["x"], arrays[target_name], target_name, num_classes, issues)


def _npz_arrays(
    x: np.ndarray, t: np.ndarray, t_name: str, num_classes: int | None, issues: Issues
) -> ParsedTable | None:
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        issues.add(None, "x", f"x must be a 2-D numeric array (rows, features), got shape {x.shape} dtype {x.dtype}")
        return None
    n, n_features = x.shape
    if n == 0 or n_features == 0:
        issues.add(None, "x", f"x has no {'data rows' if n == 0 else 'feature columns'} (shape {x.shape})")
        return None
    kind = "probabilities" if t_name == "p" else "label"
    want_ndim = 2 if kind == "probabilities" else 1
    if t.ndim != want_ndim or t.shape[0] != n:
        issues.add(
            None, t_name, f"{t_name} must have {want_ndim} dimension(s) and {n} rows like x, got shape {t.shape}"
        )
        return None
    names = [f"x{j}" for j in range(n_features)]
    numbers = list(range(1, n + 1))
    features = finite_matrix(x, names, numbers, issues, kind="feature")
    if kind == "label":
        targets, class_names = labels_to_targets(t.tolist(), t_name, numbers, num_classes, issues)
    else:
        if t.dtype.kind not in "biuf":
            issues.add(None, "p", f"p must be numeric, got dtype {t.dtype}")
            return None
        class_names = [str(c) for c in range(t.shape[1])]
        columns = [f"p{c}" for c in class_names]
        probs = finite_matrix(t, columns, numbers, issues, kind="probability")
        targets = check_probabilities(probs, columns, numbers, num_classes, issues)
    return ParsedTable("npz", features, targets, names, class_names, kind, [t_name])
