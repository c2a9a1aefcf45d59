"""GET /api/presets: the named starting configs, each with its full effective config."""

from __future__ import annotations

from fastapi import APIRouter

from app.storage import crud
from app.storage.models import PresetPublic

router = APIRouter(prefix="/presets", tags=["presets"])


@router.get("", response_model=list[PresetPublic])
def list_presets() -> list[PresetPublic]:
    return crud.list_presets()
