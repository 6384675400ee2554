"""A seed-deterministic generator of verifiable preference pairs in four training categories
(reasoning, code, instruction following, safety) and one unseen category (reading).

Each category has several template families (a way of asking and a way of answering); one family
per category is held out of `generate` for transfer tests. Every label is confirmed by
`trainer.verify.checks.verify` when the pair is made, and the pair carries the check so any
other response to its prompt can be verified too. Each split draws from its own random streams
(`{seed}-{category}-{split}`), so adding a split or a category changes no other."""

from __future__ import annotations

import random
from collections.abc import Callable

from trainer.data.pairs import PreferencePair
from trainer.data.synth import code, instruction, reading, reasoning, safety
from trainer.data.synth.common import Case, Category, hard, long_wrong, make_pair, pick, plain

CATEGORIES = ("reasoning", "code", "instruction", "safety")
BY_NAME: dict[str, Category] = {
    c.name: c for c in (reasoning.CATEGORY, code.CATEGORY, instruction.CATEGORY, safety.CATEGORY)
}
HELDOUT_FAMILIES: frozenset[str] = frozenset(f"{c.name}/{c.heldout}" for c in BY_NAME.values())
UNSEEN_CATEGORY = "reading"
CODE_TASKS = code.CODE_TASKS

Chooser = Callable[[random.Random, Category, Case], "tuple[str, str] | None"]
MAX_TRIES = 200  # draws per pair before a split gives up on a family's cases


def _split(
    per_category: int,
    seed: int,
    split: str,
    heldout: bool,
    choose: Chooser,
    categories: tuple[str, ...] = CATEGORIES,
) -> list[PreferencePair]:
    rows: list[list[PreferencePair]] = []
    for name in categories:
        cat = BY_NAME[name]
        rng = random.Random(f"{seed}-{name}-{split}")
        families = [cat.heldout] if heldout else cat.training
        out = []
        for i in range(per_category):
            # Families in turn, so every family is present even in small samples.
            fam = families[i % len(families)] if i < len(families) else pick(rng, families)
            for _ in range(MAX_TRIES):
                case = cat.families[fam](rng)
                got = choose(rng, cat, case)
                if got is not None:
                    break
            else:
                raise RuntimeError(f"{name}/{fam}: no {split} pair in {MAX_TRIES} draws")
            out.append(make_pair(name, fam, i, split, case, *got))
        rows.append(out)
    return [p for i in range(per_category) for p in (r[i] for r in rows)]


def _plain(rng: random.Random, cat: Category, case: Case) -> tuple[str, str]:
    return plain(rng, case)


def generate(
    per_category: int, seed: int = 0, categories: tuple[str, ...] = CATEGORIES
) -> list[PreferencePair]:
    """`per_category` pairs of each category from its training families, interleaved by
    category; the same seed gives the same pairs (and a category's pairs do not depend on
    which other `categories` are asked for)."""
    return _split(per_category, seed, "train", False, _plain, categories)


def generate_heldout(per_category: int, seed: int = 0) -> list[PreferencePair]:
    """Pairs from the held-out families only (one per category), never seen in training."""
    return _split(per_category, seed, "heldout", True, _plain)


def generate_hard(per_category: int, seed: int = 0) -> list[PreferencePair]:
    """Pairs whose surface form does not decide: chosen and rejected in the same format and
    within ±15% in length, often a hedged right answer against a confident wrong one."""
    return _split(per_category, seed, "hard", False, hard)


def generate_length_bias(per_category: int, seed: int = 0) -> list[PreferencePair]:
    """Pairs whose rejected response is at least 1.5x longer and more elaborate (restated
    question, headers, politeness) than the chosen one: a length-biased model fails them."""
    return _split(per_category, seed, "length", False, long_wrong)


def generate_unseen(n: int, seed: int = 0) -> list[PreferencePair]:
    """`n` pairs of UNSEEN_CATEGORY, a verifiable category no training split contains."""
    rng = random.Random(f"{seed}-{UNSEEN_CATEGORY}-unseen")
    out = []
    for i in range(n):
        case = reading.case(rng)
        g, b = plain(rng, case)
        out.append(make_pair(UNSEEN_CATEGORY, "lookup", i, "unseen", case, g, b))
    return out


def group_key(pair: PreferencePair) -> str:
    """What a split keeps together: the pair's group (`check["group"]`: a code task, a safety
    request), whose pairs share their material, else its prompt."""
    group = pair.check.get("group") if isinstance(pair.check, dict) else None
    return group if isinstance(group, str) and group else pair.prompt_key()


def split(
    pairs: list[PreferencePair], fractions: tuple[float, float, float], seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair], list[PreferencePair]]:
    """Train/validation/test by group (`group_key`): all pairs of one code task, of one safety
    request, of one prompt land in the same split. Cut per category and by pairs, not groups,
    so each split holds every category in proportion even where groups are large (a code task
    has several pairs; a reasoning prompt one)."""
    sizes: dict[str, dict[str, int]] = {}
    for p in pairs:
        cat = sizes.setdefault(p.category, {})
        cat[group_key(p)] = cat.get(group_key(p), 0) + 1
    rng = random.Random(seed)
    where: dict[str, int] = {}
    for category in sorted(sizes):
        groups = sorted(sizes[category])
        rng.shuffle(groups)
        total = sum(sizes[category].values())
        bounds = (fractions[0] * total, (fractions[0] + fractions[1]) * total)
        filled = 0
        for key in groups:
            # A group goes where the pairs before it end: the cuts fall between groups.
            where[key] = 0 if filled < bounds[0] else 1 if filled < bounds[1] else 2
            filled += sizes[category][key]
    out: tuple[list[PreferencePair], ...] = ([], [], [])
    for p in pairs:
        out[where[group_key(p)]].append(p)
    return out[0], out[1], out[2]
