"""Every HTTP route, by concern: scoring, the OpenRLHF protocol, admin, and probes."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import admin, openrlhf, probes, scoring

router = APIRouter()
for part in (scoring, openrlhf, admin, probes):
    router.include_router(part.router)
