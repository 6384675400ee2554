"""The unseen category, reading: a short passage or table and a question about one value in it.
The right answer gives that value; the wrong one a plausible value taken from the same passage
(another person's, another row's). Never produced by `generate`: it measures transfer."""

from __future__ import annotations

import random

from trainer.data.synth.common import Case, Resp, pick
from trainer.data.synth.reasoning import NAMES

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quito", "Tallinn", "Accra", "Perth",
          "Porto", "Cusco", "Bergen"]  # fmt: skip
EVENTS = ["the book fair", "the science day", "the concert", "the chess final", "the bake sale"]


def _distinct(rng: random.Random, xs: list[str], n: int) -> list[str]:
    return rng.sample(xs, n)


def dates(rng: random.Random) -> tuple[str, str, str, list[str]]:
    events = _distinct(rng, EVENTS, 3)
    month = pick(rng, MONTHS)
    days = rng.sample(range(2, 28), 3)
    vals = [f"{month} {d}" for d in days]
    passage = (f"The school calendar was updated. {events[0].capitalize()} is on {vals[0]}. "
               f"{events[1].capitalize()} moved to {vals[1]}, and {events[2]} will be held on "
               f"{vals[2]}.")  # fmt: skip
    k = rng.randrange(3)
    return passage, f"On what date is {events[k]}?", vals[k], vals


def people(rng: random.Random) -> tuple[str, str, str, list[str]]:
    names = _distinct(rng, NAMES, 3)
    cities = _distinct(rng, CITIES, 3)
    passage = (f"{names[0]} grew up in {cities[0]} before moving away. {names[1]} has lived in "
               f"{cities[1]} all her life, while {names[2]} studied in {cities[2]}.")  # fmt: skip
    qs = [
        f"Where did {names[0]} grow up?",
        f"Which city has {names[1]} always lived in?",
        f"Where did {names[2]} study?",
    ]
    k = rng.randrange(3)
    return passage, qs[k], cities[k], cities


def table(rng: random.Random) -> tuple[str, str, str, list[str]]:
    rows = _distinct(rng, ["Apples", "Pears", "Plums", "Cherries", "Figs", "Lemons"], 3)
    vals = [str(v) for v in rng.sample(range(12, 480), 3)]
    passage = "| Fruit | Crates sold |\n|---|---|\n" + "\n".join(
        f"| {r} | {v} |" for r, v in zip(rows, vals, strict=True)
    )
    k = rng.randrange(3)
    return passage, f"How many crates of {rows[k].lower()} were sold?", vals[k], vals


def owner(rng: random.Random) -> tuple[str, str, str, list[str]]:
    names = _distinct(rng, NAMES, 3)
    pets = ["a parrot", "a tortoise", "a cat"]
    rng.shuffle(pets)
    passage = (f"At the club, {names[0]} brought {pets[0]}, {names[1]} came with {pets[1]} and "
               f"{names[2]} showed everyone {pets[2]}.")  # fmt: skip
    k = rng.randrange(3)
    return passage, f"Who brought {pets[k]}?", names[k], names


KINDS = [dates, people, table, owner]
ASK = ["Read the passage and answer.\n\n{p}\n\nQuestion: {q}", "{p}\n\n{q}",
       "Use only the text below.\n{p}\n\n{q} Answer briefly."]  # fmt: skip
SAY = ["The answer is {v}.", "{v}.", "According to the passage, it is {v}.", "**{v}**"]


def case(rng: random.Random) -> Case:
    passage, question, answer, values = pick(rng, KINDS)(rng)
    prompt = pick(rng, ASK).format(p=passage, q=question)
    check = {"kind": "lookup", "answer": answer, "others": [v for v in values if v != answer]}
    say = pick(rng, SAY)
    wrong = pick(rng, check["others"])
    return Case(prompt, check, [Resp(say.format(v=answer), "say")],
                [Resp(say.format(v=wrong), "say")])  # fmt: skip
