"""Judge scores: parse the 1-10 score a critique ends with (or that constrained decoding
appended), and the regex that constrains the decoding to a valid score."""

from __future__ import annotations

import re

SCORE_REGEX = r"(10|[1-9])"  # what constrained decoding may emit after SCORE_PROMPT
SCORE_PROMPT = "\nScore (1-10): "

# "Score: 7", "score (1-10): 7/10", "Rating: 8 out of 10", "7/10" ... the last one wins.
_PATTERNS = [
    re.compile(r"(?:score|rating)\s*(?:\(1\s*-\s*10\))?\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.IGNORECASE),
]


def parse_score(text: str) -> int | None:
    """The judge score in `text` as an int in 1..10, or None when there is none or it is out
    of range. A bare number is accepted when it is all the text says (constrained output)."""
    stripped = text.strip()
    if re.fullmatch(r"\d{1,2}", stripped):
        return _in_range(stripped)
    found: list[tuple[int, str]] = []
    for pattern in _PATTERNS:
        found += [(m.start(), m.group(1)) for m in pattern.finditer(stripped)]
    if not found:
        return None
    return _in_range(max(found)[1])


def _in_range(raw: str) -> int | None:
    value = float(raw)
    if not value.is_integer() or not 1 <= value <= 10:
        return None
    return int(value)
