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
import socket
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from service.contract.formatting import Message
from service.contract.options import PolicyLimits
from service.engines.base import Critique, SamplingSpec
from service.engines.chat_endpoint import RevisionSpec
from service.model.runtime import ModelRuntime
from service.scoring.errors import InvalidRequest

URL_FIELD = "policy.url"


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
