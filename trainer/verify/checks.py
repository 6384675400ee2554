"""Verifiers that say whether ANY response to a synthetic prompt is right, and why, in one or two
plain sentences a critique writer can build on.

`check` is the plain-JSON dict stored in `PreferencePair.check`; its "kind" picks the verifier:
- "arithmetic": {"answer": number, "steps": [[a, op, b, c], ...], "unit": str} (the reference
  working, used to name the first wrong or missing step);
- "unit_tests": {"name": str, "tests": [[[args...], expected], ...]} (run in the sandbox);
- "constraints": {"constraints": [{"type": ..., ...}, ...]} (json_format takes "only": false
  when a line of introduction before the object is allowed);
- "safety": {"harmful": bool};
- "lookup": {"answer": str, "others": [str, ...]} (a value read from a passage or table; the
  others are the passage's other values of the same kind, the plausible wrong answers).
A check may also carry "group" (the code task, the safety request): pairs of one group share
their material, so splits keep a group together. Verifiers ignore it.

`verify` never raises: text it cannot read, and a check it does not know, give correct=False
with a hint saying what could not be verified."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer.verify.arithmetic import check_arithmetic
from trainer.verify.code import check_unit_tests
from trainer.verify.constraints import check_constraints
from trainer.verify.lookup import check_lookup
from trainer.verify.safety import check_safety
from trainer.verify.sandbox import Limits
from trainer.verify.verdict import Verdict

# Responses are bounded by the generator (~1,200 characters); a longer text is cut before any
# regex runs, so a 10k-character flood costs the same as a normal answer.
MAX_CHARS = 8_000


def verify(check: Mapping[str, Any], response: str, *, limits: Limits | None = None) -> Verdict:
    """The verifier's verdict on `response` under `check` (see the module docstring)."""
    if not isinstance(response, str):
        return Verdict(False, "Verifier: the response is not text, so it could not be checked.")
    text = response[:MAX_CHARS]
    kind = check.get("kind") if isinstance(check, Mapping) else None
    try:
        if kind == "arithmetic":
            return check_arithmetic(check, text)
        if kind == "unit_tests":
            return check_unit_tests(check, text, limits)
        if kind == "constraints":
            return check_constraints(check, text)
        if kind == "safety":
            return check_safety(check, text)
        if kind == "lookup":
            return check_lookup(check, text)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as exc:
        # A malformed check: the response is not judged right on a check that cannot run.
        return Verdict(False, f"Verifier: the check could not be run ({type(exc).__name__}).")
    return Verdict(False, f"Verifier: no verifier for check kind {kind!r}.")
