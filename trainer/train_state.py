"""Step-level checkpoints of the train stage: written every N optimizer steps and on SIGTERM,
read back by the next `critic-rm train`, so a run that dies at step 900 goes on from step 900.

One directory (`train_state/` in the run directory) holds the latest checkpoint, written by
Accelerate's save_state (model or adapter, optimizer, every process's RNG states; FSDP and
DeepSpeed shard it as they train) plus `loop.json` (step, the train stage's digest). Outside
FSDP and DeepSpeed only the trainable weights are written: a LoRA checkpoint is adapter-sized.
The directory is replaced whole (written beside it, then renamed), so a kill while writing
leaves the previous checkpoint."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOP_FILE = "loop.json"


@dataclass(frozen=True)
class Resume:
    step: int  # optimizer steps already taken


class Stop:
    """Set by SIGTERM; the loop saves and stops at the end of the current optimizer step."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, _frame: object) -> None:
        self.requested = True


@contextmanager
def stop_on_sigterm() -> Iterator[Stop]:
    stop = Stop()
    try:
        previous = signal.signal(signal.SIGTERM, stop._handle)
    except ValueError:  # not the main thread: no handler, no graceful stop
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def _frozen_names(model: Any) -> set[str]:
    # Every name of a shared weight (a tied LM head and embedding), not only the first.
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def _only_trainable(models: list[Any], weights: list[dict[str, Any]], _out: str) -> None:
    """save_state hook: drop the frozen weights (the base model) from what is written."""
    for model, state in zip(models, weights, strict=False):
        frozen = _frozen_names(model)
        for name in [k for k in state if k in frozen]:
            del state[name]


def sharded(acc: Any) -> bool:
    """Whether each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO)."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save(acc: Any, directory: Path, *, step: int, digest: str) -> None:
    """Write the checkpoint of every process (collective: every process calls it)."""
    tmp = directory.with_name(directory.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    handle = None if sharded(acc) else acc.register_save_state_pre_hook(_only_trainable)
    try:
        acc.save_state(str(tmp))
    finally:
        if handle is not None:
            handle.remove()
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / LOOP_FILE).write_text(json.dumps({"step": step, "digest": digest}) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    acc.wait_for_everyone()


def load(acc: Any, directory: Path, *, digest: str) -> Resume | None:
    """Restore the checkpoint in `directory` if it was written for this train stage (same
    digest: same data, settings and seed); None when there is none to resume from."""
    loop = directory / LOOP_FILE
    if not loop.is_file():
        return None
    meta = json.loads(loop.read_text())
    if meta.get("digest") != digest:
        return None  # another config's state: this run starts over (and replaces it)
    if sharded(acc):
        acc.load_state(str(directory))
    else:
        _check_trainable(acc, directory)
        acc.load_state(str(directory), strict=False)
    return Resume(step=int(meta["step"]))


def _check_trainable(acc: Any, directory: Path) -> None:
    """strict=False lets the frozen weights stay as loaded from the base; the trainable ones
    must all be in the checkpoint, or the resumed run would silently train from scratch."""
    from safetensors import safe_open

    for i, model in enumerate(acc._models):
        file = directory / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
        with safe_open(str(file), framework="pt") as f:
            saved = set(f.keys())
        wanted = {n for n, p in model.named_parameters() if p.requires_grad}
        missing = wanted - saved
        if missing:
            raise ValueError(
                f"{directory}: the checkpoint lacks {len(missing)} trainable weights "
                f"(e.g. {sorted(missing)[0]}); delete it to start over"
            )


def clear(directory: Path) -> None:
    for path in (directory, directory.with_name(directory.name + ".tmp")):
        if path.exists():
            shutil.rmtree(path)
