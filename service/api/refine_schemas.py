"""POST /refine: request and answer. Limits that depend on settings (rounds, candidates,
revision tokens, m, temperature) are checked when the request's options are resolved."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.schemas import (
    ChatMessage,
    SamplingFields,
    _check_prompt,
    _not_blank,
    critiques_asked,
)
from service.checkpoint.critique_format import StructuredCritique
from service.checkpoint.manifest import SamplingDefaults
from service.contract.options import OptionError
from service.engines.chat_endpoint import RevisionSpec
from service.scoring.refine import RefineOptions, Scored
from service.settings import Settings


class PolicyField(BaseModel):
    """An external OpenAI-compatible policy (base URL, as OpenAI clients take it)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="Base URL; /chat/completions "
        "is appended. Must be under a prefix of CRM_POLICY_ALLOWLIST.",
    )
    model: str = Field(min_length=1, max_length=256, description="The `model` it serves.")


class RefineRequest(SamplingFields):
    """POST /refine."""

    prompt: str | list[ChatMessage]
    response: str
    rounds: int = Field(2, ge=0, description="Critique-revision rounds at most.")
    candidates: int = Field(1, ge=1, description="Revisions sampled per round.")
    num_critiques: int | None = Field(
        None,
        ge=1,
        description="Critiques per scored response (m); the first that finds the "
        "response wrong drives the next revision.",
    )
    stop: Literal["verdict", "no_improvement", "never"] = Field(
        "verdict",
        description="verdict: stop once most critiques of the best response say Correct; "
        "no_improvement: stop after a round whose revisions do not beat the best; never: run "
        "every round.",
    )
    max_revision_tokens: int | None = Field(None, ge=1, description="Tokens per revision.")
    revision_temperature: float = Field(0.7, gt=0, description="Revision sampling temperature.")
    policy: PolicyField | None = Field(
        None, description="Who revises: omitted, the served generator."
    )

    _prompt = field_validator("prompt")(_check_prompt)

    @field_validator("response")
    @classmethod
    def _response(cls, value: str) -> str:
        return _not_blank(value, "response")

    def _structured(self) -> bool:
        return True  # the verdicts drive the stop rule, the analysis drives the revision

    def _num_critiques(self, defaults: SamplingDefaults) -> tuple[int | None, str]:
        return critiques_asked(self.num_critiques, defaults), "num_critiques"

    def refine_options(self, defaults: SamplingDefaults, settings: Settings) -> RefineOptions:
        """The loop's options; OptionError naming the field for one over its limit."""
        if self.rounds > settings.max_refine_rounds:
            raise OptionError("rounds", f"must be at most {settings.max_refine_rounds}")
        if self.candidates > settings.max_refine_candidates:
            raise OptionError("candidates", f"must be at most {settings.max_refine_candidates}")
        tokens = self.max_revision_tokens or settings.revision_tokens
        if tokens > settings.max_revision_tokens:
            raise OptionError(
                "max_revision_tokens", f"must be at most {settings.max_revision_tokens}"
            )
        if self.revision_temperature > settings.max_temperature:
            raise OptionError("revision_temperature", f"must be at most {settings.max_temperature}")
        scoring = self.options(defaults, settings.option_limits())
        revision = RevisionSpec(self.candidates, self.revision_temperature, 0.95, tokens)
        return RefineOptions(self.rounds, self.candidates, self.stop, scoring, revision)


class CritiqueParts(BaseModel):
    text: str
    analysis: str
    suggestions: str
    verdict: Literal["Correct", "Incorrect"] | None

    @classmethod
    def of(cls, c: StructuredCritique) -> CritiqueParts:
        return cls(text=c.text, analysis=c.analysis, suggestions=c.suggestions, verdict=c.verdict)


class ScoredResponse(BaseModel):
    response: str
    reward: float = Field(description="Mean of critique_rewards.")
    critique_rewards: list[float]
    critiques: list[CritiqueParts]
    cached: bool

    @classmethod
    def of(cls, s: Scored) -> ScoredResponse:
        return cls(
            response=s.response,
            reward=s.reward,
            critique_rewards=s.critique_rewards,
            critiques=[CritiqueParts.of(c) for c in s.critiques],
            cached=s.cached,
        )


class RefineRound(BaseModel):
    round: int
    critique: CritiqueParts = Field(description="The critique the revisions were written from.")
    candidates: list[ScoredResponse]
    improved: bool = Field(description="A candidate beat the best response so far.")


class BestResponse(BaseModel):
    response: str
    reward: float
    round: int = Field(description="0: the original response was never beaten.")


class RefineUsage(BaseModel):
    prompt_tokens: int
    critique_tokens: int
    revision_tokens: int


class RefineResponse(BaseModel):
    model_version: str
    best: BestResponse
    original: ScoredResponse
    rounds: list[RefineRound]
    stop_reason: Literal["verdict", "no_improvement", "rounds", "no_revision"]
    usage: RefineUsage
    warnings: list[str]
