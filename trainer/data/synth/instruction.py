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
from trainer.verify.checks import verify
from trainer.verify.constraints import words

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
# One pool for the forbidden and the required word, inserted with one set of phrasings: a word
# and a phrasing appear in right answers (a required word) as often as in wrong ones (a
# forbidden word). No sentence, topic, opening or ending has any of them.
WORDS = ["very", "really", "thing", "nice", "good", "great", "simple", "bright", "gentle",
         "local", "steady", "open"]  # fmt: skip
INSERTS = [(", in a ", " way."), (", which is ", " worth knowing."), ("; it feels ", ".")]
JSON_PREAMBLE = "Here is the JSON:"
OPENINGS = ["In short", "Here it is", "To begin", "Dear reader"]
ENDINGS = ["That is all.", "Thank you.", "The end.", "Enjoy!"]


@dataclass(frozen=True)
class Draft:
    sentences: tuple[str, ...]
    layout: str = "prose"  # prose | bullets | paragraphs | json[_bad][_pre] (see render)
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
    elif d.layout.startswith("json"):
        # json | json_pre (a line of introduction first) | json_bad (a trailing comma, not
        # JSON) | json_bad_pre: the same characters either way, only their order differs.
        body = json.dumps({"topic": d.topic, "points": s})
        if "bad" in d.layout:
            body = body[: body.rindex("]")] + ",]}"
        if d.layout.endswith("pre"):
            body = f"{JSON_PREAMBLE}\n{body}"
    else:
        body = " ".join(s)
    text = (f"{d.prefix}: " if d.prefix else "") + body + (f"\n{d.suffix}" if d.suffix else "")
    return text.upper() if d.case == "upper" else text.lower() if d.case == "lower" else text


# Constraint = (JSON spec, prompt text, satisfy(draft), violate(draft)).
def _nwords(d: Draft) -> int:
    return len(words(render(d)))


def insert(rng: random.Random, d: Draft, word: str) -> Draft:
    """The draft with `word` worked into one of its sentences, in one of the shared phrasings."""
    s = list(d.sentences)
    i = rng.randrange(len(s))
    mid, end = pick(rng, INSERTS)
    s[i] = s[i].rstrip(".!") + f"{mid}{word}{end}"
    return replace(d, sentences=tuple(s))


def uninsert(d: Draft, word: str) -> Draft:
    out = d.sentences
    for mid, end in INSERTS:
        out = tuple(x.replace(f"{mid}{word}{end}", ".") for x in out)
    return replace(d, sentences=out)


def satisfy(rng: random.Random, c: dict[str, Any], d: Draft, pool: list[str]) -> Draft:
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
        return insert(rng, d, c["word"])
    if t == "all_caps":
        return replace(d, case="upper")
    if t == "lowercase":
        return replace(d, case="lower")
    if t == "starts_with":
        return replace(d, prefix=c["text"])
    if t == "must_end_with":
        return replace(d, suffix=c["text"])
    if t == "json_format":  # an introduction where the rule allows one
        return replace(d, layout="json" if c.get("only", True) else "json_pre")
    if t == "forbidden_word":
        return uninsert(d, c["word"])
    raise ValueError(t)


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
        return insert(rng, d, c["word"])
    if t == "include_keyword":
        return uninsert(d, c["word"])
    if t in ("all_caps", "lowercase"):  # the other case as often as normal case
        other = "lower" if t == "all_caps" else "upper"
        return replace(d, case=pick(rng, ["normal", other]))
    if t == "starts_with":
        return replace(d, prefix=pick(rng, [o for o in OPENINGS if o != c["text"]]))
    if t == "must_end_with":
        return replace(d, suffix=pick(rng, [e for e in ENDINGS if e != c["text"]]))
    if t == "json_format":  # strict: an introduction, or broken JSON; else broken JSON
        if c.get("only", True):
            return replace(d, layout=pick(rng, ["json_pre", "json_bad"]))
        return replace(d, layout=pick(rng, ["json_bad", "json_bad_pre"]))
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
        w = pick(rng, WORDS)
        return {"type": t, "word": w}, pick(rng, [f"Do not use the word '{w}'.",
                                                  f"Avoid the word \"{w}\" entirely."])  # fmt: skip
    if t == "include_keyword":
        w = pick(rng, WORDS)
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
    if rng.random() < 0.5:
        return {"type": "json_format"}, pick(rng, ["Reply with valid JSON only.",
                                                   "Output nothing but a JSON object."])  # fmt: skip
    return {"type": "json_format", "only": False}, pick(rng, [
        "Give the content as a JSON object; a short line introducing it is fine.",
        "Put it in a JSON object (you may say what it is first)."])  # fmt: skip


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


CASE_RULES = ("all_caps", "lowercase")
# How often a task without a case rule is answered in capitals or lowercase (right and wrong
# alike), and how often only its wrong answers are: a rule on case makes right answers
# capitals or lowercase more often than wrong ones, and this evens it out.
P_STYLED = 0.3
P_WRONG_STYLED = 0.12
P_DECOR = 0.3  # an opening, an ending or a pool word that no rule asks for, on both sides


def _decorate(rng: random.Random, types: set[str], words_used: set[str]) -> Any:
    """A decoration no constraint asks for (an opening, an ending, a pool word worked in),
    applied alike to the right draft and the wrong ones, so such text is on both sides."""
    prefix = pick(rng, OPENINGS) if rng.random() < P_DECOR else ""
    suffix = pick(rng, ENDINGS) if rng.random() < P_DECOR else ""
    word = pick(rng, [w for w in WORDS if w not in words_used]) if rng.random() < P_DECOR else ""
    seed = rng.random()

    def apply(d: Draft) -> Draft:
        if d.layout.startswith("json"):
            return d
        if prefix and "starts_with" not in types:
            d = replace(d, prefix=prefix)
        if suffix and "must_end_with" not in types:
            d = replace(d, suffix=suffix)
        if word:
            d = insert(random.Random(seed), d, word)
        return d

    return apply


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
        case_rule = any(t in CASE_RULES for t in types)
        style = pick(rng, ["upper", "lower"]) if rng.random() < P_STYLED else "normal"
        base = Draft(tuple(pool[: rng.randint(2, 4)]), topic=topic,
                     case="normal" if case_rule else style)  # fmt: skip
        check = {"kind": "constraints", "constraints": [c for c, _ in cons]}
        good_d = base
        for c, _ in cons:
            good_d = satisfy(rng, c, good_d, pool)
        decorate = _decorate(rng, set(types), {c["word"] for c, _ in cons if "word" in c})
        if verify(check, render(decorate(good_d))).correct:
            good_d, base = decorate(good_d), decorate(base)
        bad_d = [violate(rng, c, good_d, pool) for c, _ in cons]
        # A variant that follows the task but ignores the constraints altogether.
        bad_d.append(replace(base, case=good_d.case) if case_rule else base)
        if not case_rule and style == "normal" and rng.random() < P_WRONG_STYLED:
            # Wrong for another reason, and in capitals or lowercase (no rule on case here).
            recase = pick(rng, ["upper", "lower"])
            bad_d = [replace(d, case=recase) for d in bad_d]
        bad = [Resp(render(d), name) for d in bad_d[:-1]] + [Resp(render(bad_d[-1]), "plain")]
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
