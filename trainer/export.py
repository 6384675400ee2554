"""Turn a trained delta into a checkpoint version of the service's contract.

`assemble` loads the base model (the packaged GGUF, or an HF directory), merges the delta and
publishes both views through `service.checkpoint.views.build_version`: staged, READY written
last, moved into the root atomically, so a running service can pick it up. The trainer's export
and `critic-rm assemble` (what `make serve` runs on the committed default delta) share it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from service.checkpoint.manifest import FORMAT_VERSION, RewardStats, SamplingDefaults, Templates
from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from trainer.model import apply_delta, read_delta

log = logging.getLogger(__name__)


def delta_digest(delta: Path) -> str:
    """sha256 over the delta's weight files: identifies the trained model across machines."""
    import hashlib

    from service.checkpoint.store import sha256_file

    files = sorted(f for f in delta.rglob("*.safetensors"))
    blob = "".join(f"{f.relative_to(delta)}:{sha256_file(f)}\n" for f in files)
    return hashlib.sha256(blob.encode()).hexdigest()


def find_assembled(root: Path, delta: Path) -> str | None:
    """A version in `root` already assembled from this delta, if any."""
    from service.checkpoint.store import CheckpointError, load_version

    digest = delta_digest(delta)
    store = CheckpointRoot(root)
    for name in store.list_versions():
        try:
            manifest = load_version(store.version_path(name), verify_hashes=False).manifest
        except CheckpointError:
            continue
        if manifest.metrics.get("delta_sha256") == digest:
            return name
    return None


def assemble(
    delta: Path,
    root: Path,
    *,
    make_current: bool = True,
    metrics: dict[str, Any] | None = None,
    reward_stats: dict[str, float] | None = None,
) -> CheckpointVersion:
    """Publish base model + delta as a version in `root` (content-addressed: publishing the same
    delta twice reuses the version)."""
    from service.checkpoint.bootstrap import load_base_model
    from service.checkpoint.views import build_version

    meta = read_delta(delta)
    base = meta.get("base_model")
    lm, tokenizer, label, _ = load_base_model(Path(base) if base else None)
    merged, head = apply_delta(lm, delta)  # merged in float32
    stats = reward_stats or meta.get("reward_stats")
    version = build_version(
        CheckpointRoot(root),
        merged,
        tokenizer,
        head,
        base_model=label,
        name=meta["name"],
        reward_head_trained=True,
        templates=Templates.model_validate(meta["templates"]),
        reward_token=meta["reward_token"],
        format_version=meta.get("format_version", FORMAT_VERSION),
        sampling=SamplingDefaults.model_validate(meta["sampling"]),
        reward_stats=RewardStats(mean=stats["mean"], std=stats["std"]) if stats else None,
        metrics={
            **(metrics if metrics is not None else meta.get("metrics", {})),
            "delta_sha256": delta_digest(delta),
        },
        make_current=make_current,
    )
    expected = meta.get("model_version")
    if expected and expected != version.manifest.model_version:
        # Merging in float32 on another CPU/GPU can round differently in the last bit.
        log.warning(
            "assembled %s; the trainer published %s from the same delta (float rounding of "
            "the merge differs on this machine)",
            version.manifest.model_version,
            expected,
        )
    return version
