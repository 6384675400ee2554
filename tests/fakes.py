"""Fake engines for testing the gateway's own logic (batching, caching, limits, errors) only.
The product path and the integration tests use the real vLLM engines."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.checkpoint.critique_format import VERDICT_REGEX
from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.contract.judging import SCORE_REGEX
from service.engines.base import Critique, EngineStats, SamplingSpec
from service.engines.factory import load_formatter, served_layout
from service.model.runtime import ModelRuntime
from service.settings import Settings


@dataclass
class FakeGenerator:
    """Deterministic critiques; records every call."""

    calls: list[int] = field(default_factory=list)
    specs: list[list[SamplingSpec]] = field(default_factory=list)
    fail_next: int = 0
    delay_s: float = 0.0
    tag: str = ""
    shut_down: bool = False
    dead: bool = False
    # Every constrained verdict says this (None: by the prompt length's parity).
    verdict: str | None = None
    # Every constrained 1-5 score says this (None: by the prompt length).
    score: int | None = None

    async def generate(
        self, prompts: Sequence[list[int]], specs: Sequence[SamplingSpec]
    ) -> tuple[list[list[Critique]], EngineStats]:
        self.calls.append(len(prompts))
        self.specs.append(list(specs))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.dead:
            raise RuntimeError("engine core process died")
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("generator exploded")
        outs = [
            [self._answer(p, s, j) for j in range(s.n)] for p, s in zip(prompts, specs, strict=True)
        ]
        return outs, EngineStats(prompt_tokens=sum(map(len, prompts)))

    def _answer(self, prompt: list[int], spec: SamplingSpec, j: int) -> Critique:
        # A constrained request answers within its regex, as the real engine does.
        if spec.regex == VERDICT_REGEX:
            return Critique(
                self.verdict or ("Incorrect" if len(prompt) % 2 else "Correct"), 2, "stop"
            )
        if spec.regex == SCORE_REGEX:
            digit = self.score or (len(prompt) % 5 + 1)
            # Digit values as an engine returns them: the decoded digit's the largest, the
            # rest falling off by a slope of the prompt's length (a fixed score: a fixed slope).
            slope = 1.0 if self.score else 0.5 + (len(prompt) % 7) / 4
            values = tuple(-slope * abs(d - digit) for d in range(1, 6))
            return Critique(str(digit), 1, "stop", values if spec.read_ids else None)
        if spec.regex is not None and spec.regex.startswith("(- "):
            k = int(spec.regex.rsplit("{", 1)[1].rstrip("}"))
            names = ["accuracy", "clarity", "completeness", "brevity", "safety", "style"]
            return Critique("".join(f"- {n} {j}\n" for n in names[:k]), 4 * k, "stop")
        return Critique(f"critique {j} of a {len(prompt)}-token prompt{self.tag}", 5 + j, "stop")

    async def check_health(self) -> None:
        if self.dead:
            raise RuntimeError("engine core process died")

    def shutdown(self) -> None:
        self.shut_down = True


@dataclass
class FakeScorer:
    """Reward = a deterministic function of the token ids; records every call."""

    calls: list[int] = field(default_factory=list)

    async def score(self, sequences: Sequence[list[int]]) -> tuple[list[float], EngineStats]:
        self.calls.append(len(sequences))
        return [(sum(s) % 1000) / 100.0 - 5.0 for s in sequences], EngineStats()

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


def fake_runtime(version: CheckpointVersion, settings: Settings, tag: bool = False) -> ModelRuntime:
    """`tag`: critiques name the model version, so a test can tell which version made them."""
    gen = FakeGenerator(tag=f" by {version.manifest.model_version}" if tag else "")
    config = settings.engine_config()
    return ModelRuntime(
        version,
        load_formatter(version, config),
        gen,
        FakeScorer(),
        served_layout(version, config),
    )


def loader_for(root: Path) -> Callable[[Settings, str | None], Awaitable[ModelRuntime]]:
    """A RuntimeLoader that serves `root`'s versions on fake engines."""

    async def load(settings: Settings, version: str | None = None) -> ModelRuntime:
        resolved = CheckpointRoot(root).resolve(version, verify_hashes=False)
        return await asyncio.to_thread(fake_runtime, resolved, settings)

    return load


@contextlib.asynccontextmanager
async def running(app: FastAPI, timeout: float = 60) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan, wait for the first load, and talk to it in-process."""
    async with app.router.lifespan_context(app):
        await app.state.loading
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", timeout=timeout
        ) as c:
            yield c


def wait_ready(c: TestClient) -> None:
    for _ in range(200):
        if c.get("/ready").status_code == 200:
            return
        threading.Event().wait(0.05)
    raise AssertionError(c.get("/ready").json())
