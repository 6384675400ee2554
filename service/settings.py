"""Service settings: one object, read from CRM_* environment variables, every field defaulted."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.contract.options import OptionLimits, PolicyLimits
from service.engines.config import EngineConfig, all_cpus
from service.engines.dtype import cpu_flags, cuda_available, resolve_layout

# The engines' own defaults are the settings' defaults.
_E = EngineConfig


class Settings(BaseSettings):
    """Everything the gateway and its engines can be configured with (env prefix CRM_)."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    # --- server
    host: str = Field("0.0.0.0", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    log_level: str = Field("info", description="Python log level for the service loggers.")

    # --- checkpoint
    checkpoint_root: Path = Field(
        Path("checkpoints"),
        description="Checkpoint root holding versions/ and the current pointer.",
    )
    model_version: str | None = Field(
        None, description="Serve this version instead of the one `current` points to."
    )
    verify_hashes: bool = Field(True, description="Check sha256 of every weight file on load.")

    # --- engines
    engine_layout: Literal["auto", "two", "one", "fused"] = Field(
        "auto",
        description="two: a generator engine and a pooling scorer engine (two copies of the "
        "weights); one: one generate engine whose reserved token's logit is the reward (one "
        "copy, the scorer's dtype); fused: that engine reading the reward while it generates "
        "the critique (checkpoint format 2; a format-1 checkpoint is served on one); auto: "
        "fused on CPUs and where both dtypes match, a format-1 checkpoint then on one where "
        "the generator would run in the scorer's dtype anyway, else two; two on GPUs with the "
        "default dtypes (/info says which).",
    )
    generator_backend: Literal["vllm"] = Field("vllm", description="Critique generator engine.")
    scorer_backend: Literal["vllm", "torch"] = Field(
        _E.scorer_backend,
        description="Reward scorer engine: vLLM pooling, or the torch reference scorer.",
    )
    generator_dtype: str = Field(
        _E.generator_dtype,
        description="Generator dtype; auto: bfloat16 on GPUs and on CPUs with native bf16 "
        "(AVX512-BF16/AMX), float32 on other CPUs, where bf16 is emulated and 3x slower.",
    )
    scorer_dtype: str = Field(
        _E.scorer_dtype,
        description="Scorer dtype; float32 keeps rewards equal to the trainer's reference scorer.",
    )
    max_model_len: int = Field(
        _E.max_model_len,
        ge=64,
        description="Context length for both engines (prompt + response + critique).",
    )
    kv_cache_gib: float = Field(
        _E.kv_cache_gib, gt=0, description="KV cache size per engine on CPU (GiB); ignored on GPU."
    )
    gpu_memory_utilization: float = Field(
        _E.gpu_memory_utilization,
        gt=0,
        le=0.95,
        description="GPU memory fraction per engine (two engines share a GPU).",
    )
    tensor_parallel_size: int = Field(
        _E.tensor_parallel_size, ge=1, description="Tensor-parallel degree on GPU nodes."
    )
    enforce_eager: bool = Field(
        _E.enforce_eager, description="Disable CUDA graphs / torch.compile."
    )
    cpu_threads_bind: str = Field(
        default_factory=all_cpus,
        description="Cores the CPU engines bind to (VLLM_CPU_OMP_THREADS_BIND); vLLM's own "
        "default binds one core only.",
    )
    max_num_seqs: int = Field(
        _E.max_num_seqs, ge=1, description="Max sequences an engine runs at once."
    )

    # --- request limits
    max_items_per_request: int = Field(512, ge=1, description="Items allowed in one /score call.")
    max_num_critiques: int = Field(16, ge=1, description="Largest m (num_critiques, n) accepted.")
    max_critique_tokens: int = Field(
        512, ge=1, description="Largest max_critique_tokens a request may ask for."
    )
    max_temperature: float = Field(2.0, gt=0, description="Largest temperature accepted.")

    # --- /refine
    max_refine_rounds: int = Field(8, ge=0, description="Largest `rounds` a /refine may ask for.")
    max_refine_candidates: int = Field(
        4, ge=1, description="Largest `candidates` (revisions per round) a /refine may ask for."
    )
    revision_tokens: int = Field(
        256, ge=1, description="Tokens per revision when a /refine does not say."
    )
    max_revision_tokens: int = Field(
        1024, ge=1, description="Largest max_revision_tokens a /refine may ask for."
    )
    policy_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URL prefixes (comma-separated) of the external OpenAI-compatible policies "
        "a /refine may call; empty: only the served generator revises.",
    )
    policy_allow_private: bool = Field(
        False,
        description="Let allow-listed policy URLs resolve to private, loopback or link-local "
        "addresses (a policy server inside the cluster).",
    )
    policy_timeout_s: float = Field(60.0, gt=0, description="Timeout of one policy call.")
    policy_max_response_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Largest policy answer read."
    )
    policy_api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the external policy's API key "
        "(sent as a bearer token; never taken from a request).",
    )

    # --- /compare
    max_compare_samples: int = Field(
        8, ge=1, description="Largest `samples` (judgment trajectories per order) of a /compare."
    )
    max_criteria: int = Field(
        8, ge=1, description="Largest number of criteria a /compare may give or ask for."
    )

    # --- micro-batcher
    batch_max_items: int = Field(64, ge=1, description="Items per engine batch.")
    batch_max_tokens: int = Field(
        262144, ge=1, description="Token budget per engine batch (prompt + critique tokens x m)."
    )
    batch_max_wait_ms: float = Field(
        10.0, ge=0, description="How long the first item of a batch waits for company."
    )

    # --- admission control
    max_queue_items: int = Field(
        4096, ge=1, description="Items allowed to wait for the batcher; beyond it, 429."
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Default per-request deadline (X-Request-Timeout overrides); 504."
    )
    max_request_timeout_s: float = Field(
        3600.0, gt=0, description="Largest deadline a request may ask for."
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Request body limit; 413.")
    body_read_timeout_s: float = Field(
        10.0, gt=0, description="Longest a client may take to send a request body; 408."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys accepted on scoring routes (comma-separated). Set, even to an "
        "empty string, it turns auth on; with no key source at all the service is open.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File with one accepted API key per line ('#' comments), re-read when it "
        "changes; set, it turns auth on, and an empty, missing or unreadable file denies.",
    )
    admin_api_key: str | None = Field(None, description="Bearer key for /admin/* routes.")

    # --- hot reload and shutdown
    reload_poll_s: float = Field(
        5.0, ge=0, description="How often to check the root's `current` pointer (0: never)."
    )
    reload_channel: str = Field(
        "critic-rm:reload", description="Redis channel on which replicas announce reloads."
    )
    health_interval_s: float = Field(
        5.0, ge=0, description="How often to check that the engine processes are alive (0: never)."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    malloc_arena_max: int = Field(
        2,
        ge=0,
        description="glibc malloc arenas in the gateway (0: glibc's default of 8 per core); "
        "fewer keep RSS flat across reloads.",
    )

    # --- cache
    redis_url: str | None = Field(None, description="Redis URL for the shared result cache.")
    redis_timeout_s: float = Field(0.25, gt=0, description="Per-operation Redis timeout.")
    cache_ttl_s: int = Field(86400, ge=1, description="Result TTL in Redis.")
    cache_max_entries: int = Field(100_000, ge=0, description="In-process LRU size (0 disables).")

    # --- start-up
    warmup: bool = Field(True, description="Run a real request through both engines before ready.")

    @field_validator("api_keys", "policy_allowlist", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    def layout(self) -> Literal["two", "one", "fused"]:
        """The engine layout served, with `auto` resolved for this machine (a format-1
        checkpoint runs fused as engine_config().fallback_layout)."""
        return self._layouts()[0]

    def _layouts(self) -> tuple[Literal["two", "one", "fused"], Literal["two", "one"]]:
        if self.engine_layout == "two":
            return "two", "one"
        if self.engine_layout != "auto":  # explicit: never imports torch (the CUDA check)
            return self.engine_layout, "one"
        return resolve_layout(
            self.engine_layout,
            self.generator_dtype,
            self.scorer_dtype,
            self.scorer_backend,
            not cuda_available(),
            cpu_flags(),
        )

    def engine_config(self) -> EngineConfig:
        """What the engines are started with (the engine fields of these settings)."""
        names = [f.name for f in dataclasses.fields(EngineConfig) if f.name != "fallback_layout"]
        fields = {name: getattr(self, name) for name in names}
        fields["engine_layout"], fields["fallback_layout"] = self._layouts()
        return EngineConfig(**fields)

    def option_limits(self) -> OptionLimits:
        """The largest request options accepted."""
        return OptionLimits(
            max_num_critiques=self.max_num_critiques,
            max_temperature=self.max_temperature,
            max_critique_tokens=self.max_critique_tokens,
        )

    def policy_limits(self) -> PolicyLimits:
        """The bounds on external /refine policies."""
        return PolicyLimits(
            allowlist=tuple(self.policy_allowlist),
            allow_private=self.policy_allow_private,
            timeout_s=self.policy_timeout_s,
            max_response_bytes=self.policy_max_response_bytes,
            api_key_env=self.policy_api_key_env,
        )

    def masked(self) -> dict[str, Any]:
        """The resolved settings for the start-up log, with secrets masked."""
        data = self.model_dump(mode="json")
        if data.get("redis_url"):
            data["redis_url"] = _mask_url(data["redis_url"])
        data["api_keys"] = [f"***{len(data['api_keys'])} keys"] if data["api_keys"] else []
        if data.get("admin_api_key"):
            data["admin_api_key"] = "***"

        return data


def _mask_url(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
