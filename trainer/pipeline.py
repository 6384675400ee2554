"""`critic-rm train`: the Critic-RM pipeline as resumable stages.

data → base → sample → filter → refine → train → export → eval → publish

Every stage writes its output under the run directory and then a marker
(stages/<name>.json: seconds, summary, digest). A stage is skipped when its marker exists and its
digest (its own config sections, chained with the stage before) is unchanged, so a run resumes
where it stopped and `--set train.epochs=3` reruns train and what follows it, not sampling.
`--from STAGE` forces a rerun from STAGE on. The bt mode (a standard Bradley-Terry RM) skips
sample, filter and refine."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `critic-rm serve` imports this module for STAGES: keep it light
    from trainer.config import Config

log = logging.getLogger(__name__)

STAGES = ("data", "base", "sample", "filter", "refine", "train", "export", "eval", "publish")
CRITIC_ONLY = {"sample", "filter", "refine"}
# Which parts of the config each stage's output depends on.
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("seed", "data"),
    "base": ("base_model",),
    "sample": ("sampling", "engine"),
    "filter": (),
    "refine": ("refine", "seed"),
    "train": ("train", "seed"),
    "export": ("export.name", "sampling"),
    "eval": ("eval",),
    "publish": ("export",),
}


class StageError(RuntimeError):
    pass


def _pick(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def digests(cfg: Config) -> dict[str, str]:
    tree = cfg.model_dump(mode="json")
    out, prev = {}, ""
    for stage in STAGES:
        blob = json.dumps([prev, {k: _pick(tree, k) for k in SECTIONS[stage]}], sort_keys=True)
        prev = hashlib.sha256(blob.encode()).hexdigest()[:16]
        out[stage] = prev
    return out


class Run:
    """Paths and stage markers of one run directory."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.dir = cfg.out
        self.digests = digests(cfg)

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


def run_pipeline(
    cfg: Config, *, from_stage: str | None = None, until: str | None = None
) -> dict[str, Any]:
    """Run the stages that are not done (or all from `from_stage`); returns every marker."""
    import yaml

    from trainer import stages

    if from_stage is not None and from_stage not in STAGES:
        raise StageError(f"unknown stage {from_stage!r}; stages: {', '.join(STAGES)}")
    run = Run(cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    todo = [s for s in STAGES if not (cfg.train.mode == "bt" and s in CRITIC_ONLY)]
    funcs: dict[str, Callable[[Run], Any]] = {s: getattr(stages, f"stage_{s}") for s in todo}
    forced = False
    markers = {}
    for stage in todo:
        forced = forced or stage == from_stage
        previous = run.done(stage)
        if previous is not None and not forced:
            log.info("stage %s: done (%.1f s), skipped", stage, previous["seconds"])
            markers[stage] = previous
        else:
            forced = True  # every later stage depends on this one's new output
            log.info("stage %s: running", stage)
            start = time.perf_counter()
            result = funcs[stage](run)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            run.mark(stage, time.perf_counter() - start, result or {})
            markers[stage] = run.summary(stage)
            log.info("stage %s: %.1f s %s", stage, markers[stage]["seconds"], result or "")
        if stage == until:
            break
    return markers
