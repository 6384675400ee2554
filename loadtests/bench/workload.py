"""The benchmark workload: deterministic (prompt, response) pairs of about 200 tokens together,
and the sampling settings every path uses."""

from __future__ import annotations

from dataclasses import dataclass

TOPICS = [
    "photosynthesis",
    "binary search",
    "the French revolution",
    "compound interest",
    "plate tectonics",
    "TCP handshakes",
    "vaccines",
    "recursion",
]


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str

    def to_json(self) -> dict[str, str]:
        return {"prompt": self.prompt, "response": self.response}


@dataclass(frozen=True)
class Workload:
    pairs: list[Pair]
    m: int
    max_tokens: int
    temperature: float
    top_p: float

    @property
    def n(self) -> int:
        return len(self.pairs)


def make_pairs(n: int) -> list[Pair]:
    """Distinct pairs (each prompt carries its index, so no two share a cache entry)."""
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = (
            f"Question {i}: Explain {topic} to a first-year student in a short paragraph. "
            "Give one concrete example, name one common misconception, and keep the "
            "explanation accurate and simple."
        )
        response = (
            f"{topic.capitalize()} is easiest to see through an example. "
            * 2
            + f"Case {i}: a student applies the idea step by step and checks the result. "
            "A common misconception is that it works the same way in every situation, "
            "but the details depend on the conditions. In short, the core idea is simple, "
            "and practice with small examples makes it stick. "
            f"To check your understanding of {topic}, try explaining it to a friend in your "
            "own words, then work through a second example without notes. If you get stuck, "
            "go back to the definition, find the step that confused you, and test it on a "
            "smaller case. Most students find that two or three short practice sessions are "
            "enough to remember it for the exam."
        )
        pairs.append(Pair(prompt, response))
    return pairs
