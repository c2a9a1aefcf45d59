"""Upload (validated, row and column named on error), preview (read, not stored) and list user datasets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from app.api.deps import DatasetId, SessionDep, SettingsDep
from app.budgets import Limits
from app.errors import responses
from app.storage import crud
from app.storage.models import Dataset, DatasetPreview, DatasetPublic

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=responses(400, 401))


@router.post("", response_model=DatasetPublic, status_code=201, responses=responses(403, 413))
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[
        UploadFile, File(description="CSV, Parquet or NPZ: features plus a label or one probability column per class")
    ],
    name: Annotated[str | None, Form(max_length=200)] = None,
    label_column: Annotated[str | None, Form()] = None,
) -> Dataset:
    return crud.create_dataset(
        session=session,
        data_dir=settings.data_dir,
        upload=file.file,
        filename=file.filename or "upload",
        name=name,
        label_column=label_column,
        limits=Limits.from_settings(settings),
    )


@router.post("/preview", response_model=DatasetPreview, responses=responses(403, 413))
def preview_dataset(
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the table to read, exactly as POST /api/datasets would")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    label_column: Annotated[str | None, Form()] = None,
) -> DatasetPreview:
    """How the table would be read (feature and target columns, rows, classes, target entropy and class
    shares), with the same errors as an upload; nothing is stored."""
    return crud.preview_dataset(
        data_dir=settings.data_dir,
        upload=file.file,
        filename=file.filename or "upload",
        name=name,
        label_column=label_column,
        limits=Limits.from_settings(settings),
    )


@router.get("", response_model=list[DatasetPublic])
def list_datasets(session: SessionDep) -> list[Dataset]:
    return crud.list_datasets(session=session)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=responses(404))
def read_dataset(session: SessionDep, dataset_id: DatasetId) -> Dataset:
    return crud.get_dataset(session=session, dataset_id=dataset_id)
