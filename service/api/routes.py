"""Every HTTP route, by concern: scoring, refinement, the OpenRLHF protocol, admin, and probes."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import admin, openrlhf, probes, refine, scoring

router = APIRouter()
for part in (scoring, refine, openrlhf, admin, probes):
    router.include_router(part.router)
