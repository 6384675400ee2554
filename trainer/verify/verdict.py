"""What a verifier says of a response: right or not, and why in a sentence or two."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    correct: bool
    hint: str
