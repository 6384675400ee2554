"""Execution feedback as a hint for critique sampling, after CTRL's three schemes: a solution that
passes gets a brief positive note; one that fails every test (or does not run) is told to start
afresh; one that fails some gets the error, or one failing test's input, expected and actual
output. Hints go into the critique-sampling prompt only, never into an inference prompt."""

from __future__ import annotations

from trainer.verify.sandbox import SandboxResult

LIMIT_NOTES = {
    "timeout": "it does not finish within the time limit (an endless loop, or far too slow)",
    "memory": "it runs out of memory",
    "output_limit": "it prints without end",
    "forbidden": "it tries something a solution must not do ({error})",
}


def code_hint(result: SandboxResult) -> str:
    """The hint for one solution's sandbox run."""
    total = len(result.tests)
    if result.passed:
        return f"Execution feedback: the code passes all {total} unit tests."
    if result.status == "error":
        return (
            f"Execution feedback: the code does not run ({result.error}). It fails every unit "
            "test; the solution should be written again from the start."
        )
    if result.status in LIMIT_NOTES:
        note = LIMIT_NOTES[result.status].format(error=result.error or "")
        return f"Execution feedback: {note}. The solution should be written again from the start."
    failing = [t for t in result.tests if not t.passed]
    if len(failing) == total:
        return (
            f"Execution feedback: the code fails all {total} unit tests. The approach is wrong; "
            "the solution should be written again from the start."
        )
    first = failing[0]
    got = f"raises {first.error}" if first.error else f"returns {first.actual}"
    return (
        f"Execution feedback: the code fails {len(failing)} of {total} unit tests. For the input "
        f"{first.args}, the expected output is {first.expected}, but the code {got}."
    )
