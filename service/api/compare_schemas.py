"""POST /compare: request and answer. Limits that depend on settings (samples, criteria, rubric
tokens, temperature) are checked when the request's options are resolved."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.schemas import ChatMessage, _check_prompt, _not_blank
from service.checkpoint.manifest import SamplingDefaults
from service.contract.judging import CRITERION_CHARS
from service.contract.options import OptionError
from service.scoring.compare import CompareOptions, PairResult
from service.settings import Settings

Preference = Literal["A", "B", "tie"]


class CompareRequest(BaseModel):
    """POST /compare."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[ChatMessage]
    responses: list[str] = Field(min_length=2, max_length=4, description="2 to 4 responses.")
    criteria: list[str] | None = Field(
        None, min_length=1, description="Judge by these criteria; omitted: generated."
    )
    num_criteria: int = Field(3, ge=1, description="Criteria to generate per trajectory.")
    samples: int = Field(1, ge=1, description="Judgment trajectories per pair and order.")
    temperature: float | None = Field(None, gt=0, description="Criteria and rubric sampling.")
    top_p: float | None = Field(None, gt=0, le=1)
    max_rubric_tokens: int = Field(48, ge=1, description="Tokens per rubric.")
    score_reading: Literal["expected", "greedy"] = Field(
        "expected",
        description="expected: each score is the expected digit under the judge's "
        "probabilities (a small judge's greedy digits mostly tie); greedy: the digit decoded.",
    )

    _prompt = field_validator("prompt")(_check_prompt)

    @field_validator("responses")
    @classmethod
    def _responses(cls, value: list[str]) -> list[str]:
        for i, r in enumerate(value):
            _not_blank(r, f"responses[{i}]")
        return value

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, value: list[str] | None) -> list[str] | None:
        for i, c in enumerate(value or []):
            _not_blank(c, f"criteria[{i}]")
            if len(c) > CRITERION_CHARS:
                raise ValueError(f"criteria[{i}] is over {CRITERION_CHARS} characters")
        return value

    def compare_options(self, defaults: SamplingDefaults, settings: Settings) -> CompareOptions:
        if self.samples > settings.max_compare_samples:
            raise OptionError("samples", f"must be at most {settings.max_compare_samples}")
        if self.num_criteria > settings.max_criteria:
            raise OptionError("num_criteria", f"must be at most {settings.max_criteria}")
        if self.criteria is not None and len(self.criteria) > settings.max_criteria:
            raise OptionError("criteria", f"at most {settings.max_criteria} criteria")
        if self.max_rubric_tokens > settings.max_critique_tokens:
            raise OptionError(
                "max_rubric_tokens", f"must be at most {settings.max_critique_tokens}"
            )
        temperature = defaults.temperature if self.temperature is None else self.temperature
        if temperature > settings.max_temperature:
            raise OptionError("temperature", f"must be at most {settings.max_temperature}")
        return CompareOptions(
            num_criteria=self.num_criteria,
            samples=self.samples,
            criteria=tuple(c.strip() for c in self.criteria) if self.criteria else None,
            temperature=temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            rubric_tokens=self.max_rubric_tokens,
            score_reading=self.score_reading,
        )


class CriterionOut(BaseModel):
    criterion: str
    rubric: str
    scores: dict[str, int] = Field(description='The digits decoded: {"A": 1-5, "B": 1-5}')
    expected: dict[str, float] | None = Field(
        description="The expected scores under the judge's digit probabilities "
        "(score_reading expected); null where the engine returned none."
    )
    gap: float = Field(description="A - B: of the expected scores where given, else the digits")


class TrajectoryOut(BaseModel):
    order: Literal["AB", "BA"] = Field(description="AB: response A was shown first.")
    preference: Preference
    criteria: list[CriterionOut] = Field(description="Ranked: the largest score gap first.")


class PairOut(BaseModel):
    a: int = Field(description="Index of response A in `responses`.")
    b: int
    preference: Preference
    p_a: float = Field(
        description="p(A better): votes for A plus half the ties; 0.5 on a tie "
        "from disagreeing orders."
    )
    bt_p_a: float = Field(description="The reward head's sigmoid(r_A - r_B), m = 0.")
    votes: dict[str, int]
    consistency: float = Field(description="Share of trajectories agreeing with the verdict.")
    position_disagreement: bool = Field(description="The two orders' majorities disagreed.")
    by_order: dict[str, Preference]
    identical: bool = Field(description="Identical responses: a tie, judged without generation.")
    trajectories: list[TrajectoryOut]

    @classmethod
    def of(cls, p: PairResult) -> PairOut:
        v = p.verdict
        return cls(
            a=p.a,
            b=p.b,
            preference=v.preference,
            p_a=v.p_a,
            bt_p_a=p.bt_p_a,
            votes=v.votes,
            consistency=v.consistency,
            position_disagreement=v.position_disagreement,
            by_order=v.by_order,
            identical=p.identical,
            trajectories=[
                TrajectoryOut(
                    order=t.order,
                    preference=t.preference(),
                    criteria=[
                        CriterionOut(
                            criterion=c.criterion,
                            rubric=c.rubric,
                            scores={"A": c.score_a, "B": c.score_b},
                            expected=(
                                None
                                if c.expected_a is None or c.expected_b is None
                                else {"A": c.expected_a, "B": c.expected_b}
                            ),
                            gap=c.gap,
                        )
                        for c in t.ranked()
                    ],
                )
                for t in p.trajectories
            ],
        )


class CompareUsage(BaseModel):
    judge_tokens: int


class CompareResponse(BaseModel):
    model_version: str
    pairs: list[PairOut]
    ranking: list[int] | None = Field(
        description="With more than two responses: their indices, best first."
    )
    rewards: list[float] = Field(description="The reward head's m = 0 reward of each response.")
    usage: CompareUsage
    warnings: list[str]
