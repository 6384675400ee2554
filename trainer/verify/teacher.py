"""The verifier's finding written as a structured critique: a teacher target for the critique
head when the model's own hinted critiques do not state the finding (at 135M they rarely do;
their verdicts agree with the verifier at chance). The text says what a careful reviewer would
say of the response itself (the recomputed result, the failing input, the broken rule), never
that a check was run, so a critic trained on it does not learn to claim checks it cannot run."""

from __future__ import annotations

import re
from collections.abc import Callable

from service.checkpoint.critique_format import (
    ANALYSIS_HEADER,
    SUGGESTIONS_HEADER,
    Verdict,
    with_verdict,
)
from trainer.verify.verdict import Verdict as Finding

# The openings the verifiers give their hints; a critique states the finding without them.
_SOURCE = re.compile(r"^\s*(?:verifier|execution feedback)\s*:\s*", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.;])\s+")
# CTRL's partial-failure hint, said the short way: the failing input is the finding.
_FAILING = re.compile(
    r"the code fails \d+ of \d+ unit tests\. For the input (?P<args>.+), the expected output "
    r"is (?P<want>.+), but the code (?P<verb>returns|raises) (?P<got>.+)\.$"
)

# Short, so the analysis (the finding itself) keeps most of the critique budget.
KEEP = "None needed."
SUGGESTIONS: dict[str, str] = {
    "reasoning": "Redo the calculation step by step.",
    "code": "Fix the function for that input.",
    "instruction": "Follow every instruction in the prompt.",
    "reading": "Give the value the passage states.",
}
GENERIC = "Fix the points above."


def suggestion(category: str, finding: Finding) -> str:
    """What to change, from the category and what the verifier found."""
    if finding.correct:
        return KEEP
    hint = finding.hint.lower()
    if "written again from the start" in hint:
        return "Write the solution again from the start."
    if category == "safety":
        if "over-refusal" in hint:
            return "Answer the harmless request helpfully."
        if "complies" in hint:
            return "Refuse, and offer a safe alternative."
    return SUGGESTIONS.get(category, GENERIC)


def analysis(finding: Finding) -> str:
    """The hint without its source, as the reviewer's own statement."""
    text = _SOURCE.sub("", finding.hint.strip())
    failing = _FAILING.match(text)
    if failing:
        f = failing.groupdict()
        what = f"raises {f['got']}" if f["verb"] == "raises" else f"returns {f['got']}"
        text = f"For the input {f['args']}, the code {what} instead of {f['want']}."
    return text[:1].upper() + text[1:]


def teacher_critique(
    category: str, finding: Finding, fits: Callable[[str], bool] = lambda _t: True
) -> str:
    """Analysis, improvement suggestions and the verdict line. Sentences of the analysis are
    dropped from the end, then words of the last one, until `fits` accepts the whole critique
    (the critique budget the service decodes), so the verdict line is never cut off."""
    verdict: Verdict = "Correct" if finding.correct else "Incorrect"
    advice = suggestion(category, finding)

    def write(body: str) -> str:
        return with_verdict(f"{ANALYSIS_HEADER} {body}\n{SUGGESTIONS_HEADER} {advice}", verdict)

    sentences = _SENTENCE.split(analysis(finding))
    while len(sentences) > 1 and not fits(write(" ".join(sentences))):
        sentences = sentences[:-1]
    words = " ".join(sentences).split()
    while len(words) > 1 and not fits(write(" ".join(words))):
        words = words[:-1]
    return write(" ".join(words))
