"""The structured critique, defined once: the trainer samples its training critiques in this
format, and a structured /critique answer (issue 11) is to parse and serve this same one.

A critique has CTRL's three parts: an analysis, improvement suggestions, and a final verdict
line `Overall judgment: Correct` or `Overall judgment: Incorrect`. A 135M model does not write
the verdict line reliably on its own (../shared/VLLM_CPU_FACTS.md), so it is decoded in a second,
constrained request that continues the free text after `verdict_prompt(text)` with
`VERDICT_REGEX`; `with_verdict` joins the two."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["Correct", "Incorrect"]
VERDICTS: tuple[Verdict, ...] = ("Correct", "Incorrect")
VERDICT_PREFIX = "Overall judgment: "
VERDICT_REGEX = r"(Correct|Incorrect)"
# Tokens the constrained verdict request may take ("Incorrect" is two or three tokens).
VERDICT_MAX_TOKENS = 4
ANALYSIS_HEADER = "Analysis:"
SUGGESTIONS_HEADER = "Improvement suggestions:"

# The default critique instruction of new checkpoints (manifest Templates.critique_user).
CRITIQUE_USER = (
    "Review the assistant's response to the conversation below. Check facts, reasoning, code "
    "and whether it follows the user's instructions. Write your review in three parts: "
    f"'{ANALYSIS_HEADER}' (what is right and what is wrong, concretely), "
    f"'{SUGGESTIONS_HEADER}' (what to change), and a last line '{VERDICT_PREFIX}Correct' or "
    f"'{VERDICT_PREFIX}Incorrect'.\n\n[Conversation]\n{{conversation}}\n\n[Response]\n{{response}}"
)
# Appended to the critique instruction when the trainer samples grounded critiques. The hint is
# a verifier's finding (a test result, the recomputed answer): it goes into training prompts
# only, never into an inference prompt, and the critique is then trained without it.
HINT_BLOCK = "\n\n[Reference check, visible to the reviewer only]\n{hint}"

_VERDICT_LINE = re.compile(
    r"(?:^|\n)\s*\**\s*overall\s+judg(?:e)?ment\s*\**\s*[:\-]\s*\**\s*(correct|incorrect)\b",
    re.IGNORECASE,
)
_SUGGESTIONS = re.compile(r"(?:^|\n)\s*\**\s*improvement\s+suggestions?\s*\**\s*:", re.IGNORECASE)
_ANALYSIS = re.compile(r"^\s*\**\s*analysis\s*\**\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class StructuredCritique:
    """A critique split into its parts; `verdict` is None when the text has no verdict line."""

    analysis: str
    suggestions: str
    verdict: Verdict | None
    text: str


def free_text(text: str) -> str:
    """The critique before any verdict line it wrote itself: the verdict is decoded, not
    trusted from free text (which could also state two contradicting verdicts)."""
    found = _VERDICT_LINE.search(text)
    return text[: found.start()].rstrip() if found else text.rstrip()


def verdict_prompt(text: str) -> str:
    """The free text followed by the verdict line's opening, for the constrained request."""
    return free_text(text) + "\n" + VERDICT_PREFIX


def with_verdict(text: str, verdict: Verdict) -> str:
    return verdict_prompt(text) + verdict


def parse_verdict(text: str) -> Verdict | None:
    """The last verdict line's value; the constrained output alone ("Correct") parses too."""
    stripped = text.strip()
    for v in VERDICTS:
        if stripped == v:
            return v
    found = _VERDICT_LINE.findall(text)
    if not found:
        return None
    return "Correct" if found[-1].lower() == "correct" else "Incorrect"


def parse(text: str) -> StructuredCritique:
    """Split a critique into analysis, suggestions and verdict. Missing headers are tolerated:
    text before the suggestions header (or all text) is the analysis."""
    verdict = parse_verdict(text)
    body = text
    lines = list(_VERDICT_LINE.finditer(text))
    if lines:
        body = text[: lines[-1].start()]
    match = _SUGGESTIONS.search(body)
    analysis, suggestions = (body[: match.start()], body[match.end() :]) if match else (body, "")
    analysis = _ANALYSIS.sub("", analysis, count=1)
    return StructuredCritique(analysis.strip(), suggestions.strip(), verdict, text)
