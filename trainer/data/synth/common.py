"""What every category module shares: a family draws a Case (a prompt, its check, and right and
wrong responses in the family's formats); the split builders pick the pair from it."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer.data.pairs import PreferencePair
from trainer.verify.checks import verify


@dataclass(frozen=True)
class Resp:
    """One response; `style` names its format: two responses with one style look alike."""

    text: str
    style: str


@dataclass(frozen=True)
class Case:
    prompt: str
    check: dict[str, Any]
    good: list[Resp]
    bad: list[Resp]


Family = Callable[[random.Random], Case]


def _same(r: Resp, text: str) -> Resp:
    return Resp(text, r.style)


@dataclass(frozen=True)
class Category:
    """A category's families (one held out of training) and how its responses are made to
    sound sure or unsure, and long-winded, without changing whether they are right."""

    name: str
    families: dict[str, Family]
    heldout: str
    hedge: Callable[[random.Random, str], str] | None = None
    assure: Callable[[random.Random, str], str] | None = None
    elaborate: Callable[[random.Random, str, str], str] | None = None
    training: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "training", [f for f in self.families if f != self.heldout])


def pick(rng: random.Random, xs: list[Any]) -> Any:
    return xs[rng.randrange(len(xs))]


def make_pair(cat: str, family: str, i: int, split: str, case: Case, chosen: str,
              rejected: str) -> PreferencePair:  # fmt: skip
    """The pair, after the verifier confirms its label (chosen right, rejected wrong)."""
    good, bad = verify(case.check, chosen), verify(case.check, rejected)
    if not good.correct or bad.correct:
        raise AssertionError(
            f"{cat}/{family} ({split} {i}): label does not match the verifier: "
            f"chosen {good.hint!r}; rejected {bad.hint!r}"
        )
    return PreferencePair(
        case.prompt, chosen, rejected, cat, f"{cat}-{split}-{i}", f"{cat}/{family}", case.check
    )


def plain(rng: random.Random, case: Case) -> tuple[str, str]:
    """A right and a wrong response, half the time in the same format; the length balance
    between them is left to the families (right and wrong variants of similar size)."""
    g = pick(rng, case.good)
    same = [b for b in case.bad if b.style == g.style]
    b = pick(rng, same) if same and rng.random() < 0.5 else pick(rng, case.bad)
    if rng.random() < 0.75:  # the wrong answer nearest in length, so length tells nothing
        b = min(case.bad, key=lambda r: abs(len(r.text) - len(g.text)))
    return g.text, b.text


def hard(rng: random.Random, cat: Category, case: Case) -> tuple[str, str] | None:
    """Same format, lengths within ±15%; half the time a hedged right answer against a
    confident wrong one. None if this case has no such pair."""
    options = [(g, b) for g in case.good for b in case.bad if g.style == b.style]
    rng.shuffle(options)
    for g, b in options:
        gt, bt = g.text, b.text
        if cat.hedge and cat.assure and rng.random() < 0.5:
            gt, bt = cat.hedge(rng, gt), cat.assure(rng, bt)
        if 0.85 <= len(bt) / max(1, len(gt)) <= 1.15:
            return gt, bt
    return None


def long_wrong(rng: random.Random, cat: Category, case: Case) -> tuple[str, str] | None:
    """The shortest right answer against a wrong one made long and elaborate (restated
    question, headers, politeness); None if it would not stay wrong or long enough."""
    g = min(case.good, key=lambda r: len(r.text))
    b = pick(rng, case.bad)
    assert cat.elaborate is not None
    bt = cat.elaborate(rng, case.prompt, b.text)
    if len(bt) < 1.5 * len(g.text) or len(bt) > 1400 or verify(case.check, bt).correct:
        return None
    return g.text, bt


def restate(prompt: str) -> str:
    first = prompt.strip().split("\n")[0]
    return first if len(first) <= 160 else first[:157].rsplit(" ", 1)[0] + "..."


OPENERS = [
    "Great question! Let me walk you through this carefully.",
    "Thank you for asking, I'm happy to help with this!",
    "Absolutely, this is a great thing to ask about. Let me explain in detail.",
    "What a thoughtful question! I'll go through it step by step.",
]
CLOSERS = [
    "I hope this thorough explanation helps! Please let me know if you have any other questions.",
    "I hope this was helpful, and feel free to reach out if anything is unclear!",
    "Thanks again for the great question. Let me know if you'd like me to go into more depth!",
]


def elaborate_generic(rng: random.Random, prompt: str, text: str) -> str:
    """Politeness, the question restated and headers around a response."""
    return (
        f'{pick(rng, OPENERS)}\n\n## Your question\n\nYou asked: "{restate(prompt)}"\n\n'
        f"## Detailed answer\n\n{text}\n\n## Summary\n\nI have covered everything you asked "
        f"above, carefully and completely. {pick(rng, CLOSERS)}"
    )
