"""The reading verifier: whether a response names the value read from the passage or table, and
not one of its other values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trainer.verify.verdict import Verdict


def _norm(s: str) -> str:
    # Apostrophes stay ("Ana's parrot" still names Ana); emphasis, quotes and commas go.
    return re.sub(r"\s+", " ", re.sub(r"[,*_`\"“”]", "", s.replace("’", "'"))).strip().lower()


# A value named only to be ruled out ("Ana brought it, not Ben") is not an answer.
NEGATED_RE = re.compile(
    r"(?:\bnot|\bnever|n't|\brather than|\binstead of|\bnor|\bexcept)\s+"
    r"(?:(?:by|in|on|from|the|at|to|with|for|it|that|was|is)\s+){0,2}$"
)


def _mentions(text: str, value: str) -> list[int]:
    v, t = re.escape(_norm(value)), _norm(text)
    hits = [m.start() for m in re.finditer(rf"(?<![\w.]){v}(?![\w]|\.\d)", t)]
    return [p for p in hits if NEGATED_RE.search(t[max(0, p - 30) : p]) is None]


def check_lookup(check: Mapping[str, Any], text: str) -> Verdict:
    answer, others = str(check["answer"]), [str(o) for o in check.get("others", [])]
    right = _mentions(text, answer)
    wrong = [(pos, o) for o in others if _norm(o) != _norm(answer) for pos in _mentions(text, o)]
    if right and not wrong:
        return Verdict(True, f"Verifier: the response gives {answer}, the value in the passage.")
    if not right and not wrong:
        return Verdict(
            False,
            f"Verifier: the response does not give the value asked for; the passage says {answer}.",
        )
    if not right:
        wrong.sort()
        return Verdict(
            False,
            f"Verifier: the response gives {wrong[0][1]}, but the passage says {answer}; "
            f"{wrong[0][1]} belongs to something else in the passage.",
        )
    return Verdict(
        False,
        f"Verifier: the response names both {answer} (correct) and {wrong[0][1]}, so its answer "
        "is ambiguous.",
    )
