"""The synthetic preference data (kept as the module the stages import); the generator itself
lives in trainer.data.synth, one module per category."""

from __future__ import annotations

from trainer.data.synth import (
    CATEGORIES,
    CODE_TASKS,
    HELDOUT_FAMILIES,
    UNSEEN_CATEGORY,
    generate,
    generate_hard,
    generate_heldout,
    generate_length_bias,
    generate_unseen,
    group_key,
    split,
)

__all__ = [
    "CATEGORIES",
    "CODE_TASKS",
    "HELDOUT_FAMILIES",
    "UNSEEN_CATEGORY",
    "generate",
    "generate_hard",
    "generate_heldout",
    "generate_length_bias",
    "generate_unseen",
    "group_key",
    "split",
]
