"""What the run page shows of a run's data: the dataset a table run trained on, and only the config
fields that the kind of data it used reads (a table run has no generator settings to show)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.errors import NotFound
from app.storage import crud
from app.storage.models import DatasetPublic, RunPublic
from trainer import DATA_FIELDS_OF_KIND


def run_dataset(session: Session, run: RunPublic) -> DatasetPublic | None:
    """The uploaded dataset the run trains on, or None (synthetic data, or the dataset is gone)."""
    if run.dataset_id is None:
        return None
    try:
        return DatasetPublic.model_validate(crud.get_dataset(session=session, dataset_id=run.dataset_id))
    except NotFound:
        return None


def applicable_fields(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config without the `data.*` fields that only another kind of data reads."""
    data = flat.get("data.kind", "synthetic")
    unread = {f"data.{name}" for kind, names in DATA_FIELDS_OF_KIND.items() if kind != data for name in names}
    return {key: value for key, value in flat.items() if key not in unread}
