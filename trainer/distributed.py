"""The process group the trainer runs in, through Hugging Face Accelerate.

`critic-rm train` runs as one process, or as N under `accelerate launch --config_file C` (DDP,
FSDP, DeepSpeed ZeRO-3; trainer/configs/accelerate/). Every process runs the pipeline; the
stages other than train run on the main process only while the others wait (trainer.pipeline),
and in train each process takes its share of every optimizer step's pairs."""

from __future__ import annotations

import os
from datetime import timedelta
from functools import lru_cache
from typing import Any

# The stages before train (critique sampling with a vLLM engine) can run for hours on the main
# process while the others wait in a barrier; torch's 30-minute default would kill them.
BARRIER_TIMEOUT = timedelta(hours=24)


def world_size() -> int:
    """Processes the launcher started (accelerate launch and torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True under a launcher that starts several processes (accelerate launch, torchrun)."""
    return world_size() > 1


@lru_cache(maxsize=1)
def state() -> Any:
    """Accelerate's process state (initialises the process group once, gloo on CPU)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import InitProcessGroupKwargs

    kwargs = InitProcessGroupKwargs(timeout=BARRIER_TIMEOUT).to_kwargs()
    return PartialState(cpu=not torch.cuda.is_available(), **kwargs)


def is_main() -> bool:
    return not launched() or bool(state().is_main_process)


def barrier() -> None:
    if launched():
        state().wait_for_everyone()


def broadcast(value: Any) -> Any:
    """The main process's `value`, on every process (the others pass anything)."""
    import torch.distributed as dist

    state()
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def accelerator(
    *, mixed_precision: str, log_with: list[str], project_dir: str, accumulation_steps: int = 1
) -> Any:
    """The Accelerator for the train stage, on the process state above.

    Accelerate enables FSDP only on accelerator devices; on CPU (gloo), which is how this
    machine and CI test sharding, the plugin is attached here, and FSDP2 shards the same way."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state()  # the process group, with the long barrier timeout, before Accelerator's own
    acc = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=accumulation_steps,
        log_with=log_with or None,
        project_dir=project_dir,
    )
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and acc.state.distributed_type == DistributedType.MULTI_CPU:
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # read from the launch env
        acc.state.distributed_type = DistributedType.FSDP
        # Every later AcceleratorState() copies the partial state over its own: set both.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc


def kind(acc: Any) -> str:
    """single, ddp, fsdp or deepspeed: what the train log and summary report."""
    from accelerate.utils import DistributedType

    t = acc.distributed_type
    if t == DistributedType.FSDP:
        return "fsdp"
    if t == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "single" if acc.num_processes == 1 else "ddp"
