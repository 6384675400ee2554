"""The code verifier: the response's Python extracted and run against the check's unit tests in
the sandbox (deterministic results cached)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from trainer.verify.hints import code_hint
from trainer.verify.sandbox import Limits, run_tests
from trainer.verify.verdict import Verdict

FENCE_RE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
DEF_RE = re.compile(r"^(?:def|class|import|from)\s", re.MULTILINE)


def extract_code(text: str) -> str | None:
    """The code of a response: its ```python fences joined, else the text from the first
    top-level `def` (or import) to the end of the last indented block."""
    fenced = FENCE_RE.findall(text)
    if fenced:
        return "\n\n".join(block.strip("\n") for block in fenced)
    m = DEF_RE.search(text)
    if m is None:
        return None
    lines = text[m.start() :].splitlines()
    keep: list[str] = []
    for line in lines:
        # Prose after the code: a non-indented line that is not code ends the block.
        prose = not DEF_RE.match(line) and not re.match(r"^[A-Za-z_][\w.]*\s*(=|\()", line)
        if keep and line and not line[0].isspace() and prose:
            break
        keep.append(line)
    return "\n".join(keep).strip("\n")


RUN_CACHE: dict[tuple[str, str, str, Limits], Verdict] = {}
RUN_CACHE_SIZE = 4096
CACHED_STATUSES = frozenset({"passed", "failed"})


def _run_cached(code: str, name: str, tests_json: str, limits: Limits) -> Verdict:
    # The generator meets the same implementation many times; a run that passed or failed is
    # deterministic for a given source and tests, so one run serves them all. A timeout, a
    # memory limit or a sandbox that could not start may go otherwise next time: not cached.
    key = (code, name, tests_json, limits)
    hit = RUN_CACHE.get(key)
    if hit is not None:
        return hit
    tests = [(tuple(args), want) for args, want in json.loads(tests_json)]
    result = run_tests(code, name, tests, limits)
    verdict = Verdict(result.passed, code_hint(result))
    if result.status in CACHED_STATUSES:
        if len(RUN_CACHE) >= RUN_CACHE_SIZE:
            RUN_CACHE.pop(next(iter(RUN_CACHE)))  # the oldest entry
        RUN_CACHE[key] = verdict
    return verdict


def check_unit_tests(check: Mapping[str, Any], text: str, limits: Limits | None) -> Verdict:
    name, tests = str(check["name"]), check["tests"]
    code = extract_code(text)
    if code is None:
        return Verdict(False, f"Verifier: the response contains no Python code defining `{name}`.")
    if not re.search(rf"\bdef\s+{re.escape(name)}\s*\(", code):
        return Verdict(False, f"Verifier: the code does not define a function named `{name}`.")
    return _run_cached(code, name, json.dumps(tests), limits or Limits())
