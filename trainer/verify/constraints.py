"""The instruction verifier: each formatting and content constraint of the prompt checked on the
response."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from trainer.verify.verdict import Verdict

WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’-]*")
BULLET_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S")


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def bullets(text: str) -> int:
    return sum(bool(BULLET_RE.match(line)) for line in text.splitlines())


def paragraphs(text: str) -> int:
    return len([p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()])


def _has_word(text: str, word: str) -> int:
    return len(re.findall(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text, re.IGNORECASE))


JSON_PREAMBLE_CHARS = 80


def _json_ok(text: str, only: bool = True) -> str | None:
    """None if the text is valid JSON; with only=False, a short line of introduction before a
    JSON object is allowed ("Here is the JSON:")."""
    body = text.strip()
    if not only:
        start = body.find("{")
        if start < 0:
            return "it contains no JSON object"
        if len(body[:start].strip()) > JSON_PREAMBLE_CHARS:
            return "the JSON object is buried in prose"
        body = body[start:]
    try:
        json.loads(body)
    except ValueError as exc:
        return f"it is not valid JSON ({str(exc).split(':')[0]})"
    return None


EMPHASIS_RE = re.compile(r"\*\*|__|(?<!\w)[*_]|[*_](?!\w)|`")


def _plain_ends(text: str) -> str:
    """The text without Markdown emphasis, a heading mark or quotes at its ends:
    "**In short**: ..." starts with "In short"."""
    plain = EMPHASIS_RE.sub("", text).strip()
    return re.sub(r"^(?:#+|>)\s*", "", plain).strip().strip("\"'“”").strip()


def _one(c: Mapping[str, Any], text: str) -> str | None:
    """None if `text` meets constraint `c`, else how it fails."""
    t = c["type"]
    if t == "max_words":
        n = len(words(text))
        return None if n <= c["n"] else f"it has {n} words; the limit is {c['n']}"
    if t == "min_words":
        n = len(words(text))
        return None if n >= c["n"] else f"it has {n} words; at least {c['n']} are required"
    if t == "exact_bullets":
        n = bullets(text)
        return None if n == c["n"] else f"it has {n} bullet points instead of exactly {c['n']}"
    if t == "n_paragraphs":
        n = paragraphs(text)
        return None if n == c["n"] else f"it has {n} paragraphs instead of {c['n']}"
    if t == "forbidden_word":
        n = _has_word(text, c["word"])
        return None if n == 0 else f"it uses the forbidden word '{c['word']}' ({n} times)"
    if t == "include_keyword":
        ok = _has_word(text, c["word"]) > 0
        return None if ok else f"it never uses the required word '{c['word']}'"
    if t == "all_caps":
        lower = [w for w in words(text) if w != w.upper()]
        if not words(text):
            return "it has no words"
        return None if not lower else f"it is not all capitals (e.g. '{lower[0]}')"
    if t == "lowercase":
        upper = [w for w in words(text) if w != w.lower()]
        if not words(text):
            return "it has no words"
        return None if not upper else f"it is not all lowercase (e.g. '{upper[0]}')"
    if t == "starts_with":
        ok = _plain_ends(text).lower().startswith(_plain_ends(c["text"]).lower())
        return None if ok else f"it does not start with '{c['text']}'"
    if t == "must_end_with":
        ok = _plain_ends(text).lower().endswith(_plain_ends(c["text"]).lower())
        tail = text.rstrip()[-30:]
        return None if ok else f"it ends with '{tail}' instead of '{c['text']}'"
    if t == "json_format":
        return _json_ok(text, bool(c.get("only", True)))
    raise ValueError(f"unknown constraint {t!r}")


NAMES = {
    "max_words": "word limit",
    "min_words": "minimum length",
    "exact_bullets": "bullet-count rule",
    "n_paragraphs": "paragraph-count rule",
    "forbidden_word": "forbidden-word rule",
    "include_keyword": "required-keyword rule",
    "all_caps": "all-capitals rule",
    "lowercase": "all-lowercase rule",
    "starts_with": "required opening",
    "must_end_with": "required ending",
    "json_format": "JSON-format rule",
}


def check_constraints(check: Mapping[str, Any], text: str) -> Verdict:
    cons: Sequence[Mapping[str, Any]] = check["constraints"]
    if not words(text):
        return Verdict(False, "Verifier: the response has no words, so it meets no instruction.")
    failures = [(c, why) for c in cons if (why := _one(c, text)) is not None]
    if not failures:
        n = len(cons)
        what = "the constraint" if n == 1 else f"all {n} constraints"
        return Verdict(True, f"Verifier: the response meets {what} ({_list(cons)}).")
    c, why = failures[0]
    more = f" It also breaks the {NAMES[failures[1][0]['type']]}." if len(failures) > 1 else ""
    return Verdict(False, f"Verifier: the response breaks the {NAMES[c['type']]}: {why}.{more}")


def _list(cons: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(NAMES[c["type"]] for c in cons)
