"""HTTP request and response models. Unknown fields are refused; limits that depend on settings
(item count, m, tokens, temperature) are checked by the service and reported the same way; a
request's options become one ScoreOptions in SamplingFields.options."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.checkpoint.manifest import SamplingDefaults
from service.contract.options import OptionLimits, ScoreOptions


class ChatMessage(BaseModel):
    """One chat turn of a prompt."""

    model_config = ConfigDict(extra="forbid")

    # The roles of contract.formatting.ROLES: any other would be rendered verbatim into the chat
    # template, a prompt-injection path into the critique and the reward.
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _text(cls, value: str) -> str:
        return _utf8(value, "message text")


def _utf8(value: str, what: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"), which no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid UTF-8 text (character {exc.start})") from None
    return value


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    return _utf8(value, what)


def _check_prompt(value: str | list[ChatMessage]) -> str | list[ChatMessage]:
    if isinstance(value, str):
        return _not_blank(value, "prompt")
    if not value:
        raise ValueError("prompt must have at least one message")
    if not any(m.content.strip() for m in value):
        raise ValueError("prompt messages must not all be empty")
    return value


class ScoreItem(BaseModel):
    """A (prompt, response) pair to score."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[ChatMessage] = Field(description="Text, or a list of chat messages.")
    response: str = Field(description="The response to score.")

    _prompt = field_validator("prompt")(_check_prompt)

    @field_validator("response")
    @classmethod
    def _response(cls, value: str) -> str:
        return _not_blank(value, "response")


class SamplingFields(BaseModel):
    """Critique sampling overrides; unset fields take the checkpoint's defaults."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, gt=0, description="Critique sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    max_critique_tokens: int | None = Field(None, ge=1, description="Tokens per critique.")
    truncate_prompt: bool = Field(
        False, description="Left-truncate prompts that do not fit the context instead of a 422."
    )
    use_cache: bool = Field(True, description="Serve and store results in the result cache.")

    def options(self, defaults: SamplingDefaults, limits: OptionLimits) -> ScoreOptions:
        """This request's options, unset ones from the checkpoint, checked against the limits."""
        num_critiques, field = self._num_critiques(defaults)
        return ScoreOptions.resolve(
            defaults,
            limits,
            num_critiques=num_critiques,
            temperature=self.temperature,
            top_p=self.top_p,
            max_critique_tokens=self.max_critique_tokens,
            truncate_prompt=self.truncate_prompt,
            use_cache=self.use_cache,
            structured=self._structured(),
            num_critiques_field=field,
        )

    def _num_critiques(self, defaults: SamplingDefaults) -> tuple[int | None, str]:
        """The m this request asks for (None: the checkpoint's), and the field it names it by."""
        return None, "num_critiques"

    def _structured(self) -> bool:
        return False


def critiques_asked(value: int | None, defaults: SamplingDefaults) -> int:
    """m for an endpoint that reads critiques (/critique, /refine): as asked, else the
    checkpoint's default but at least one, whatever that default is."""
    return value if value is not None else max(defaults.num_critiques, 1)


class ScoreRequest(SamplingFields):
    """POST /score."""

    items: list[ScoreItem] = Field(min_length=1)
    num_critiques: int | None = Field(
        None, ge=0, description="Critiques m per item; 0 scores [x; y] directly (standard RM)."
    )
    return_critiques: bool = Field(False, description="Include the critique texts.")

    def _num_critiques(self, defaults: SamplingDefaults) -> tuple[int | None, str]:
        return self.num_critiques, "num_critiques"


class CritiqueRequest(SamplingFields):
    """POST /critique."""

    prompt: str | list[ChatMessage]
    response: str
    n: int | None = Field(None, ge=1, description="How many critiques to sample.")
    format: Literal["text", "structured"] = Field(
        "text",
        description="structured: each critique is closed by a constrained 'Overall judgment: "
        "Correct|Incorrect' line and returned split into analysis, suggestions and verdict.",
    )

    _prompt = field_validator("prompt")(_check_prompt)

    def _structured(self) -> bool:
        return self.format == "structured"

    def _num_critiques(self, defaults: SamplingDefaults) -> tuple[int | None, str]:
        return critiques_asked(self.n, defaults), "n"

    @field_validator("response")
    @classmethod
    def _response(cls, value: str) -> str:
        return _not_blank(value, "response")


class CritiqueOut(BaseModel):
    text: str
    reward: float
    finish_reason: str
    # format "structured" only: the parts of the critique (service.checkpoint.critique_format).
    analysis: str | None = None
    suggestions: str | None = None
    verdict: Literal["Correct", "Incorrect"] | None = None


class ScoreResult(BaseModel):
    reward: float = Field(description="Mean of critique_rewards (or the direct reward if m=0).")
    critique_rewards: list[float]
    reward_std: float
    critiques: list[str] | None = None
    cached: bool


class Usage(BaseModel):
    prompt_tokens: int
    critique_tokens: int


class ScoreResponse(BaseModel):
    model_version: str
    results: list[ScoreResult]
    usage: Usage
    warnings: list[str]


class CritiqueResponse(BaseModel):
    model_version: str
    critiques: list[CritiqueOut]
    reward: float = Field(description="Mean reward over the critiques.")
    cached: bool
    usage: Usage
    warnings: list[str]


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class GetRewardRequest(BaseModel):
    """POST /get_reward, OpenRLHF's remote reward model protocol: each query is the decoded
    prompt+response text with special tokens; prompts (same length) help find the split."""

    model_config = ConfigDict(extra="ignore")  # OpenRLHF versions add fields; none change scoring

    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: list[object] | None = None

    @field_validator("query")
    @classmethod
    def _queries(cls, value: list[str]) -> list[str]:
        for i, q in enumerate(value):
            if not q.strip():
                raise ValueError(f"query[{i}] must not be empty")
            _utf8(q, f"query[{i}]")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: list[str] | None) -> list[str] | None:
        for i, p in enumerate(value or []):
            _utf8(p, f"prompts[{i}]")
        return value


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class ReloadRequest(BaseModel):
    """POST /admin/reload."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="Version id to load (and pin); omit it (not an empty string) to follow "
        "the root's current pointer.",
    )
