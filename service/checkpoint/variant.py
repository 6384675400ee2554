"""Publish a copy of a version with a freshly initialised reward head: a second, different version
of the same backbone (reload drills, load tests, tests). Backbone files are hard-linked."""

from __future__ import annotations

import json
import os
import shutil

from service.checkpoint.manifest import REWARD_HEAD_FILE, REWARD_HEAD_KEY
from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.checkpoint.views import init_reward_head, version_id, weight_hashes


def publish_head_variant(root: CheckpointRoot, base: CheckpointVersion, seed: int) -> str:
    """Publish (not as current) `base` with a reward head drawn from `seed`; its version id."""
    from safetensors.torch import save_file

    staging = root.staging_dir()
    shutil.copytree(base.generator_path, staging / "generator", copy_function=os.link)
    shutil.copytree(base.scorer_path, staging / "scorer", symlinks=True, copy_function=shutil.copy2)
    head_file = staging / "scorer" / REWARD_HEAD_FILE
    hidden = json.loads((staging / "generator" / "config.json").read_text())["hidden_size"]
    head_file.unlink()
    save_file({REWARD_HEAD_KEY: init_reward_head(hidden, 0.02, seed=seed)}, str(head_file))
    files = weight_hashes(staging)
    manifest = base.manifest.model_copy(
        update={
            "model_version": version_id(
                f"variant-{seed}", files, base.manifest.templates, base.manifest.reward_token
            ),
            "files": files,
        }
    )
    root.publish(staging, manifest, make_current=False)
    return manifest.model_version
