"""One run directory of `critic-rm train`: its paths and its stage markers.

A stage writes its output under the run directory and then a marker (stages/<name>.json:
seconds, summary, digest); the marker counts as done only while its digest is the one the
current config gives that stage (trainer.pipeline computes the digests)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.engines.config import EngineConfig
from trainer.config import Config


class StageError(RuntimeError):
    """A stage cannot run: unknown name, or an earlier stage's output is missing."""


class Run:
    """Paths and stage markers of one run directory."""

    def __init__(self, cfg: Config, digests: Mapping[str, str]) -> None:
        self.cfg = cfg
        self.dir = cfg.out
        self.digests = dict(digests)

    def path(self, name: str) -> Path:
        return self.dir / name

    def marker(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    def done(self, stage: str) -> dict[str, Any] | None:
        file = self.marker(stage)
        if not file.is_file():
            return None
        data: dict[str, Any] = json.loads(file.read_text())
        return data if data.get("digest") == self.digests[stage] else None

    def mark(self, stage: str, seconds: float, summary: dict[str, Any]) -> None:
        file = self.marker(stage)
        file.parent.mkdir(parents=True, exist_ok=True)
        body = {"stage": stage, "digest": self.digests[stage], "seconds": seconds, **summary}
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(file)

    def summary(self, stage: str) -> dict[str, Any]:
        data = self.done(stage)
        if data is None:
            raise StageError(f"stage {stage} has not run in {self.dir}")
        return data

    def result(self, stage: str) -> dict[str, Any]:
        """A stage's summary without the marker's own keys (its name and digest)."""
        return {k: v for k, v in self.summary(stage).items() if k not in ("stage", "digest")}


def engine_config(run: Run) -> EngineConfig:
    e = run.cfg.engine
    return EngineConfig(
        engine_layout=e.layout,
        max_model_len=e.max_model_len,
        kv_cache_gib=e.kv_cache_gib,
        max_num_seqs=e.max_num_seqs,
        tensor_parallel_size=e.tensor_parallel_size,
        gpu_memory_utilization=e.gpu_memory_utilization,
    )


def base_version(run: Run) -> CheckpointVersion:
    return CheckpointRoot(run.path("base")).resolve(verify_hashes=False)
