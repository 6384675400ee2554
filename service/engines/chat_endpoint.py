"""An external OpenAI-compatible chat-completions endpoint that writes revisions: /refine's
`policy.url` and the trainer's `refine.actor`. It is called without redirects, under a timeout
and a response size limit, with its API key from an environment variable the operator names;
anything it answers that is not a chat completion is a PolicyFailure. Whether a URL may be
called at all is the caller's rule (service.scoring.policy allow-lists a client's URL)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from service.contract.formatting import Message
from service.contract.options import PolicyLimits
from service.engines.base import Critique


class PolicyFailure(Exception):
    """The external policy failed (refused, timed out, answered nonsense): /refine answers 502,
    the trainer stops the stage."""


@dataclass(frozen=True)
class RevisionSpec:
    """How the revisions of one round are sampled."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int


class ExternalPolicy:
    """POST {url}/chat/completions of an OpenAI-compatible server (vLLM, SGLang, TGI, ...)."""

    def __init__(self, url: str, model: str, limits: PolicyLimits) -> None:
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.limits = limits

    async def revise(self, messages: Sequence[Message], spec: RevisionSpec) -> list[Critique]:
        body = {
            "model": self.model,
            "messages": list(messages),
            "n": spec.n,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "max_tokens": spec.max_tokens,
        }
        headers = {"content-type": "application/json"}
        if self.limits.api_key_env and os.environ.get(self.limits.api_key_env):
            headers["authorization"] = f"Bearer {os.environ[self.limits.api_key_env]}"
        try:
            async with (
                httpx.AsyncClient(
                    timeout=self.limits.timeout_s, follow_redirects=False, trust_env=False
                ) as client,
                client.stream("POST", self.endpoint, json=body, headers=headers) as answer,
            ):
                raw = await _read_bounded(answer, self.limits.max_response_bytes)
                status = answer.status_code
        except httpx.TimeoutException:
            raise PolicyFailure(
                f"the policy did not answer within {self.limits.timeout_s} s"
            ) from None
        except httpx.HTTPError as exc:
            raise PolicyFailure(f"the policy could not be reached: {type(exc).__name__}") from None
        if status != 200:
            raise PolicyFailure(f"the policy answered HTTP {status}")
        return parse_completions(raw, spec.n)


async def _read_bounded(answer: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in answer.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise PolicyFailure(f"the policy's answer is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_completions(raw: bytes, n: int) -> list[Critique]:
    """The choices of a chat-completions answer; PolicyFailure for anything else."""
    try:
        data: Any = json.loads(raw)
        choices = data["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError("no choices")
        out = []
        for choice in choices[:n]:
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise ValueError("a choice's content is not text")
            reason = choice.get("finish_reason") or "stop"
            out.append(Critique(text.strip(), 0, str(reason)[:32]))
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 and out:
            # The server counts all choices together; spread them for the usage report.
            out = [Critique(c.text, tokens // len(out), c.finish_reason) for c in out]
        return out
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise PolicyFailure("the policy's answer is not a chat completion") from None
