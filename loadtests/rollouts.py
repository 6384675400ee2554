"""Rollout-shaped /score items, as a PPO/GRPO trainer produces them: fresh sampled responses,
groups of several per prompt. Standard library only: the locustfile (tools virtualenv) and the
soak (service virtualenv) both draw from here."""

from __future__ import annotations

import random

TOPICS = (
    "the boiling point of water at altitude",
    "why the sky is blue",
    "how a hash map resolves collisions",
    "the causes of the French Revolution",
    "photosynthesis in C4 plants",
    "the difference between TCP and UDP",
    "how vaccines train the immune system",
    "the Pythagorean theorem",
    "what a Fourier transform does",
    "how interest compounds",
    "the life cycle of a star",
    "why recursion needs a base case",
)
TEMPLATES = (
    "Explain {t} to a high-school student.",
    "Give a short, accurate summary of {t}.",
    "What is a common misconception about {t}?",
    "Write two sentences about {t} for a textbook.",
)
WORDS = [
    "because",
    "therefore",
    "energy",
    "pressure",
    "light",
    "wavelength",
    "scatter",
    "molecule",
    "bucket",
    "chain",
    "probe",
    "packet",
    "handshake",
    "antigen",
    "memory",
    "cell",
    "triangle",
    "hypotenuse",
    "frequency",
    "signal",
    "principal",
    "rate",
    "fusion",
    "hydrogen",
    "helium",
    "function",
    "stack",
    "result",
    "simply",
    "note",
    "first",
    "second",
    "finally",
]


def make_prompt(rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(t=rng.choice(TOPICS))


def make_response(rng: random.Random) -> str:
    """A fresh sampled 'policy output': rollouts are (almost) never repeated."""
    n = rng.randint(12, 40)
    return " ".join(rng.choice(WORDS) for _ in range(n)) + f" ({rng.getrandbits(32):08x})."


def make_items(rng: random.Random, n: int, group_size: int) -> list[dict[str, str]]:
    """n items in groups of `group_size` responses per prompt (GRPO-style)."""
    items: list[dict[str, str]] = []
    while len(items) < n:
        prompt = make_prompt(rng)
        for _ in range(min(group_size, n - len(items))):
            items.append({"prompt": prompt, "response": make_response(rng)})
    return items
