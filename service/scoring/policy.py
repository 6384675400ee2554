"""Who writes a /refine revision: the served generator, or an external OpenAI-compatible
chat-completions endpoint (the policy model under training).

An external endpoint is something the service calls out to on a client's word, so it is
bounded: its URL must fall under an allow-listed prefix (scheme, host and port exactly, path on
a segment boundary), must not resolve to a private, loopback or link-local address unless the
operator allows it, is called without redirects under a timeout and a response size limit, and
its API key comes from an environment variable the operator names, never from the request."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from service.contract.formatting import Message
from service.contract.options import PolicyLimits
from service.engines.base import Critique, SamplingSpec
from service.model.runtime import ModelRuntime
from service.scoring.errors import InvalidRequest, PolicyFailure

URL_FIELD = "policy.url"


@dataclass(frozen=True)
class RevisionSpec:
    """How the revisions of one round are sampled."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int


class Policy(Protocol):
    async def revise(self, messages: Sequence[Message], spec: RevisionSpec) -> list[Critique]:
        """`spec.n` continuations of the conversation (text, tokens, finish reason)."""
        ...


class ServedPolicy:
    """The served generator answers as the assistant of the revision conversation."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        fmt = self.runtime.formatter
        return fmt.chat_ids(fmt.neutral_messages(messages), add_generation_prompt=True)

    async def revise(self, messages: Sequence[Message], spec: RevisionSpec) -> list[Critique]:
        ids = await asyncio.to_thread(self.prompt_ids, messages)
        room = self.runtime.formatter.max_model_len - len(ids)
        if room < 1:
            raise InvalidRequest(
                "response", "the revision conversation does not fit the model context"
            )
        sampling = SamplingSpec(spec.n, spec.temperature, spec.top_p, min(spec.max_tokens, room))
        outs, _stats = await self.runtime.generator.generate([ids], [sampling])
        return outs[0]


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


def check_policy_url(url: str, limits: PolicyLimits) -> None:
    """InvalidRequest naming `policy.url` unless `url` is an allowed external policy. Resolves
    the host (blocking: run it in a thread)."""
    if not limits.allowlist:
        raise InvalidRequest(URL_FIELD, "external policies are not enabled on this service", 403)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(URL_FIELD, f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(URL_FIELD, "must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(URL_FIELD, "must not carry credentials")
    if parts.query or parts.fragment:
        raise InvalidRequest(URL_FIELD, "must not carry a query or a fragment")
    # Dot segments and escapes could climb out of an allowed path once normalised.
    if "%" in parts.path or any(seg in (".", "..") for seg in parts.path.split("/")):
        raise InvalidRequest(URL_FIELD, "must not carry dot segments or percent escapes")
    if not any(_under(parts, prefix) for prefix in limits.allowlist):
        raise InvalidRequest(URL_FIELD, "is not under an allowed policy URL", 403)
    if limits.allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise InvalidRequest(URL_FIELD, "the host does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise InvalidRequest(URL_FIELD, "resolves to a private or local address", 403)


def _under(parts: Any, prefix: str) -> bool:
    allowed = urlsplit(prefix)
    default = {"http": 80, "https": 443}

    def port(p: Any) -> int | None:
        return p.port or default.get(p.scheme)

    if (parts.scheme, parts.hostname, port(parts)) != (
        allowed.scheme,
        allowed.hostname,
        port(allowed),
    ):
        return False
    base = allowed.path.rstrip("/")
    path = parts.path or "/"
    return path == base or path.startswith(base + "/") or not base
