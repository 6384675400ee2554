"""The arithmetic verifier: the final answer against the reference, and the first wrong or
missing step of the working, named."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from trainer.verify.verdict import Verdict

NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
OPS = {"×": "×", "x": "×", "X": "×", "*": "×", "+": "+", "-": "−", "−": "−", "/": "÷", "÷": "÷"}
OP_CHARS = "×xX*+\\-−/÷"
STEP_RE = re.compile(rf"({NUM})[ \t]*([{OP_CHARS}])[ \t]*({NUM})[ \t]*=[ \t]*({NUM})")
# A chain of two or more operations, "3 × 4 + 5 × 2 = 22", checked as one expression.
CHAIN_RE = re.compile(rf"{NUM}(?:[ \t]*[{OP_CHARS}][ \t]*{NUM}){{2,}}[ \t]*=[ \t]*{NUM}")
CHAIN_NUM_RE = re.compile(rf"[ \t]*({NUM})")
CHAIN_OP_RE = re.compile(rf"[ \t]*([{OP_CHARS}])")
OPERATOR_BEFORE_RE = re.compile(r"(?:[×*+\-−/÷]|(?:^|[\d\s])[xX])$")
ANSWER_RES = [
    # "The answer is 43", "Final answer: 43", "answer is probably $43", "Answer: **43**"
    re.compile(
        rf"(?:answer|result)\s*(?:is|would be|should be|comes to|:|=)?\s*[:\-]?\s*"
        rf"(?:(?:probably|likely|about|definitely|clearly|exactly|simply|just)\s+)?\**\s*({NUM})",
        re.IGNORECASE,
    ),
    re.compile(rf"\*\*\s*({NUM})[^*\n]{{0,20}}\*\*"),  # **43** or **43 apples**
    re.compile(rf"=\s*({NUM})\W*$"),  # "= 43" at the very end
]
LAST_NUM_RE = re.compile(NUM)
VERB = {"+": "add", "−": "subtract", "×": "multiply", "÷": "divide"}


def _num(s: str) -> float:
    return float(s.replace("$", "").replace(",", ""))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _close(a: float, b: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return False  # "1111...1" parses as inf, which equals nothing
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def _apply(a: float, op: str, b: float) -> float | None:
    if op == "+":
        return a + b
    if op == "−":
        return a - b
    if op == "×":
        return a * b
    if op == "÷":
        return a / b if b else None
    return None


def final_answer(text: str) -> float | None:
    """The response's final answer: the last "answer is N", else the last **N**, else a
    trailing "= N", else the last number in the text."""
    for pattern in ANSWER_RES:
        hits = pattern.findall(text)
        if hits:
            return _num(hits[-1])
    numbers = LAST_NUM_RE.findall(text)
    return _num(numbers[-1]) if numbers else None


def _decimals(written: str) -> int:
    return len(written.split(".")[1]) if "." in written else 0


def matches(value: float | None, written: str) -> bool:
    """Whether the result written as `written` states `value`: exactly, or rounded to the
    decimals written ("22 / 7 = 3.14")."""
    if value is None:
        return False
    c = _num(written)
    if _close(value, c):
        return True
    d = _decimals(written)
    return d > 0 and math.isfinite(value) and abs(value - c) <= 0.5 * 10.0**-d + 1e-9


def _isolated(text: str, start: int) -> bool:
    """No operator directly before the step's first number: "5 × 2 = 22" inside
    "3 × 4 + 5 × 2 = 22" is not a step of its own (a bullet's dash is not an operator)."""
    line = text[:start].rsplit("\n", 1)[-1].rstrip()
    if line in ("", "-", "*", "•", "+"):
        return True
    return OPERATOR_BEFORE_RE.search(line) is None


def steps_in(text: str) -> list[tuple[float, str, float, float, str]]:
    """Every isolated "a op b = c" the response writes: (a, op, b, c, the text as written)."""
    out = []
    for m in STEP_RE.finditer(text):
        if not _isolated(text, m.start()):
            continue
        a, op, b, c = m.group(1), OPS[m.group(2)], m.group(3), m.group(4)
        out.append((_num(a), op, _num(b), _num(c), m.group(0).rstrip(",")))
    return out


def _chain_tokens(expr: str) -> list[str] | None:
    """Numbers and operators in turn ("10-3" is 10, −, 3, not 10 and -3)."""
    tokens, pos, want_num = [], 0, True
    while pos < len(expr.rstrip()):
        m = (CHAIN_NUM_RE if want_num else CHAIN_OP_RE).match(expr, pos)
        if m is None:
            return None
        tokens.append(m.group(1))
        pos, want_num = m.end(), not want_num
    return tokens if len(tokens) % 2 == 1 else None


def _evaluate_chain(tokens: list[str]) -> float | None:
    """A chain of numbers and operators, × and ÷ before + and −."""
    values, ops = [_num(tokens[0])], []
    for op, n in zip(tokens[1::2], tokens[2::2], strict=True):
        o, v = OPS[op], _num(n)
        if o in "×÷":
            got = _apply(values[-1], o, v)
            if got is None:
                return None
            values[-1] = got
        else:
            ops.append(o)
            values.append(v)
    total = values[0]
    for o, v in zip(ops, values[1:], strict=True):
        total = total + v if o == "+" else total - v
    return total


def wrong_chains(text: str) -> list[tuple[str, float | None]]:
    """The chained expressions ("3 × 4 + 5 × 2 = 22") whose stated result is wrong: (the text
    as written, what it should be)."""
    out = []
    for m in CHAIN_RE.finditer(text):
        expr, _, result = m.group(0).rpartition("=")
        tokens = _chain_tokens(expr)
        if tokens is None or len(tokens) < 5:
            continue
        value = _evaluate_chain(tokens)
        if not matches(value, result.strip()):
            out.append((m.group(0).rstrip(","), value))
    return out


def check_arithmetic(check: Mapping[str, Any], text: str) -> Verdict:
    answer = float(check["answer"])
    reference = [(float(a), str(op), float(b), float(c)) for a, op, b, c in check["steps"]]
    got = final_answer(text)
    if got is None:
        return Verdict(
            False,
            f"Verifier: the response states no final answer; the correct result is {_fmt(answer)}.",
        )
    steps = steps_in(text)
    wrong = next(
        (
            (s[4], _apply(s[0], s[1], s[2]))
            for s in steps
            if not matches(_apply(s[0], s[1], s[2]), s[4].rpartition("=")[2].strip())
        ),
        None,
    ) or next(iter(wrong_chains(text)), None)
    if _close(got, answer):
        if wrong is None:
            return Verdict(
                True, f"Verifier: the final answer {_fmt(answer)} is correct, and so is every step."
            )
        written, should = wrong
        return Verdict(
            False,
            f"Verifier: the final answer {_fmt(answer)} is right, but the step '{written}' is "
            f"wrong (it should be {_fmt(should) if should is not None else 'undefined'}).",
        )
    head = f"Verifier: the final answer {_fmt(got)} is wrong; the correct result is {_fmt(answer)}."
    if wrong is not None:
        written, should = wrong
        return Verdict(
            False,
            f"{head} The first wrong step is '{written}' (it should be "
            f"{_fmt(should) if should is not None else 'undefined'}).",
        )
    for a, op, b, _c, written in steps:
        for ra, rop, rb, rc in reference:
            same = sorted((a, b)) == sorted((ra, rb))
            if same and op != rop:
                return Verdict(
                    False,
                    f"{head} The step '{written}' uses the wrong operation; it should "
                    f"{VERB[rop]}: {_fmt(ra)} {rop} {_fmt(rb)} = {_fmt(rc)}.",
                )
    values = {s[3] for s in steps}
    if any(_close(v, answer) for v in values):
        return Verdict(
            False,
            f"{head} The working reaches {_fmt(answer)}, but the final line states {_fmt(got)}.",
        )
    for ra, rop, rb, rc in reference:
        if not any(_close(v, rc) for v in values):
            return Verdict(
                False,
                f"{head} It is missing the step {_fmt(ra)} {rop} {_fmt(rb)} = {_fmt(rc)} "
                f"(it does not {VERB[rop]} {_fmt(rb)}).",
            )
    return Verdict(False, f"{head} Its steps do not lead to that result.")
