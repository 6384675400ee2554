"""The checkpoint contract shared by the service and the trainer: what a version's manifest holds."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.checkpoint.critique_format import CRITIQUE_USER

FORMAT_VERSION: Literal[1] = 1
# Format 2 reads the reward with a critique at the reward token that follows the critique's own
# token ids: [critique prompt(x, y); z; end of turn; reward token], the sequence the generator
# has just written, so the fused layout reads it during generation from the critique's own KV.
# Format 1 reads it on the scorer sequence [chat(x, y); critique_prefix; z; critique_suffix;
# reward token]. Both read the critique-free reward on [chat(x, y); reward token].
FUSED_FORMAT: Literal[2] = 2
FORMAT_VERSIONS = (FORMAT_VERSION, FUSED_FORMAT)
MANIFEST_FILE = "manifest.json"
READY_FILE = "READY"
GENERATOR_DIR = "generator"
SCORER_DIR = "scorer"
REWARD_HEAD_FILE = "reward_head.safetensors"
REWARD_HEAD_KEY = "score.weight"


class Templates(BaseModel):
    """How (prompt x, response y, critique z) become engine inputs.

    Generator input: the tokenizer's chat template over [system, user] built from these strings.
    Scorer input (format 1): chat(x + [assistant: y]) + critique_prefix + z + critique_suffix +
    reward token; format 2: the generator input + z + end of turn + reward token (the prefix and
    suffix strings are unused); both: chat(x + [assistant: y]) + reward token when no critique
    is used (m = 0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    critique_system: str = (
        "You are a strict reviewer of AI assistant answers. You check facts, reasoning, code and "
        "whether the answer follows the user's instructions."
    )
    critique_user: str = CRITIQUE_USER
    critique_prefix: str = "\nCritique:\n"
    critique_suffix: str = "\n"

    def digest(self) -> str:
        """Stable short hash, part of every cache key."""
        blob = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class SamplingDefaults(BaseModel):
    """Per-checkpoint defaults for critique sampling; requests may override within limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_critiques: int = Field(4, ge=0)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_critique_tokens: int = Field(64, ge=1)


class RewardStats(BaseModel):
    """Reward mean/std on the trainer's validation data, for clients that normalise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float
    std: float


class Manifest(BaseModel):
    """manifest.json of one checkpoint version."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    format_version: Literal[1, 2] = FORMAT_VERSION
    model_version: str
    base_model: str
    created_at: str
    templates: Templates = Templates()
    reward_token: str = "<|endoftext|>"
    sampling: SamplingDefaults = SamplingDefaults()
    reward_stats: RewardStats | None = None
    reward_head_trained: bool = False
    generator_dir: str = GENERATOR_DIR
    scorer_dir: str = SCORER_DIR
    files: dict[str, str] = Field(
        default_factory=dict, description="sha256 of every weight file, by path in the version."
    )
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evaluation results.")

    @property
    def fused(self) -> bool:
        """Whether the reward with a critique is read after the critique's own token ids."""
        return self.format_version == FUSED_FORMAT

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"
