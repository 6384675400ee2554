"""Every HTTP route, by concern: scoring, refinement, comparison, the OpenRLHF protocol, admin, and probes."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import admin, compare, openrlhf, probes, refine, scoring

router = APIRouter()
for part in (scoring, refine, compare, openrlhf, admin, probes):
    router.include_router(part.router)
