"""vLLM engines. Layout `two`: an AsyncLLM generator over the generator view and an AsyncLLM
pooling engine over the scorer view. Layout `one`: one generate AsyncLLM over the scorer view
whose model writes the reward into a reserved token's logit (reward_logit_model), serving both.
Layout `fused`: that engine, whose critique requests also end with the forced tail of checkpoint
format 2 (fused_tail) and so return their reward. Each engine core runs in a child process;
only light async bookkeeping happens on the gateway's event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from service.engines.base import Critique, EngineStats, SamplingSpec
from service.engines.config import EngineConfig
from service.engines.dtype import generator_dtype

log = logging.getLogger(__name__)
T = TypeVar("T")

GiB = 1 << 30


def configure_cpu_env(config: EngineConfig) -> None:
    """vLLM-CPU reads these at engine start: bind OpenMP to every allowed core (its default binds
    one core and reserves the rest, halving throughput on small machines)."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", config.cpu_threads_bind)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # With torch >= 2.12 vLLM 0.32 saves its compiled model as a "mega AOT artifact" that it then
    # fails to load on CPU ("'function' object has no attribute 'finalize_loading'"), so every
    # start recompiled (~45 s per engine). The classic Inductor cache loads fine: 56 s -> 25 s.
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def engine_args(
    model: Path,
    config: EngineConfig,
    *,
    pooling: bool,
    reward_logit_id: int | None = None,
    fused: bool = False,
) -> Any:
    """A generator's, a pooling scorer's, or (``reward_logit_id`` given) the one engine's, with
    the fused layout's logits processor (``fused``)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    one = reward_logit_id is not None
    kwargs: dict[str, Any] = {
        "model": str(model),
        "dtype": config.scorer_dtype if pooling else generator_dtype(config),
        # A scoring request is its whole sequence plus the one token it samples.
        "max_model_len": config.max_model_len + (1 if one else 0),
        "enable_prefix_caching": True,
        "tensor_parallel_size": config.tensor_parallel_size,
        "enforce_eager": config.enforce_eager,
        "max_num_seqs": config.max_num_seqs,
        "seed": 0,
    }
    if pooling:
        kwargs["runner"] = "pooling"
    if one:
        from service.engines.vllm_plugin import ARCHITECTURE, TOKEN_KEY

        kwargs["runner"] = "generate"
        kwargs["hf_overrides"] = {"architectures": [ARCHITECTURE], TOKEN_KEY: reward_logit_id}
        # T's value is read from the raw logits, copied before logit_bias and temperature.
        kwargs["logprobs_mode"] = "raw_logits"
        if fused:
            from service.engines.vllm_plugin import TAIL_PROCESSOR

            kwargs["logits_processors"] = [TAIL_PROCESSOR]
    if _on_cpu():
        kwargs["kv_cache_memory_bytes"] = int(config.kv_cache_gib * GiB)
    else:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    return AsyncEngineArgs(**kwargs)


async def _run_all(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run requests concurrently; if one fails, cancel (and so abort) the rest."""
    tasks = [asyncio.ensure_future(call()) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _last(stream: AsyncIterator[T]) -> T:
    final: T | None = None
    async for out in stream:
        final = out
    if final is None:
        raise RuntimeError("engine returned no output")
    return final


@dataclass(frozen=True)
class FusedTail:
    """The fused layout's critique ending: `tail` is [end of turn, reward token, T]; the value
    of T when it is forced is the reward. `decode` turns a critique's ids into its text."""

    tail: tuple[int, ...]
    decode: Callable[[list[int]], str]

    @property
    def token(self) -> int:
        return self.tail[-1]

    def extra_args(self, budget: int) -> dict[str, Any]:
        from service.engines.vllm_plugin import TAIL_KEY

        banned = list(self.tail[1:])  # a free critique never writes the reward token or T
        return {TAIL_KEY: {"budget": budget, "tail": list(self.tail), "banned": banned}}

    def critique(self, ids: Sequence[int], logprobs: Any, budget: int) -> Critique:
        """One completion as a critique with its reward; without a whole tail (the context
        ran out), a critique without a reward, which the scorer then scores."""
        n = len(self.tail)
        whole = len(ids) >= n and tuple(ids[-n:]) == self.tail
        body = list(ids[:-n]) if whole else [t for t in ids if t not in self.tail]
        reward = None
        if whole and logprobs and self.token in logprobs[-1]:
            reward = float(logprobs[-1][self.token].logprob)
        finish = "stop" if len(body) < budget else "length"
        text = self.decode(body).strip()
        return Critique(text, len(body), finish, reward=reward, token_ids=tuple(body))


class VllmCritiqueGenerator:
    """Critique sampling on a vLLM AsyncLLM: one request per item, n=m, FINAL_ONLY outputs.
    With `fused` (the fused layout), an unconstrained critique request ends with the forced
    tail and returns each critique's reward; a constrained one (regex, read_ids) is sampled as
    on the one engine, and its reward is scored afterwards."""

    def __init__(
        self, engine: Any, banned_token: int | None = None, fused: FusedTail | None = None
    ) -> None:
        self.engine = engine
        # The one engine's reward token: its logit is a reward, never a critique's next token.
        self.logit_bias = None if banned_token is None else {banned_token: -100.0}
        self.fused = fused

    @classmethod
    def load(cls, model: Path, config: EngineConfig) -> VllmCritiqueGenerator:
        from vllm.v1.engine.async_llm import AsyncLLM

        return cls(AsyncLLM.from_engine_args(engine_args(model, config, pooling=False)))

    async def generate(
        self, prompts: Sequence[list[int]], specs: Sequence[SamplingSpec]
    ) -> tuple[list[list[Critique]], EngineStats]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        stats = EngineStats()

        async def fused(ids: list[int], spec: SamplingSpec, tail: FusedTail) -> list[Critique]:
            params = SamplingParams(
                n=spec.n,
                temperature=spec.temperature,
                top_p=spec.top_p,
                max_tokens=spec.max_tokens + len(tail.tail),
                # The tail processor ends the critique; the request stops on T.
                ignore_eos=True,
                stop_token_ids=[tail.token],
                logit_bias=self.logit_bias,
                logprob_token_ids=[tail.token],
                detokenize=False,
                extra_args=tail.extra_args(spec.max_tokens),
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            out = await _last(
                self.engine.generate(
                    TokensPrompt(prompt_token_ids=ids), params, request_id=f"gen-{uuid.uuid4()}"
                )
            )
            stats.prompt_tokens += len(ids)
            stats.cached_prompt_tokens += out.num_cached_tokens or 0
            return [tail.critique(c.token_ids, c.logprobs, spec.max_tokens) for c in out.outputs]

        async def one(ids: list[int], spec: SamplingSpec) -> list[Critique]:
            if self.fused is not None and not spec.regex and not spec.read_ids:
                return await fused(ids, spec, self.fused)
            # No per-request seed: on vLLM-CPU it kills the worker ("CPU Generator does not
            # use offset"); sampling uses the engine's seeded generator instead.
            params = SamplingParams(
                n=spec.n,
                temperature=spec.temperature,
                top_p=spec.top_p,
                max_tokens=spec.max_tokens,
                skip_special_tokens=True,
                logit_bias=self.logit_bias,
                output_kind=RequestOutputKind.FINAL_ONLY,
                structured_outputs=(
                    StructuredOutputsParams(regex=spec.regex) if spec.regex else None
                ),
                logprob_token_ids=list(spec.read_ids) or None,
            )
            out = await _last(
                self.engine.generate(
                    TokensPrompt(prompt_token_ids=ids), params, request_id=f"gen-{uuid.uuid4()}"
                )
            )
            stats.prompt_tokens += len(ids)
            stats.cached_prompt_tokens += out.num_cached_tokens or 0
            return [
                Critique(
                    c.text.strip(),
                    len(c.token_ids),
                    c.finish_reason or "stop",
                    _first_values(c.logprobs, spec.read_ids) if spec.read_ids else None,
                )
                for c in out.outputs
            ]

        calls = [functools.partial(one, i, s) for i, s in zip(prompts, specs, strict=True)]
        return await _run_all(calls), stats

    async def check_health(self) -> None:
        await self.engine.check_health()

    def shutdown(self) -> None:
        self.engine.shutdown()


def _first_values(logprobs: Any, ids: Sequence[int]) -> tuple[float, ...] | None:
    """The values of `ids` at a completion's first step, or None where the engine returned
    none (an empty completion)."""
    if not logprobs or any(i not in logprobs[0] for i in ids):
        return None
    return tuple(float(logprobs[0][i].logprob) for i in ids)


class VllmRewardScorer:
    """Reward scoring on a vLLM pooling AsyncLLM: raw classify output (no activation) at the last
    token; all sequences of a batch are submitted at once so the scheduler batches them and the
    prefix cache shares each item's [x; y] across its m critiques."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @classmethod
    def load(cls, model: Path, config: EngineConfig) -> VllmRewardScorer:
        from vllm.v1.engine.async_llm import AsyncLLM

        return cls(AsyncLLM.from_engine_args(engine_args(model, config, pooling=True)))

    async def score(self, sequences: Sequence[list[int]]) -> tuple[list[float], EngineStats]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        stats = EngineStats()

        async def one(ids: list[int]) -> float:
            params = PoolingParams(task="classify", use_activation=False)
            out = await _last(
                self.engine.encode(
                    TokensPrompt(prompt_token_ids=ids), params, request_id=f"score-{uuid.uuid4()}"
                )
            )
            stats.prompt_tokens += len(ids)
            stats.cached_prompt_tokens += getattr(out, "num_cached_tokens", 0) or 0
            return float(out.outputs.data.reshape(-1)[0])

        return await _run_all([functools.partial(one, s) for s in sequences]), stats

    async def check_health(self) -> None:
        await self.engine.check_health()

    def shutdown(self) -> None:
        self.engine.shutdown()


class VllmLogitScorer:
    """Reward scoring on the one engine: a greedy one-token request per sequence whose raw
    logit at the reserved token is the reward at the sequence's last token. Beside a generator,
    the generator owns the engine (shuts it down); alone (owns_engine), the scorer does. Batches
    are submitted at once as on the pooling scorer."""

    def __init__(self, engine: Any, token: int, owns_engine: bool = False) -> None:
        self.engine = engine
        self.token = token
        self.owns_engine = owns_engine

    async def score(self, sequences: Sequence[list[int]]) -> tuple[list[float], EngineStats]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        stats = EngineStats()
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            logprob_token_ids=[self.token],
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

        async def one(ids: list[int]) -> float:
            out = await _last(
                self.engine.generate(
                    TokensPrompt(prompt_token_ids=ids), params, request_id=f"score-{uuid.uuid4()}"
                )
            )
            stats.prompt_tokens += len(ids)
            stats.cached_prompt_tokens += out.num_cached_tokens or 0
            logprobs = out.outputs[0].logprobs
            if not logprobs or self.token not in logprobs[0]:
                raise RuntimeError(f"the engine returned no logit for token {self.token}")
            return float(logprobs[0][self.token].logprob)

        return await _run_all([functools.partial(one, s) for s in sequences]), stats

    async def check_health(self) -> None:
        await self.engine.check_health()

    def shutdown(self) -> None:
        if self.owns_engine:
            self.engine.shutdown()


def load_one_engine(
    model: Path, config: EngineConfig, token: int, fused: FusedTail | None = None
) -> tuple[VllmCritiqueGenerator, VllmLogitScorer]:
    """The one engine over the scorer view, as a generator and a scorer; with `fused`, its
    critiques come with their rewards."""
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(
        engine_args(model, config, pooling=False, reward_logit_id=token, fused=fused is not None)
    )
    generator = VllmCritiqueGenerator(engine, banned_token=token, fused=fused)
    return generator, VllmLogitScorer(engine, token)
