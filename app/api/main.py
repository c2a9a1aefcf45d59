"""All API routers under one prefix-less router; app/main.py mounts it at /api."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routes import datasets, health, ingest, presets, runs, stream, sweeps

api_router = APIRouter()
api_router.include_router(runs.router)
api_router.include_router(stream.router)
api_router.include_router(datasets.router)
api_router.include_router(presets.router)
api_router.include_router(health.router)
api_router.include_router(ingest.router)
api_router.include_router(sweeps.router)
