"""Instruction following: a writing task plus one or two checkable constraints. A response is a
Draft (sentences, a layout, a case, an opening and an ending) rendered to text; each constraint
knows how to make a draft meet it and how to make it break it, so right and wrong answers are
built from the same material and differ only where the constraint looks."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import Any

from trainer.data.synth.common import Case, Category, Family, Resp, elaborate_generic, pick
from trainer.verify.checks import verify, words

TOPICS = ["the ocean", "autumn", "libraries", "bicycles", "coffee", "mountains", "rain",
          "trains", "gardens", "city parks", "winter mornings", "old maps", "jazz", "bees",
          "lighthouses", "bread baking", "night markets", "deserts", "rivers", "chess"]  # fmt: skip
SENTENCES = [
    "{T} changes with the seasons.", "Many people enjoy {t} for its calm.",
    "Writers often describe {t} with vivid images.", "{T} has a long and curious history.",
    "Children and adults alike find something to love in {t}.",
    "A quiet hour with {t} can reset a busy mind.", "{T} rewards patience and attention.",
    "Photographers return to {t} again and again.", "Every region has its own take on {t}.",
    "Small details make {t} feel new each time.", "Some of the best memories involve {t}.",
    "{T} brings strangers together in unexpected ways.",
]  # fmt: skip
FORBIDDEN = ["very", "really", "thing", "nice", "good", "great"]
KEYWORDS = ["simple", "bright", "gentle", "local", "steady", "open"]
OPENINGS = ["In short", "Here it is", "To begin", "Dear reader"]
ENDINGS = ["That is all.", "Thank you.", "The end.", "Enjoy!"]


@dataclass(frozen=True)
class Draft:
    sentences: tuple[str, ...]
    layout: str = "prose"  # prose | bullets | paragraphs | json | json_broken
    case: str = "normal"  # normal | upper | lower
    prefix: str = ""
    suffix: str = ""
    topic: str = ""


def render(d: Draft) -> str:
    s = list(d.sentences)
    if d.layout == "bullets":
        body = "\n".join(f"- {x}" for x in s)
    elif d.layout == "paragraphs":
        body = "\n\n".join(s)
    elif d.layout == "json":
        body = json.dumps({"topic": d.topic, "points": s})
    elif d.layout == "json_broken":
        body = "Here is the JSON:\n" + json.dumps({"topic": d.topic, "points": s})
    else:
        body = " ".join(s)
    text = (f"{d.prefix}: " if d.prefix else "") + body + (f"\n{d.suffix}" if d.suffix else "")
    return text.upper() if d.case == "upper" else text.lower() if d.case == "lower" else text


# Constraint = (JSON spec, prompt text, satisfy(draft), violate(draft)).
def _nwords(d: Draft) -> int:
    return len(words(render(d)))


def satisfy(c: dict[str, Any], d: Draft, pool: list[str]) -> Draft:
    t = c["type"]
    if t == "max_words":
        while _nwords(d) > c["n"] and len(d.sentences) > 1:
            d = replace(d, sentences=d.sentences[:-1])
        while _nwords(d) > c["n"]:
            d = replace(d, sentences=(" ".join(d.sentences[0].split()[:-2]) + ".",))
        return d
    if t == "min_words":
        extra = [x for x in pool if x not in d.sentences]
        while _nwords(d) < c["n"] and extra:
            d = replace(d, sentences=(*d.sentences, extra.pop(0)))
        return d
    if t == "exact_bullets":
        return replace(d, layout="bullets", sentences=tuple(pool[: c["n"]]))
    if t == "n_paragraphs":
        return replace(d, layout="paragraphs", sentences=tuple(pool[: c["n"]]))
    if t == "include_keyword":
        s = list(d.sentences)
        s[0] = s[0].rstrip(".") + f", in a {c['word']} way."
        return replace(d, sentences=tuple(s))
    if t == "all_caps":
        return replace(d, case="upper")
    if t == "lowercase":
        return replace(d, case="lower")
    if t == "starts_with":
        return replace(d, prefix=c["text"])
    if t == "must_end_with":
        return replace(d, suffix=c["text"])
    if t == "json_format":
        return replace(d, layout="json")
    return d  # forbidden_word: the pool never has it


def violate(rng: random.Random, c: dict[str, Any], d: Draft, pool: list[str]) -> Draft:
    t = c["type"]
    if t == "max_words":
        extra = [x for x in pool if x not in d.sentences]
        while _nwords(d) <= c["n"] and extra:
            d = replace(d, sentences=(*d.sentences[:-1], extra.pop(0), d.sentences[-1]))
        return d
    if t == "min_words":
        while _nwords(d) >= c["n"] and len(d.sentences) > 1:
            d = replace(d, sentences=d.sentences[:-1])
        return d
    if t in ("exact_bullets", "n_paragraphs"):
        n = c["n"] + pick(rng, [-1, 1])
        return replace(d, sentences=tuple(pool[:n]))
    if t == "forbidden_word":
        s = list(d.sentences)
        s[-1] = s[-1].rstrip(".!") + f", which is {c['word']} worth knowing."
        return replace(d, sentences=tuple(s))
    if t == "include_keyword":
        return replace(
            d, sentences=tuple(x.replace(f", in a {c['word']} way", "") for x in d.sentences)
        )
    if t in ("all_caps", "lowercase"):
        return replace(d, case="normal")
    if t == "starts_with":
        return replace(d, prefix=pick(rng, [o for o in OPENINGS if o != c["text"]]))
    if t == "must_end_with":
        return replace(d, suffix=pick(rng, [e for e in ENDINGS if e != c["text"]]))
    if t == "json_format":
        return replace(d, layout="json_broken")
    raise ValueError(t)


def constraint(rng: random.Random, t: str) -> tuple[dict[str, Any], str]:
    """A constraint of type t and one of its phrasings."""
    if t == "max_words":
        n = rng.randint(15, 35)
        return {"type": t, "n": n}, pick(rng, [f"Answer in at most {n} words.",
                                               f"Keep it under {n + 1} words.",
                                               f"Use no more than {n} words."])  # fmt: skip
    if t == "min_words":
        n = rng.randint(25, 45)
        return {"type": t, "n": n}, pick(rng, [f"Write at least {n} words.",
                                               f"Use {n} words or more."])  # fmt: skip
    if t == "exact_bullets":
        n = rng.randint(2, 5)
        return {"type": t, "n": n}, pick(rng, [f"Use exactly {n} bullet points.",
                                               f"Give it as a list of exactly {n} '- ' bullets."])  # fmt: skip
    if t == "n_paragraphs":
        n = rng.randint(2, 4)
        return {"type": t, "n": n}, pick(rng, [f"Write exactly {n} paragraphs separated by blank lines.",
                                               f"Split it into {n} paragraphs."])  # fmt: skip
    if t == "forbidden_word":
        w = pick(rng, FORBIDDEN)
        return {"type": t, "word": w}, pick(rng, [f"Do not use the word '{w}'.",
                                                  f"Avoid the word \"{w}\" entirely."])  # fmt: skip
    if t == "include_keyword":
        w = pick(rng, KEYWORDS)
        return {"type": t, "word": w}, pick(rng, [f"Include the word '{w}'.",
                                                  f"Make sure the word \"{w}\" appears."])  # fmt: skip
    if t == "all_caps":
        return {"type": t}, pick(rng, ["Write your whole answer in capital letters.",
                                       "Reply in ALL CAPS."])  # fmt: skip
    if t == "lowercase":
        return {"type": t}, pick(rng, ["Use only lowercase letters.",
                                       "No capital letters anywhere."])  # fmt: skip
    if t == "starts_with":
        p = pick(rng, OPENINGS)
        return {"type": t, "text": p}, f"Start your answer with '{p}'."
    if t == "must_end_with":
        e = pick(rng, ENDINGS)
        return {"type": t, "text": e}, pick(rng, [f"End with the exact phrase '{e}'",
                                                  f"Your last words must be \"{e}\""])  # fmt: skip
    return {"type": "json_format"}, pick(rng, ["Reply with valid JSON only.",
                                               "Output nothing but a JSON object."])  # fmt: skip


# Pairs of constraints that can both hold (the layouts and the cases do not clash).
SINGLE = ["max_words", "min_words", "exact_bullets", "n_paragraphs", "forbidden_word",
          "include_keyword", "all_caps", "lowercase", "starts_with", "must_end_with",
          "json_format"]  # fmt: skip
DOUBLE = [("max_words", "forbidden_word"), ("exact_bullets", "include_keyword"),
          ("lowercase", "must_end_with"), ("n_paragraphs", "starts_with"),
          ("all_caps", "max_words"), ("json_format", "forbidden_word"),
          ("min_words", "include_keyword"), ("exact_bullets", "all_caps")]  # fmt: skip

TASKS = {
    "describe": ["Write a short description of {t}.", "Describe {t} in a few sentences.",
                 "Give a brief, vivid description of {t}."],
    "tips": ["List some tips for enjoying {t}.", "What should a beginner know about {t}?",
             "Share practical advice about {t}."],
    "explain": ["Explain to a ten-year-old why people like {t}.",
                "Write a short explainer about {t} for a school newsletter."],
    "blurb": ["Write a tagline and blurb for a magazine issue about {t}.",
              "Draft the back-cover blurb of a book about {t}."],
    "notes": ["Write notes for a talk on {t}.", "Jot down talking points about {t}."],
    "email": ["Write a short email inviting a friend to an event about {t}.",
              "Draft a note to a colleague recommending {t}."],
}  # fmt: skip
# Families also differ in the constraints they draw and in sentence length/order.
KINDS = {
    "describe": ["max_words", "forbidden_word", "all_caps", "lowercase", "min_words"],
    "tips": ["exact_bullets", "include_keyword", "forbidden_word", "max_words"],
    "explain": ["n_paragraphs", "min_words", "starts_with", "lowercase"],
    "blurb": ["all_caps", "must_end_with", "starts_with", "max_words"],
    "notes": ["json_format", "exact_bullets", "include_keyword"],
    "email": ["starts_with", "must_end_with", "n_paragraphs", "forbidden_word"],
}  # fmt: skip


def family(name: str) -> Family:
    def make(rng: random.Random) -> Case:
        topic = pick(rng, TOPICS)
        mine = KINDS[name]
        doubles = [d for d in DOUBLE if d[0] in mine or d[1] in mine]
        types = list(pick(rng, doubles)) if rng.random() < 0.35 else [pick(rng, mine)]
        cons = [constraint(rng, t) for t in types]
        prompt = f"{pick(rng, TASKS[name]).format(t=topic)} {' '.join(c[1] for c in cons)}"
        pool = [s.format(t=topic, T=topic[0].upper() + topic[1:]) for s in SENTENCES]
        rng.shuffle(pool)
        base = Draft(tuple(pool[: rng.randint(2, 4)]), topic=topic)
        good_d = base
        for c, _ in cons:
            good_d = satisfy(c, good_d, pool)
        check = {"kind": "constraints", "constraints": [c for c, _ in cons]}
        bad = []
        for c, _ in cons:
            d = violate(rng, c, good_d, pool)
            bad.append(Resp(render(d), name))
        # A variant that follows the task but ignores the constraints altogether.
        bad.append(Resp(render(base), "plain"))
        good = [Resp(render(good_d), name)]
        # Breaking one constraint may leave the draft valid (the plain draft has no forbidden
        # word): only drafts the verifier rejects are wrong answers.
        bad = [b for b in bad if not verify(check, b.text).correct]
        return Case(prompt, check, good, bad)

    return make


def elaborate(rng: random.Random, prompt: str, text: str) -> str:
    return elaborate_generic(rng, prompt, text)


CATEGORY = Category("instruction", {n: family(n) for n in TASKS}, heldout="email",
                    elaborate=elaborate)  # fmt: skip
