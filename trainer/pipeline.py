"""`critic-rm train`: the Critic-RM pipeline as resumable stages.

data → base → sample → filter → refine → train → export → eval → publish (trainer.stages.PIPELINE);
syncpl mode: data → base → judge → train → export → eval → publish

Every stage writes its output under the run directory and then a marker
(stages/<name>.json: seconds, summary, digest). A stage is skipped when its marker exists and its
digest (its own config sections, chained with the stage before) is unchanged, so a run resumes
where it stopped and `--set train.epochs=3` reruns train and what follows it, not sampling.
`--from STAGE` forces a rerun from STAGE on. A stage runs only in the train modes it names
(the bt mode, a standard Bradley-Terry RM, skips sample, filter and refine), and a digest chains
only the stages of the run's mode."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from trainer import distributed
from trainer.config import Config
from trainer.run import Run, StageError
from trainer.stages import PIPELINE, Stage

__all__ = ["STAGES", "Run", "StageError", "digests", "run_pipeline"]

log = logging.getLogger(__name__)

STAGES = tuple(s.name for s in PIPELINE)
TRAIN = "train"  # the one stage every process runs (trainer.distributed)


def _pick(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def digests(cfg: Config, stages: Sequence[Stage] = PIPELINE) -> dict[str, str]:
    """Each stage's digest: its config sections, chained with the digest of the stage before
    (so a change reruns the first stage it affects and everything after)."""
    tree = cfg.model_dump(mode="json")
    out, prev = {}, ""
    for stage in (s for s in stages if cfg.train.mode in s.modes):
        blob = json.dumps([prev, {k: _pick(tree, k) for k in stage.sections}], sort_keys=True)
        prev = hashlib.sha256(blob.encode()).hexdigest()[:16]
        out[stage.name] = prev
    return out


def run_pipeline(
    cfg: Config,
    *,
    from_stage: str | None = None,
    until: str | None = None,
    stages: Sequence[Stage] = PIPELINE,
) -> dict[str, Any]:
    """Run the stages that are not done (or all from `from_stage`); returns every marker."""
    import yaml

    names = [s.name for s in stages]
    if from_stage is not None and from_stage not in names:
        raise StageError(f"unknown stage {from_stage!r}; stages: {', '.join(names)}")
    run = Run(cfg, digests(cfg, stages))
    todo = [s for s in stages if cfg.train.mode in s.modes]
    if not distributed.is_main():
        return _follow(run, todo, from_stage)
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    forced = False
    markers = {}
    for stage in todo:
        forced = forced or stage.name == from_stage
        previous = run.done(stage.name)
        if stage.name == TRAIN and distributed.launched():
            # The other processes wait here while the stages before train ran; tell them
            # whether train runs (they cannot know what this process reran).
            distributed.broadcast(previous is None or forced)
        if previous is not None and not forced:
            log.info("stage %s: done (%.1f s), skipped", stage.name, previous["seconds"])
            markers[stage.name] = previous
        else:
            forced = True  # every later stage depends on this one's new output
            log.info("stage %s: running", stage.name)
            start = time.perf_counter()
            result = stage.func(run)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            run.mark(stage.name, time.perf_counter() - start, result or {})
            markers[stage.name] = run.summary(stage.name)
            log.info(
                "stage %s: %.1f s %s", stage.name, markers[stage.name]["seconds"], result or ""
            )
        if stage.name == until:
            break
    if distributed.launched() and TRAIN not in markers:
        distributed.broadcast(False)  # stopped before train (--until): release the others
    return markers


def _follow(run: Run, todo: Sequence[Stage], from_stage: str | None) -> dict[str, Any]:
    """A process other than the main one (under accelerate launch): it waits until the main
    process reaches train, trains its share, and leaves export, eval and publish to it."""
    train = next(s for s in todo if s.name == TRAIN)
    if not distributed.broadcast(None):
        return {}
    train.func(run)
    return {}
