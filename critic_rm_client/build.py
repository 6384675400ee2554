"""Request JSON from the caller's values: chat messages reduced to role and text, ``/score``
items from the shapes a caller holds, and the split of a long list into requests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from critic_rm_client.results import Message, Prompt, ScoreItem, ScoreItemLike

T = TypeVar("T")


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a multimodal part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def _message(m: Message) -> dict[str, str]:
    # The service refuses unknown keys (tool_calls, name, ...) and non-text content, which chat
    # datasets carry routinely; keep role and the text of the content only.
    return {"role": str(m["role"]), "content": message_text(m.get("content"))}


def prompt_json(prompt: Prompt) -> str | list[dict[str, str]]:
    """A prompt as the service takes it: text, or chat messages reduced to role and text."""
    if isinstance(prompt, str):
        return prompt
    return [_message(m) for m in prompt]


def item_json(item: ScoreItemLike) -> dict[str, Any]:
    """One ``/score`` item from a ``ScoreItem``, a mapping or a ``(prompt, response)`` pair."""
    if isinstance(item, ScoreItem):
        prompt, response = item.prompt, item.response
    elif isinstance(item, Mapping):
        prompt, response = item["prompt"], item["response"]
    elif isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], str):
        # Lists too: pairs that went through JSON come back as lists.
        prompt, response = item
    else:
        raise TypeError(
            f"score items must be ScoreItem, {{'prompt', 'response'}} mappings or "
            f"(prompt, response) pairs, not {type(item).__name__}"
        )
    return {"prompt": prompt_json(prompt), "response": response}


def chunks(items: Sequence[T], size: int) -> list[tuple[int, list[T]]]:
    """``items`` in runs of at most ``size``, each with the offset of its first item."""
    return [(start, list(items[start : start + size])) for start in range(0, len(items), size)]
