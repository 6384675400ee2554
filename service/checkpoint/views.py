"""Write a checkpoint version's two views of one backbone: generator (causal LM) and scorer.

Used by `critic-rm bootstrap` and by the trainer's export, so both produce the same contract.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from service.checkpoint.manifest import (
    FORMAT_VERSION,
    GENERATOR_DIR,
    REWARD_HEAD_FILE,
    REWARD_HEAD_KEY,
    SCORER_DIR,
    Manifest,
    RewardStats,
    SamplingDefaults,
    Templates,
)
from service.checkpoint.store import CheckpointRoot, CheckpointVersion, load_version, sha256_file

INDEX_FILE = "model.safetensors.index.json"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)


def init_reward_head(hidden_size: int, std: float, seed: int = 0) -> torch.Tensor:
    """A deterministic, untrained reward head of shape [1, hidden] (same draw for the same seed)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, hidden_size, generator=gen, dtype=torch.float32) * std


def write_generator_view(model: Any, tokenizer: Any, out: Path) -> None:
    """Save an HF causal LM and its tokenizer as safetensors into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def write_scorer_view(generator: Path, out: Path, reward_head: torch.Tensor) -> None:
    """Scorer view: generator config as XForSequenceClassification with num_labels=1, backbone
    weights as relative symlinks into the generator view, the head in its own file, and an index
    naming both so vLLM and transformers each load backbone + head."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((generator / "config.json").read_text())
    archs = config.get("architectures") or ["LlamaForCausalLM"]
    config["architectures"] = [
        re.sub(r"For(CausalLM|ConditionalGeneration)$", "", archs[0]) + "ForSequenceClassification"
    ]
    config["num_labels"] = 1
    config["id2label"] = {"0": "reward"}
    config["label2id"] = {"reward": 0}
    if config.get("pad_token_id") is None:
        eos = config.get("eos_token_id")
        config["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    weight_map: dict[str, str] = {}
    total = 0
    for shard in sorted(generator.glob("*.safetensors")):
        link = out / shard.name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(Path("..") / generator.name / shard.name, link)
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                weight_map[key] = shard.name
        total += shard.stat().st_size
    head = reward_head.detach().to(torch.float32).reshape(1, -1).contiguous()
    save_file({REWARD_HEAD_KEY: head}, str(out / REWARD_HEAD_FILE))
    weight_map[REWARD_HEAD_KEY] = REWARD_HEAD_FILE
    total += head.numel() * head.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    for name in _TOKENIZER_FILES:
        if (generator / name).is_file():
            shutil.copy2(generator / name, out / name)


def weight_hashes(version_dir: Path) -> dict[str, str]:
    """sha256 of every real weight file of a version (symlinks are hashed through their target)."""
    hashes = {}
    for file in sorted(version_dir.rglob("*.safetensors")):
        if file.is_symlink():
            continue
        hashes[str(file.relative_to(version_dir))] = sha256_file(file)
    return hashes


def version_id(
    prefix: str,
    files: dict[str, str],
    templates: Templates,
    reward_token: str,
    format_version: int = FORMAT_VERSION,
) -> str:
    """Content-derived id: the same weights, templates and format always get the same version
    (format 1 hashes as it always did, so existing ids stay)."""
    parts: list[object] = [files, templates.model_dump(), reward_token]
    if format_version != FORMAT_VERSION:
        parts.append(format_version)
    blob = json.dumps(parts, sort_keys=True).encode()
    slug = re.sub(r"[^a-z0-9]+", "-", prefix.lower()).strip("-") or "model"
    return f"{slug}-{hashlib.sha256(blob).hexdigest()[:12]}"


def build_version(
    root: CheckpointRoot,
    model: Any,
    tokenizer: Any,
    reward_head: torch.Tensor,
    *,
    base_model: str,
    name: str,
    reward_head_trained: bool,
    templates: Templates | None = None,
    reward_token: str = "<|endoftext|>",
    format_version: Literal[1, 2] = FORMAT_VERSION,
    sampling: SamplingDefaults | None = None,
    reward_stats: RewardStats | None = None,
    metrics: dict[str, Any] | None = None,
    make_current: bool = True,
) -> CheckpointVersion:
    """Write both views into a staging directory, then publish it atomically into `root`.

    If a version with the same content already exists it is reused (and made current)."""
    templates = templates or Templates()
    reward_ids = tokenizer.encode(reward_token, add_special_tokens=False)
    if len(reward_ids) != 1:
        raise ValueError(f"reward token {reward_token!r} must be one token, got {reward_ids}")
    staging = root.staging_dir()
    try:
        write_generator_view(model, tokenizer, staging / GENERATOR_DIR)
        write_scorer_view(staging / GENERATOR_DIR, staging / SCORER_DIR, reward_head)
        files = weight_hashes(staging)
        manifest = Manifest(
            model_version=version_id(name, files, templates, reward_token, format_version),
            format_version=format_version,
            base_model=base_model,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            templates=templates,
            reward_token=reward_token,
            sampling=sampling or SamplingDefaults(),
            reward_stats=reward_stats,
            reward_head_trained=reward_head_trained,
            files=files,
            metrics=metrics or {},
        )
        existing = root.versions_dir / manifest.model_version
        if existing.exists():
            root.discard_staging(staging)
            if make_current:
                root.set_current(manifest.model_version)
            return load_version(existing, verify_hashes=False)
        path = root.publish(staging, manifest, make_current=make_current)
    except BaseException:
        root.discard_staging(staging)
        raise
    return load_version(path, verify_hashes=False)
