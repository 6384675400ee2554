"""Publish a copy of a version with a freshly initialised reward head: a second, different version
of the same backbone (reload drills, load tests, tests). Backbone files are hard-linked."""

from __future__ import annotations

import json
import os
import shutil
from typing import Literal

from service.checkpoint.manifest import FORMAT_VERSION, REWARD_HEAD_FILE, REWARD_HEAD_KEY
from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.checkpoint.views import init_reward_head, version_id, weight_hashes


def publish_head_variant(
    root: CheckpointRoot,
    base: CheckpointVersion,
    seed: int | None,
    format_version: Literal[1, 2] = FORMAT_VERSION,
) -> str:
    """Publish (not as current) `base` with a reward head drawn from `seed` (None: its own),
    read as checkpoint `format_version` states; its version id."""
    from safetensors.torch import save_file

    staging = root.staging_dir()
    shutil.copytree(base.generator_path, staging / "generator", copy_function=os.link)
    shutil.copytree(base.scorer_path, staging / "scorer", symlinks=True, copy_function=shutil.copy2)
    if seed is not None:
        head_file = staging / "scorer" / REWARD_HEAD_FILE
        hidden = json.loads((staging / "generator" / "config.json").read_text())["hidden_size"]
        head_file.unlink()
        save_file({REWARD_HEAD_KEY: init_reward_head(hidden, 0.02, seed=seed)}, str(head_file))
    files = weight_hashes(staging)
    m = base.manifest
    name = f"variant-{seed if seed is not None else 'head'}"
    if format_version != FORMAT_VERSION:
        name += f"-format{format_version}"
    manifest = m.model_copy(
        update={
            "model_version": version_id(name, files, m.templates, m.reward_token, format_version),
            "files": files,
            "format_version": format_version,
        }
    )
    root.publish(staging, manifest, make_current=False)
    return manifest.model_version
