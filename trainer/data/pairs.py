"""The preference pair every stage of the trainer reads and writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class PreferencePair:
    """prompt is a string or a chat message list; chosen/rejected are assistant replies."""

    prompt: str | list[Message]
    chosen: str
    rejected: str
    category: str = "general"
    id: str = ""
    # The generator's template family (a whole family can be held out of training), and what
    # trainer.verify.checks needs to verify any response to this prompt (None: no verifier,
    # e.g. a loaded dataset). Both are plain JSON.
    family: str = ""
    check: dict[str, Any] | None = None

    def prompt_key(self) -> str:
        """What identifies the prompt when splitting (no prompt may be in two splits)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
