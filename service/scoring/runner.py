"""One engine batch: sample m critiques per item (one request, n=m), then score every
[x; y; z_j; reward token] of the batch together (except critiques whose reward the fused layout
read while generating them), then average per item."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from service.contract.formatting import EncodedItem
from service.engines.base import Critique, SamplingSpec
from service.model.runtime import ModelRuntime
from service.observability.metrics import Metrics
from service.scoring.aggregate import mean_and_std
from service.scoring.batcher import BatchInfo
from service.scoring.structured import close_with_verdicts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One item to compute, bound to the runtime (model version) that encoded it."""

    runtime: ModelRuntime
    encoded: EncodedItem
    spec: SamplingSpec

    @property
    def cost(self) -> int:
        """Token budget estimate for batching: prompts plus everything sampled and scored."""
        n = self.spec.n
        gen = len(self.encoded.critique_prompt) + n * self.spec.max_tokens if n else 0
        score = max(n, 1) * (len(self.encoded.score_prefix) + self.spec.max_tokens)
        return gen + score


@dataclass(frozen=True)
class ItemResult:
    """The computed result of one item (cacheable as JSON)."""

    reward: float
    critique_rewards: list[float]
    reward_std: float
    critiques: list[Critique]
    prompt_tokens: int
    critique_tokens: int

    def to_json(self) -> dict[str, object]:
        return {
            "reward": self.reward,
            "critique_rewards": self.critique_rewards,
            "reward_std": self.reward_std,
            "critiques": [[c.text, c.num_tokens, c.finish_reason] for c in self.critiques],
            "prompt_tokens": self.prompt_tokens,
            "critique_tokens": self.critique_tokens,
        }

    @classmethod
    def from_json(cls, data: object) -> ItemResult:
        """Parse a cached result; ValueError for anything that is not one (a corrupt or foreign
        cache entry must never reach a client, least of all as a non-finite reward)."""
        if not isinstance(data, dict):
            raise ValueError(f"a cached result is a JSON object, not {type(data).__name__}")
        try:
            critiques = [
                Critique(_text(t), _count(n), _text(f)) for t, n, f in _items(data["critiques"])
            ]
            result = cls(
                reward=_finite(data["reward"]),
                critique_rewards=[_finite(r) for r in _items(data["critique_rewards"])],
                reward_std=_finite(data["reward_std"]),
                critiques=critiques,
                prompt_tokens=_count(data["prompt_tokens"]),
                critique_tokens=_count(data["critique_tokens"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed cached result: {type(exc).__name__}: {exc}") from None
        if len(result.critique_rewards) != len(result.critiques):
            raise ValueError("cached result: critiques and critique_rewards differ in length")
        return result


def _items(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _finite(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a finite number, got {type(value).__name__}")
    try:
        number = float(value)  # an integer too large for a float raises OverflowError
    except OverflowError:
        raise TypeError("expected a finite number, got a huge integer") from None
    if not math.isfinite(number):
        raise TypeError(f"expected a finite number, got {number!r}")
    return number


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"expected a count, got {value!r}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


class BatchRunner:
    """The batcher's processor: runs each model version's share of a batch on its engines."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.batch_seconds_ewma: float | None = None

    async def __call__(
        self, items: list[WorkItem], info: BatchInfo
    ) -> list[ItemResult | BaseException]:
        for wait in info.queue_waits:
            self.metrics.queue_wait_seconds.observe(wait)
        self.metrics.batch_size.observe(len(items))
        t0 = time.perf_counter()
        results: list[ItemResult | BaseException] = []
        # Items keep their order; consecutive items of one version run together, and a failure
        # of one version's engines fails only that version's items.
        for runtime, group in groupby(items, key=lambda w: w.runtime):
            share = list(group)
            try:
                with runtime.use():
                    results.extend(await self.run(runtime, share))
            except Exception as exc:
                log.exception(
                    "engine batch of %d items on %s failed", len(share), runtime.model_version
                )
                results.extend([exc] * len(share))
        elapsed = time.perf_counter() - t0
        prev = self.batch_seconds_ewma
        self.batch_seconds_ewma = elapsed if prev is None else 0.8 * prev + 0.2 * elapsed
        return results

    async def run_encoded(
        self, runtime: ModelRuntime, encoded: Sequence[EncodedItem], spec: SamplingSpec
    ) -> list[ItemResult]:
        """Items outside any request (the warm-up, the health probe), past the batcher."""
        return await self.run(runtime, [WorkItem(runtime, e, spec) for e in encoded])

    async def run(self, runtime: ModelRuntime, items: Sequence[WorkItem]) -> list[ItemResult]:
        m = self.metrics
        sampled = [i for i, w in enumerate(items) if w.spec.n > 0]
        critiques: dict[int, list[Critique]] = {}
        if sampled:
            t0 = time.perf_counter()
            try:
                outs, stats = await runtime.generator.generate(
                    [items[i].encoded.critique_prompt for i in sampled],
                    [items[i].spec for i in sampled],
                )
            except Exception:
                m.engine_errors.labels(stage="generate").inc()
                raise
            m.prompt_tokens.labels("generator", "total").inc(stats.prompt_tokens)
            m.prompt_tokens.labels("generator", "cached").inc(stats.cached_prompt_tokens)
            critiques = dict(zip(sampled, outs, strict=True))
            structured = [i for i in sampled if items[i].spec.structured]
            if structured:
                try:
                    closed, stats = await close_with_verdicts(
                        runtime.generator,
                        runtime.formatter,
                        [items[i].encoded.critique_prompt for i in structured],
                        [critiques[i] for i in structured],
                    )
                except Exception:
                    m.engine_errors.labels(stage="generate").inc()
                    raise
                m.prompt_tokens.labels("generator", "total").inc(stats.prompt_tokens)
                m.prompt_tokens.labels("generator", "cached").inc(stats.cached_prompt_tokens)
                critiques.update(zip(structured, closed, strict=True))
            m.generate_seconds.observe(time.perf_counter() - t0)

        def build() -> list[list[int]]:
            # A critique whose reward the engine read while generating it (the fused layout)
            # needs no scoring pass.
            seqs: list[list[int]] = []
            for i, w in enumerate(items):
                if i not in critiques:
                    seqs.append(runtime.formatter.critique_score_ids(w.encoded, None))
                    continue
                seqs.extend(
                    runtime.formatter.critique_score_ids(w.encoded, c.text)
                    for c in critiques[i]
                    if c.reward is None
                )
            return seqs

        t0 = time.perf_counter()
        sequences = await asyncio.to_thread(build)
        m.stage_seconds.labels("score_inputs").observe(time.perf_counter() - t0)
        scored: list[float] = []
        if sequences:
            m.batch_sequences.observe(len(sequences))
            t0 = time.perf_counter()
            try:
                scored, stats = await runtime.scorer.score(sequences)
            except Exception:
                m.engine_errors.labels(stage="score").inc()
                raise
            m.score_seconds.observe(time.perf_counter() - t0)
            m.prompt_tokens.labels("scorer", "total").inc(stats.prompt_tokens)
            m.prompt_tokens.labels("scorer", "cached").inc(stats.cached_prompt_tokens)
        fresh = iter(scored)
        rewards: list[float] = []
        for i in range(len(items)):
            if i not in critiques:
                rewards.append(next(fresh))
            else:
                rewards += [next(fresh) if c.reward is None else c.reward for c in critiques[i]]

        results: list[ItemResult] = []
        pos = 0
        for i, w in enumerate(items):
            crits = critiques.get(i, [])
            k = max(len(crits), 1)
            item_rewards = rewards[pos : pos + k]
            pos += k
            mean, std = mean_and_std(item_rewards)
            n_tokens = sum(c.num_tokens for c in crits)
            m.critiques.inc(len(crits))
            m.critique_tokens.inc(n_tokens)
            results.append(
                ItemResult(
                    reward=mean,
                    critique_rewards=list(item_rewards) if crits else [],
                    reward_std=std,
                    critiques=crits,
                    prompt_tokens=len(w.encoded.score_prefix),
                    critique_tokens=n_tokens,
                )
            )
        return results
