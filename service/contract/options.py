"""The options of a scoring request, in one type: what the client may choose, filled from the
checkpoint's defaults, checked against the service's limits, and what goes into the cache key."""

from __future__ import annotations

from dataclasses import dataclass

from service.checkpoint.manifest import SamplingDefaults


class OptionError(ValueError):
    """An option over its limit; `field` names it as the client spelled it (e.g. "n")."""

    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class OptionLimits:
    """The largest values a request may ask for (from the service's settings)."""

    max_num_critiques: int
    max_temperature: float
    max_critique_tokens: int


@dataclass(frozen=True)
class PolicyLimits:
    """The operator's bounds on external /refine policies (from the settings; applied by
    service.scoring.policy)."""

    allowlist: tuple[str, ...]
    allow_private: bool
    timeout_s: float
    max_response_bytes: int
    api_key_env: str | None


@dataclass(frozen=True)
class ScoreOptions:
    """Resolved per-request options: every field set (from the request or the checkpoint)."""

    num_critiques: int
    temperature: float
    top_p: float
    max_critique_tokens: int
    truncate_prompt: bool = False
    use_cache: bool = True
    # Close every critique with a verdict line decoded under a constraint (the structured
    # critique of service.checkpoint.critique_format); the reward then reads the whole of it.
    structured: bool = False

    @classmethod
    def resolve(
        cls,
        defaults: SamplingDefaults,
        limits: OptionLimits,
        *,
        num_critiques: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_critique_tokens: int | None = None,
        truncate_prompt: bool = False,
        use_cache: bool = True,
        structured: bool = False,
        num_critiques_field: str = "num_critiques",
    ) -> ScoreOptions:
        """Unset options take the checkpoint's defaults; OptionError for one over its limit.
        `num_critiques_field` is the name the request used for m (/critique calls it `n`)."""
        opts = cls(
            num_critiques=defaults.num_critiques if num_critiques is None else num_critiques,
            temperature=defaults.temperature if temperature is None else temperature,
            top_p=defaults.top_p if top_p is None else top_p,
            max_critique_tokens=(
                defaults.max_critique_tokens if max_critique_tokens is None else max_critique_tokens
            ),
            truncate_prompt=truncate_prompt,
            use_cache=use_cache,
            structured=structured,
        )
        if opts.num_critiques > limits.max_num_critiques:
            raise OptionError(num_critiques_field, f"must be at most {limits.max_num_critiques}")
        if opts.temperature > limits.max_temperature:
            raise OptionError("temperature", f"must be at most {limits.max_temperature}")
        if opts.max_critique_tokens > limits.max_critique_tokens:
            raise OptionError(
                "max_critique_tokens", f"must be at most {limits.max_critique_tokens}"
            )
        return opts

    def cache_fields(self) -> dict[str, object]:
        """The options that change a result, as the cache key holds them (`use_cache` does not).
        `st` is there only for structured critiques, so plain results keep their keys."""
        fields: dict[str, object] = {
            "m": self.num_critiques,
            # Sampling parameters do not matter when no critique is sampled.
            "s": (
                [self.temperature, self.top_p, self.max_critique_tokens]
                if self.num_critiques
                else None
            ),
            "tr": self.truncate_prompt,
        }
        if self.structured and self.num_critiques:
            fields["st"] = True
        return fields
