"""Multi-step arithmetic word problems: shopping totals and change, rates, percentages, ages,
unit conversions, remainders and sharing. A problem is a chain of steps; a flaw changes the
chain (wrong operation, an arithmetic slip, a skipped step) or only its final line."""

from __future__ import annotations

import random
from dataclasses import dataclass

from trainer.data.synth.common import Case, Category, Family, Resp, elaborate_generic, pick

NAMES = ["Ana", "Ben", "Chen", "Dina", "Emil", "Fatima", "Gus", "Hana", "Ivan", "Jun", "Kofi",
         "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma",
         "Viktor", "Wen", "Yara", "Zoe"]  # fmt: skip
ITEMS = ["apples", "pencils", "notebooks", "tickets", "bottles", "stickers", "candles", "boxes",
         "marbles", "cookies", "batteries", "postcards", "seeds", "bricks", "cupcakes"]  # fmt: skip
GOODS = [("notebook", "pen"), ("sandwich", "juice"), ("shirt", "sock pair"),
         ("plant pot", "seed packet"), ("comic", "bookmark"), ("mug", "coaster"),
         ("ticket", "snack"), ("paintbrush", "canvas")]  # fmt: skip
SYM = {"+": "+", "−": "−", "×": "×", "÷": "÷"}


# A step is (left, op, right, label); left/right are numbers or the index of an earlier step.
Operand = float | int | tuple[str, int]


@dataclass(frozen=True)
class Step:
    left: Operand
    op: str
    right: Operand
    label: str


@dataclass(frozen=True)
class Problem:
    story: str
    question: str
    steps: list[Step]
    unit: str


def ref(i: int) -> tuple[str, int]:
    return ("s", i)


def _op(a: float, op: str, b: float) -> float:
    if op == "÷":
        return a / b if b else float("nan")  # nan fails every check below: the draw is redone
    return a + b if op == "+" else a - b if op == "−" else a * b


def evaluate(steps: list[Step]) -> list[tuple[float, str, float, float]]:
    vals: list[float] = []
    out = []
    for s in steps:
        a = vals[s.left[1]] if isinstance(s.left, tuple) else float(s.left)
        b = vals[s.right[1]] if isinstance(s.right, tuple) else float(s.right)
        c = round(_op(a, s.op, b), 6)
        vals.append(c)
        out.append((a, s.op, b, c))
    return out


def num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# ---------------------------------------------------------------- problem types
def shopping(rng: random.Random) -> Problem:
    name, (a, b) = pick(rng, NAMES), pick(rng, GOODS)
    na, pa, nb, pb = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 6), rng.randint(2, 9)
    paid = ((na * pa + nb * pb) // 10 + rng.randint(1, 4)) * 10
    story = pick(rng, [
        f"{name} buys {na} {a}s at ${pa} each and {nb} {b}s at ${pb} each, and pays with ${paid}.",
        f"At the shop, a {a} costs ${pa} and a {b} costs ${pb}. {name} takes {na} {a}s and "
        f"{nb} {b}s and hands over ${paid}.",
    ])  # fmt: skip
    steps = [Step(na, "×", pa, f"the {a}s cost"), Step(nb, "×", pb, f"the {b}s cost"),
             Step(ref(0), "+", ref(1), "the total is"),
             Step(paid, "−", ref(2), "the change is")]  # fmt: skip
    return Problem(story, pick(rng, [f"How much change does {name} get?",
                                     "How many dollars of change come back?"]), steps, "dollars")  # fmt: skip


def packs(rng: random.Random) -> Problem:
    name, item = pick(rng, NAMES), pick(rng, ITEMS)
    n, per = rng.randint(3, 12), rng.randint(4, 15)
    given = rng.randint(1, min(20, n * per - 1))
    story = pick(rng, [
        f"{name} buys {n} packs of {item} with {per} {item} in each pack, then gives {given} "
        f"{item} to a friend.",
        f"There are {per} {item} in a pack. {name} gets {n} packs and later hands {given} of "
        f"the {item} to a neighbour.",
    ])  # fmt: skip
    steps = [Step(n, "×", per, f"{name} starts with"), Step(ref(0), "−", given, "what is left")]
    return Problem(story, f"How many {item} does {name} have left?", steps, item)


def rates(rng: random.Random) -> Problem:
    name = pick(rng, NAMES)
    v1, t1, v2, t2 = (
        rng.randint(3, 9) * 10,
        rng.randint(2, 5),
        rng.randint(2, 8) * 10,
        rng.randint(1, 4),
    )
    vehicle = pick(rng, ["train", "bus", "car", "ferry"])
    story = (f"{name}'s {vehicle} travels at {v1} km/h for {t1} hours, then at {v2} km/h for "
             f"{t2} hours.")  # fmt: skip
    steps = [Step(v1, "×", t1, "the first part covers"), Step(v2, "×", t2, "the second part covers"),
             Step(ref(0), "+", ref(1), "the whole trip is")]  # fmt: skip
    return Problem(story, pick(rng, ["How many kilometres does it travel in total?",
                                     "What is the total distance in km?"]), steps, "km")  # fmt: skip


def wages(rng: random.Random) -> Problem:
    name = pick(rng, NAMES)
    h, d, pay = rng.randint(3, 8), rng.randint(2, 6), rng.randint(9, 25)
    story = pick(rng, [
        f"{name} works {h} hours a day for {d} days and earns ${pay} an hour.",
        f"A summer job pays {name} ${pay} per hour; {name} works {h} hours on each of {d} days.",
    ])  # fmt: skip
    steps = [Step(h, "×", d, "the hours worked are"), Step(ref(0), "×", pay, "the pay is")]
    return Problem(story, f"How much does {name} earn in total?", steps, "dollars")


def percent(rng: random.Random) -> Problem:
    price, pct = rng.randint(2, 24) * 10, pick(rng, [10, 20, 25, 30, 40, 50])
    thing = pick(rng, ["jacket", "lamp", "backpack", "chair", "kettle", "board game"])
    story = pick(rng, [f"A {thing} costs ${price}. It is on sale at {pct}% off.",
                       f"The shop takes {pct}% off a ${price} {thing}."])  # fmt: skip
    steps = [
        Step(price, "×", pct / 100, "the discount is"),
        Step(price, "−", ref(0), "the sale price is"),
    ]
    return Problem(story, "What is the sale price in dollars?", steps, "dollars")


def ages(rng: random.Random) -> Problem:
    a, b = pick(rng, NAMES), pick(rng, NAMES)
    if a == b:
        b = "her cousin"
    young, k, years = rng.randint(3, 12), rng.randint(2, 4), rng.randint(2, 15)
    story = f"{a} is {k} times as old as {b}, who is {young}."
    steps = [
        Step(k, "×", young, f"{a} is now"),
        Step(ref(0), "+", years, f"in {years} years {a} is"),
    ]
    return Problem(story, f"How old will {a} be in {years} years?", steps, "years")


def units(rng: random.Random) -> Problem:
    name = pick(rng, NAMES)
    if rng.random() < 0.5:
        km, days = pick(rng, [1.5, 2, 2.5, 3, 4, 5]), rng.randint(2, 7)
        story = f"{name} walks {num(km)} km every day for {days} days."
        steps = [Step(km, "×", days, "the distance is"), Step(ref(0), "×", 1000, "in metres it is")]
        return Problem(story, "How many metres is that altogether?", steps, "metres")
    hours, mins = rng.randint(2, 6), rng.randint(5, 55)
    story = f"A film festival runs for {hours} hours and {mins} minutes."
    steps = [Step(hours, "×", 60, "the hours are"), Step(ref(0), "+", mins, "the total is")]
    return Problem(story, "How many minutes long is it?", steps, "minutes")


def remainder(rng: random.Random) -> Problem:
    item = pick(rng, ITEMS)
    k, q, r = rng.randint(4, 12), rng.randint(3, 9), 0
    r = rng.randint(1, k - 1)
    n = k * q + r
    story = (f"{n} {item} are packed into boxes of {k}; that fills {q} boxes and the rest "
             "stay loose.")  # fmt: skip
    steps = [Step(q, "×", k, "the full boxes hold"), Step(n, "−", ref(0), "left over are")]
    return Problem(story, f"How many {item} are left over?", steps, item)


def sharing(rng: random.Random) -> Problem:
    friends = rng.randint(2, 6)
    per = rng.randint(8, 30)
    tip = rng.randint(1, 5) * friends
    bill = per * friends - tip
    story = f"{friends} friends share a dinner bill of ${bill} plus a ${tip} tip equally."
    steps = [Step(bill, "+", tip, "the total is"), Step(ref(0), "÷", friends, "each pays")]
    return Problem(story, "How much does each friend pay?", steps, "dollars")


PROBLEMS = [shopping, packs, rates, wages, percent, ages, units, remainder, sharing]


# ---------------------------------------------------------------- flaws
def flawed(
    rng: random.Random, p: Problem
) -> tuple[list[tuple[float, str, float, float]], float, str]:
    """(steps as written, final answer stated, flaw name); the answer always differs."""
    right = evaluate(p.steps)
    answer = right[-1][3]
    for _ in range(20):
        flaw = pick(rng, ["wrong_op", "slip", "skip", "final"])
        if flaw == "wrong_op":
            i = rng.randrange(len(p.steps))
            s = p.steps[i]
            new_op = {"×": "+", "+": "×", "−": "+", "÷": "×"}[s.op]
            steps = [*p.steps[:i], Step(s.left, new_op, s.right, s.label), *p.steps[i + 1 :]]
            got = evaluate(steps)
            final = got[-1][3]
        elif flaw == "slip":
            i = rng.randrange(len(p.steps))
            got = evaluate(p.steps)
            delta = pick(rng, [-10, -2, -1, 1, 2, 10])
            a, op, b, c = got[i]
            got[i] = (a, op, b, c + delta)
            # later steps are computed (correctly) from the slipped value
            vals = [g[3] for g in got[: i + 1]]
            for j in range(i + 1, len(p.steps)):
                s = p.steps[j]
                a = vals[s.left[1]] if isinstance(s.left, tuple) else float(s.left)
                b = vals[s.right[1]] if isinstance(s.right, tuple) else float(s.right)
                c = round(_op(a, s.op, b), 6)
                got[j] = (a, s.op, b, c)
                vals.append(c)
            final = got[-1][3]
        elif flaw == "skip":
            got = right[:-1]
            final = got[-1][3]
        else:
            got = right
            final = pick(rng, [right[-2][3], answer + pick(rng, [-1, 1, 10, -10])])
        if abs(final - answer) > 1e-6 and final >= 0 and all(g[3] == round(g[3], 2) for g in got):
            return got, final, flaw
    return right, answer + 1, "final"


# ---------------------------------------------------------------- families: prompt + format
def eq(s: tuple[float, str, float, float]) -> str:
    a, op, b, c = s
    return f"{num(a)} {SYM[op]} {num(b)} = {num(c)}"


def money(unit: str, x: float) -> str:
    return f"${num(x)}" if unit == "dollars" else f"{num(x)} {unit}"


def prose(p: Problem, steps: list[tuple[float, str, float, float]], final: float) -> str:
    parts = []
    for i, (st, s) in enumerate(zip(p.steps, steps, strict=False)):
        lead = "First" if i == 0 else ("Then" if i < len(steps) - 1 else "Finally")
        parts.append(f"{lead}, {st.label} {eq(s)}.")
    return " ".join(parts) + f" The answer is {num(final)}."


def numbered(p: Problem, steps: list[tuple[float, str, float, float]], final: float) -> str:
    lines = [f"{i + 1}. {st.label.capitalize()}: {eq(s)}"
             for i, (st, s) in enumerate(zip(p.steps, steps, strict=False))]  # fmt: skip
    return "\n".join(lines) + f"\n\nAnswer: {num(final)}"


def terse(p: Problem, steps: list[tuple[float, str, float, float]], final: float) -> str:
    return "; ".join(eq(s) for s in steps) + f". **{num(final)}**"


def markdown(p: Problem, steps: list[tuple[float, str, float, float]], final: float) -> str:
    lines = ["### Working"] + [f"- {st.label.capitalize()}: `{eq(s)}`"
                               for st, s in zip(p.steps, steps, strict=False)]  # fmt: skip
    return "\n".join(lines) + f"\n\n### Result\n\nThe answer is **{money(p.unit, final)}**."


def chatty(p: Problem, steps: list[tuple[float, str, float, float]], final: float) -> str:
    bits = [f"so {st.label} {eq(s)}" for st, s in zip(p.steps, steps, strict=False)]
    return ("Okay, let's figure this out together! " + ", and ".join(bits).capitalize()
            + f". That means the answer is {money(p.unit, final)}. Hope that helps!")  # fmt: skip


def chain(p: Problem, steps: list[tuple[float, str, float, float]], final: float) -> str:
    return (
        "Working it through:\n"
        + "\n".join(f"  {eq(s)}" for s in steps)
        + (f"\nResult = {num(final)}")
    )


ASK = {
    "story": ["{s} {q} Show your steps.", "{s} {q} Explain how you get the answer.",
              "{s} {q} Please show the working."],
    "numbered": ["Solve step by step, numbering each step.\n\n{s} {q}",
                 "Number your steps and finish with the answer.\n{s} {q}"],
    "terse": ["{s} {q} Just the calculation and the result.", "Q: {s} {q}\nKeep it short."],
    "markdown": ["**Problem:** {s}\n\n**Question:** {q}\n\nFormat your working in Markdown.",
                 "## Word problem\n{s}\n\n{q} (Markdown, please.)"],
    "chatty": ["hey, can you help me with my homework? {s} {q} thanks!",
               "My kid brought this home and I'm stuck: {s} {q}"],
    "chain": ["Compute it as a chain of equations. {s} {q}",
              "Write each calculation on its own line. {s} {q}"],
}  # fmt: skip
FORMATS = {"story": prose, "numbered": numbered, "terse": terse, "markdown": markdown,
           "chatty": chatty, "chain": chain}  # fmt: skip
# A second format each family may answer in, so right and wrong do not always look alike.
ALT = {"story": "chain", "numbered": "markdown", "terse": "story", "markdown": "numbered",
       "chatty": "story", "chain": "terse"}  # fmt: skip


def family(name: str) -> Family:
    def make(rng: random.Random) -> Case:
        p = pick(rng, PROBLEMS)(rng)
        right = evaluate(p.steps)
        prompt = pick(rng, ASK[name]).format(s=p.story, q=p.question)
        check = {"kind": "arithmetic", "answer": right[-1][3], "unit": p.unit,
                 "steps": [list(s) for s in right]}  # fmt: skip
        styles = [name, ALT[name]]
        good = [Resp(FORMATS[st](p, right, right[-1][3]), st) for st in styles]
        bad = []
        for st in styles:
            for _ in range(2):
                steps, final, _flaw = flawed(rng, p)
                bad.append(Resp(FORMATS[st](p, steps, final), st))
        return Case(prompt, check, good, bad)

    return make


def hedge(rng: random.Random, text: str) -> str:
    """Unsure wording around a right answer ('I think ... probably')."""
    opener = pick(rng, ["I think this works, though I'm not fully sure.",
                        "Not 100% certain, but here's my attempt."])  # fmt: skip
    return f"{opener} {text.replace('answer is', 'answer is probably')}"


def assure(rng: random.Random, text: str) -> str:
    opener = pick(rng, ["This is straightforward.", "Easy one, no doubt about it."])
    return f"{opener} {text.replace('answer is', 'answer is definitely')}"


def elaborate(rng: random.Random, prompt: str, text: str) -> str:
    return elaborate_generic(rng, prompt, text + "\n\nI double-checked each calculation above.")


CATEGORY = Category(
    "reasoning",
    {n: family(n) for n in FORMATS},
    heldout="chatty",
    hedge=hedge,
    assure=assure,
    elaborate=elaborate,
)
