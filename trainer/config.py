"""The training recipe: one YAML file, overridable with `--set section.key=value`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    source: str = Field(
        "synthetic", description="'synthetic', or a JSONL file / saved HF dataset of pairs."
    )
    per_category: int = Field(40, ge=1, description="Synthetic pairs per category.")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.25, ge=0, lt=1)
    max_train_pairs: int | None = Field(None, ge=1, description="Cap on training pairs.")


class SamplingConfig(_Section):
    num_critiques: int = Field(4, ge=1, description="N candidate critiques per response.")
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    grounded: bool = Field(
        True,
        description="Pairs with a verifier check get grounded critiques (the verifier's hint in "
        "the sampling prompt, a constrained verdict, the grounded filter); off: judge scores.",
    )
    teacher: bool = Field(
        False,
        description="Grounded pairs take the verifier's finding written as a structured "
        "critique (trainer.verify.teacher) as their one training critique per response, "
        "instead of sampling num_critiques hinted critiques.",
    )
    plain_critiques: int = Field(
        2,
        ge=0,
        description="Critiques per response sampled as the service samples them (no hint), "
        "for the reward head's critique inputs (train.reward_inputs: sampled).",
    )


class ActorConfig(_Section):
    """Who writes the revisions of refine.method utility and eval.critic: the generator, or an
    external OpenAI-compatible chat endpoint (the policy under training), called as /refine
    calls one."""

    url: str | None = Field(
        None,
        description="Base URL of the actor's OpenAI-compatible API (POST {url}/chat/completions); "
        "None: the generator itself.",
    )
    model: str = Field("policy", min_length=1, description="The `model` field sent.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the actor's API key (never the key)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per request.")
    max_response_bytes: int = Field(1_000_000, ge=1024)
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")

    @field_validator("url")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return url


class RefineConfig(_Section):
    method: Literal["ranking", "summarization", "utility", "none"] = Field(
        "ranking",
        description="ranking: the model grades each critique, top K kept; summarization: K "
        "meta-critiques; utility: RCO's critique utility, M revisions per critique judged by "
        "the pair's verifier against the original (trainer/utility.py), top K kept and "
        "(best, worst) critique pairs written; none: the first K.",
    )
    k: int = Field(1, ge=1, description="Critiques kept (ranking) or written (summarization).")
    max_tokens: int = Field(64, ge=1, description="Tokens of a summarised meta-critique.")
    revisions: int = Field(5, ge=1, description="utility: revisions per critique (RCO's M).")
    revision_max_tokens: int = Field(256, ge=1, description="utility: tokens per revision.")
    actor: ActorConfig = ActorConfig()


class LoraConfig(_Section):
    enabled: bool = True
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


RewardInput = Literal["plain", "sampled", "train"]


class PreferenceConfig(_Section):
    """Preference training of the critique head after the joint training (trainer.preference)."""

    loss: Literal["none", "dpo", "rco"] = Field(
        "none",
        description="dpo: DPO on the (high-CU, low-CU) critique pairs of refine.method "
        "utility; rco: RCO's pointwise DRO-style loss on every critique's utility, N per "
        "response; the reference is the model with its LoRA adapter disabled.",
    )
    beta: float = Field(0.1, gt=0)
    lr: float = Field(5e-5, gt=0)
    epochs: int = Field(1, ge=1)
    pairs_per_step: int = Field(8, ge=1, description="Pairs (dpo) or responses (rco) per step.")


class TrainConfig(_Section):
    mode: Literal["critic", "bt", "syncpl"] = Field(
        "critic",
        description="critic: Critic-RM joint training; bt: standard Bradley-Terry RM; syncpl: "
        "the /compare judge trained on its own label-consistent judgment trajectories (RSFT, "
        "then DPO with train.preference.loss dpo) beside a Bradley-Terry reward head.",
    )
    epochs: int = Field(2, ge=1, description="K in the paper's λ(t) schedule.")
    format_version: Literal[1, 2] = Field(
        1,
        description="Checkpoint format: 1 reads the reward with a critique on the scorer "
        "sequence; 2 after the critique's own ids in the generator's (the fused layout).",
    )
    beta: float = Field(0.9, ge=0, le=1, description="How far λ falls in the last epoch.")
    constant_lambda: float | None = Field(None, ge=0, le=1, description="Ablation: fixed λ.")
    lr: float = Field(2e-4, gt=0, description="Learning rate of the adapter or backbone.")
    head_lr: float = Field(2e-3, gt=0, description="Learning rate of the reward head.")
    weight_decay: float = Field(0.0, ge=0)
    pairs_per_step: int = Field(4, ge=1, description="Pairs per optimizer step.")
    micro_batch: int = Field(2, ge=1, description="Pairs per forward pass (accumulated).")
    max_len: int = Field(1024, ge=16)
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "float32",
        description="auto: bfloat16 on GPUs and on CPUs with AVX512-BF16 or AMX, float32 on other "
        "CPUs (where bf16 matmuls are emulated: 86x slower than float32 on an AVX2 EPYC).",
    )
    device: str = Field("auto", description="auto: cuda when available, else cpu.")
    lora: LoraConfig = LoraConfig()
    trainable_layers: int | None = Field(
        None,
        ge=0,
        description="Only the top N decoder layers are trained (LoRA on them, or all their "
        "weights without LoRA); None: every layer.",
    )
    grad_clip: float = Field(1.0, gt=0)
    preference: PreferenceConfig = PreferenceConfig()
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="Autocast through Accelerate (weights stay in train.dtype): bf16 with "
        "float32 weights is what FSDP on GPUs wants.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, about 30% slower."
    )
    reward_inputs: list[RewardInput] = Field(
        default_factory=lambda: list[RewardInput](["plain", "sampled"]),
        description="What the reward head reads in critic mode: plain = [x; y] (the m = 0 "
        "reward), sampled = [x; y; z] with critiques sampled as the service does, train = "
        "[x; y; z] with the refined training critiques (the paper).",
    )

    reward_anchor: float = Field(
        0.0,
        ge=0,
        description="Weight of (r(x, [y; z]) - r(x, y))^2, the plain reward held fixed, beside "
        "Bradley-Terry on sampled critiques (needs reward_inputs plain and sampled): a critique "
        "moves a reward only as far as it helps rank, so noisy critiques average out to the "
        "plain reward instead of memorised offsets; 0: off.",
    )
    anchor_on: Literal["rewards", "margins"] = Field(
        "rewards",
        description="What train.reward_anchor holds to the plain one: each response's reward, "
        "or each pair's margin r(chosen) - r(rejected), the only thing a pairwise ranking "
        "reads (a critique may then shift a reward's level freely).",
    )
    rotate_sampled: bool = Field(
        False,
        description="One of a response pair's sampled critiques per epoch (epoch e reads the "
        "(e mod N)-th), so no [x; y; z] is read again before all N were; off: all N each epoch.",
    )

    @model_validator(mode="after")
    def _accumulation(self) -> TrainConfig:
        if self.pairs_per_step % self.micro_batch:
            raise ValueError("train.pairs_per_step must be a multiple of train.micro_batch")
        if not self.reward_inputs:
            raise ValueError("train.reward_inputs must name at least one input")
        if self.reward_anchor > 0 and not {"plain", "sampled"} <= set(self.reward_inputs):
            raise ValueError(
                "train.reward_anchor needs train.reward_inputs to have both plain and sampled: "
                "the anchor is the plain reward of the responses a sampled critique reads"
            )
        return self


class SyncplConfig(_Section):
    """SyncPL's judgment trajectories (train.mode syncpl), sampled with the /compare prompts at
    sampling.temperature and sampling.top_p."""

    criteria: int = Field(
        3, ge=1, le=8, description="Criteria per trajectory: /compare's num_criteria, default 3."
    )
    samples: int = Field(
        2,
        ge=1,
        le=8,
        description="Trajectories per order (criteria lists sampled per pair) for training; "
        "the evaluation judges as a default /compare request does, with one.",
    )
    rubric_tokens: int = Field(48, ge=1, description="Tokens of a sampled rubric.")
    score_temperature: float = Field(
        1.0,
        ge=0,
        description="Temperature of the training trajectories' scores: SyncPL samples judgments "
        "by their probability, and greedy scores of a small judge are nearly always a tie. "
        "/compare and the evaluation decode scores greedily.",
    )


SplitName = Literal["hard", "length_bias", "heldout_family", "unseen"]


class EvalConfig(_Section):
    on: Literal["test", "validation"] = Field(
        "test",
        description="validation: evaluate on the validation split only (choosing a recipe); "
        "test: the test split and eval.splits (the report).",
    )
    ms: list[int] = Field(default_factory=lambda: [0, 1, 2, 4, 8])
    splits: dict[SplitName, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="Synthetic evaluation splits beside test, made in the eval stage with the "
        "run's seed, with their size (pairs per category; unseen: pairs): hard (surface form "
        "does not decide), length_bias (the rejected response is longer), heldout_family "
        "(template families never trained on), unseen (a category the training data lacks).",
    )
    max_pairs: int | None = Field(None, ge=1, description="Cap on test pairs evaluated.")
    stats_pairs: int = Field(16, ge=0, description="Validation pairs for reward mean/std.")
    critic: bool = Field(
        False,
        description="Also what the critic is for (trainer.critic_eval), for this version and "
        "the base: mean critique utility and the fix rate after 1 and 2 critique-revision "
        "rounds, on the evaluated pairs that have a verifier.",
    )
    critic_pairs: int = Field(
        40, ge=1, description="Pairs per split for eval.critic (each costs revisions)."
    )
    compare: dict[str, str] = Field(
        default_factory=dict,
        description="Other checkpoint version directories to evaluate beside this one, by label.",
    )


class ExportConfig(_Section):
    checkpoint_root: str = Field("checkpoints", description="Where the version is published.")
    name: str = "critic-rm"
    make_current: bool = True
    delta_dir: str | None = Field(
        None, description="Also write the trained delta (adapter + head + manifest) here."
    )


class EngineConfig(_Section):
    layout: Literal["two", "one", "fused"] = Field(
        "two",
        description="The service's engine layout for critique sampling and evaluation: two "
        "(generator + pooling scorer), one (one engine, the reward read as a token's logit) or "
        "fused (that engine reading a format-2 reward while it generates).",
    )
    max_model_len: int = 2048
    kv_cache_gib: float = 1.0
    max_num_seqs: int = 256
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per engine (a backbone too large for one), as the service."
    )
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Of each GPU, for an engine (the trainer runs one at a time)."
    )
    data_parallel: int = Field(
        1,
        ge=1,
        description="Engine replicas for critique sampling, each on its own tensor_parallel_size "
        "GPUs; the pairs are sharded among them and merged back in order, resumable per shard "
        "(on CPU the replicas run one after another).",
    )


class TrackingConfig(_Section):
    """Experiment tracking (not part of any stage's digest: changing it reruns nothing)."""

    tensorboard: bool = Field(True, description="TensorBoard event files under OUT/tb.")
    wandb: bool = Field(
        False,
        description="Weights & Biases (pip install wandb; WANDB_MODE=offline writes OUT/wandb "
        "without a network).",
    )
    project: str = "critic-rm"


class CheckpointingConfig(_Section):
    """Step-level checkpoints of the train stage (trainer.train_state; not in any digest)."""

    every_steps: int = Field(
        50, ge=0, description="Optimizer steps between checkpoints; 0: only on SIGTERM."
    )


class Config(_Section):
    seed: int = 0
    out_dir: str = "runs/default"
    base_model: str | None = Field(
        None, description="HF model directory; None: the packaged SmolLM2-135M-Instruct GGUF."
    )
    data: DataConfig = DataConfig()
    sampling: SamplingConfig = SamplingConfig()
    refine: RefineConfig = RefineConfig()
    syncpl: SyncplConfig = SyncplConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    engine: EngineConfig = EngineConfig()
    tracking: TrackingConfig = TrackingConfig()
    checkpointing: CheckpointingConfig = CheckpointingConfig()

    @model_validator(mode="after")
    def _critique_inputs(self) -> Config:
        t = self.train
        if (
            t.mode == "critic"
            and "sampled" in t.reward_inputs
            and self.sampling.plain_critiques < 1
        ):
            raise ValueError(
                "train.reward_inputs has 'sampled' but sampling.plain_critiques is 0: the reward "
                "head would get no sampled critiques"
            )
        if t.preference.loss != "none" and not t.lora.enabled:
            raise ValueError(
                "train.preference.loss needs train.lora.enabled (the reference is the model "
                "with its adapter disabled)"
            )
        if t.mode == "syncpl" and t.preference.loss == "rco":
            raise ValueError("train.preference.loss rco needs train.mode critic (critique utility)")
        if t.mode == "critic" and t.preference.loss != "none" and self.refine.method != "utility":
            raise ValueError(
                "train.preference.loss needs refine.method=utility in critic mode (its "
                "critique pairs and utilities)"
            )
        if self.sampling.teacher and not self.sampling.grounded:
            raise ValueError(
                "sampling.teacher needs sampling.grounded: teacher critiques are the verifier's"
            )
        return self

    @property
    def out(self) -> Path:
        return Path(self.out_dir)


class ConfigError(ValueError):
    pass


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section; a list or value replaces the base's."""
    out = dict(base)
    for key, value in over.items():
        below = out.get(key)
        out[key] = (
            _merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
        )
    return out


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file; its `base:` key names the recipe it changes, relative to the file, so an
    ablation states only what differs."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: recipes name each other as base in a loop")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the path of another recipe")
    return _merge(_read_tree(path.parent / base, (*seen, path)), loaded)


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    tree: dict[str, Any] = {}
    if path is not None:
        tree = _read_tree(Path(path))
    for assignment in overrides or []:
        apply_override(tree, assignment)
    try:
        return Config.model_validate(tree)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
