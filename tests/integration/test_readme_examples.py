"""The README's curl examples, sent to the real test gateway: every answer must have the shape
of the output the README shows under its example (the same keys, recursively, and the same value
types; list lengths too where the request fixes them), so the manual cannot drift from the API.

An example is a ```bash block holding one `curl` command against localhost:8000; the fenced block
right after it is what it prints: ```json (compared by shape) or ```text (Prometheus lines, whose
sample names and label names must be exported). Values may differ (sampled critiques, another
run); a `null` shown in the README stands for a field that may be unset, so any value matches it,
and the last reload in /info depends on what the server did before, so only its type is checked.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import LiveServer

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
README_HOST = re.compile(r"^(?:https?://)?localhost:8000(?P<path>/\S*)$")
# Lists whose length the request does not fix: their elements are compared with the first shown.
# Lists whose length depends on the run (a /refine stops early, a round may keep no revision).
FREE_LENGTH = {"warnings", "rounds", "candidates", "trajectories", "criteria"}
# Answers that tell the server's history (the last reload: ok or failed, each with its own
# fields), not what the request asked: only checked to be an object or null.
HISTORY = {"$.reload.last"}


@dataclass(frozen=True)
class Example:
    """One curl command of the README and the output shown under it."""

    line: int
    method: str
    path: str
    headers: dict[str, str]
    body: str | None
    shown_kind: str
    shown: str

    def __str__(self) -> str:
        return f"README.md:{self.line} {self.method} {self.path}"


def parse_curl(command: str) -> tuple[str, str, dict[str, str], str | None]:
    """(method, path, headers, body) of one curl command line; what follows a pipe is ignored."""
    tokens = shlex.split(command.replace("\\\n", " "))
    if "|" in tokens:
        tokens = tokens[: tokens.index("|")]
    if not tokens or tokens[0] != "curl":
        raise ValueError(f"not a curl command: {command!r}")
    method: str | None = None
    path: str | None = None
    headers: dict[str, str] = {}
    body: str | None = None
    args = iter(tokens[1:])
    for arg in args:
        if arg in ("-s", "--silent"):
            continue
        if arg in ("-X", "--request"):
            method = next(args)
        elif arg in ("-H", "--header"):
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data"):
            body = next(args)
        elif arg.startswith("-"):
            raise ValueError(f"curl option {arg} is not understood by this test")
        else:
            m = README_HOST.match(arg)
            if m is None:
                raise ValueError(f"the example's URL {arg!r} is not on localhost:8000")
            path = m.group("path")
    if path is None:
        raise ValueError(f"no URL in {command!r}")
    return method or ("POST" if body is not None else "GET"), path, headers, body


def readme_examples(text: str) -> list[Example]:
    blocks = list(FENCE.finditer(text))
    out = []
    for i, block in enumerate(blocks):
        lang, content = block.group(1), block.group(2)
        if lang != "bash" or not re.search(r"^curl ", content, re.MULTILINE):
            continue
        line = text.count("\n", 0, block.start()) + 1
        if i + 1 == len(blocks) or blocks[i + 1].group(1) not in ("json", "text"):
            raise AssertionError(f"README.md:{line}: a curl example without its output under it")
        method, path, headers, body = parse_curl(content.strip())
        shown = blocks[i + 1]
        out.append(Example(line, method, path, headers, body, shown.group(1), shown.group(2)))
    return out


def shape_differences(shown: Any, got: Any, where: str = "$") -> list[str]:
    """Where `got` (the service's answer) differs in shape from `shown` (the README's output)."""
    if shown is None:
        return []
    if where in HISTORY:
        ok = got is None or isinstance(got, dict)
        return [] if ok else [f"{where}: an object or null expected, got {_kind(got)}"]
    if isinstance(shown, dict):
        if not isinstance(got, dict):
            return [f"{where}: the README shows an object, the service returned {_kind(got)}"]
        diffs = [f"{where}.{k}: shown in the README, not returned" for k in shown if k not in got]
        diffs += [f"{where}.{k}: returned, not shown in the README" for k in got if k not in shown]
        for key in shown:
            if key in got:
                diffs += shape_differences(shown[key], got[key], f"{where}.{key}")
        return diffs
    if isinstance(shown, list):
        if not isinstance(got, list):
            return [f"{where}: the README shows a list, the service returned {_kind(got)}"]
        if where.rsplit(".", 1)[-1] in FREE_LENGTH:
            pairs = [(shown[0], g) for g in got] if shown else []
        elif len(shown) != len(got):
            return [
                f"{where}: the README shows {len(shown)} entries, the service returned {len(got)}"
            ]
        else:
            pairs = list(zip(shown, got, strict=True))
        return [
            d for i, (s, g) in enumerate(pairs) for d in shape_differences(s, g, f"{where}[{i}]")
        ]
    if _kind(shown) != _kind(got) and not (_kind(shown) == "number" and _kind(got) == "integer"):
        return [f"{where}: the README shows {_kind(shown)}, the service returned {_kind(got)}"]
    return []


def _kind(value: Any) -> str:
    """The JSON type of a value (a float that happens to be whole still reads as a number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def metric_differences(shown: str, got: str) -> list[str]:
    """Each Prometheus sample the README shows must be exported, with the same label names."""
    exported = {_sample_signature(line) for line in got.splitlines() if line and line[0] != "#"}
    return [
        f"{line!r}: no such sample is exported"
        for line in shown.splitlines()
        if line.strip() and not line.startswith("#") and _sample_signature(line) not in exported
    ]


def _sample_signature(line: str) -> tuple[str, frozenset[str]]:
    name, _, rest = line.partition("{")
    if not rest:
        return line.split()[0], frozenset()
    labels = rest.rsplit("}", 1)[0]
    return name, frozenset(re.findall(r'(\w+)="', labels))


EXAMPLES = readme_examples(README.read_text())


def test_shape_differences_name_missing_extra_and_mistyped_fields() -> None:
    shown = {"reward": 1.5, "results": [{"cached": False}], "warnings": [], "stats": None}
    assert shape_differences(shown, {**shown, "stats": {"mean": 6.3}}) == []
    assert shape_differences(shown, {**shown, "warnings": ["w"], "reward": 2}) == []
    assert shape_differences(shown, {"reward": 1.5, "results": [], "warnings": [], "x": 1}) == [
        "$.stats: shown in the README, not returned",
        "$.x: returned, not shown in the README",
        "$.results: the README shows 1 entries, the service returned 0",
    ]
    got = {**shown, "reward": "1.5", "results": [{"cached": 0}]}
    assert shape_differences(shown, got) == [
        "$.reward: the README shows number, the service returned string",
        "$.results[0].cached: the README shows boolean, the service returned integer",
    ]


def test_curl_commands_are_parsed_as_sent() -> None:
    command = """curl -s localhost:8000/score -H 'content-type: application/json' -d '{
    "items": []}' | jq ."""
    assert parse_curl(command) == (
        "POST",
        "/score",
        {"content-type": "application/json"},
        '{\n    "items": []}',
    )
    assert parse_curl("curl -s -X POST localhost:8000/admin/reload")[:2] == (
        "POST",
        "/admin/reload",
    )
    assert parse_curl("curl -s localhost:8000/ready")[:2] == ("GET", "/ready")
    with pytest.raises(ValueError, match="not on localhost:8000"):
        parse_curl("curl -s example.com/score")


def test_the_readme_has_curl_examples() -> None:
    """An edit that broke the fences would silently leave nothing to check."""
    paths = {e.path for e in EXAMPLES}
    for route in ("/score", "/critique", "/get_reward", "/info", "/ready", "/health", "/metrics"):
        assert route in paths, f"the README has no curl example for {route}"


@pytest.mark.engine
@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_readme_example_answers_in_the_shape_shown(
    example: Example, live_server: LiveServer
) -> None:
    with live_server.client() as client:
        r = client.request(
            example.method, example.path, headers=example.headers, content=example.body
        )
    if example.shown_kind == "text":
        assert r.status_code == 200, r.text
        diffs = metric_differences(example.shown, r.text)
    else:
        shown = json.loads(example.shown)
        shows_error = isinstance(shown, dict) and isinstance(shown.get("error"), dict)
        assert shows_error == (r.status_code >= 400), (r.status_code, r.text)
        diffs = shape_differences(shown, r.json())
    assert not diffs, f"{example}: the README's output differs from the service's:\n" + "\n".join(
        diffs
    )
