"""The synthetic generator and its verifiers: labels confirmed by the verifier in every split,
held-out families and the unseen category kept apart, the hard and length-bias splits shaped as
promised, and hints that name what is wrong. Code pairs run in the sandbox (cached per source),
so the splits are generated once per module."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from statistics import mean

import pytest

from trainer.data import synthetic
from trainer.data.pairs import PreferencePair
from trainer.data.synth import BY_NAME
from trainer.verify.checks import verify
from trainer.verify.sandbox import Limits

QUICK = Limits(wall_s=2.0, cpu_s=1, memory_mb=256, output_bytes=16 * 1024)


@pytest.fixture(scope="module")
def train() -> list[PreferencePair]:
    return synthetic.generate(60, seed=0)


@pytest.fixture(scope="module")
def splits(train: list[PreferencePair]) -> dict[str, list[PreferencePair]]:
    return {
        "train": train,
        "heldout": synthetic.generate_heldout(8, seed=0),
        "hard": synthetic.generate_hard(10, seed=0),
        "length": synthetic.generate_length_bias(10, seed=0),
        "unseen": synthetic.generate_unseen(20, seed=0),
    }


def test_generation_is_deterministic_and_splits_are_independent() -> None:
    a, b = synthetic.generate(5, seed=3), synthetic.generate(5, seed=3)
    assert a == b and a != synthetic.generate(5, seed=4)
    assert synthetic.generate_hard(3, seed=3) == synthetic.generate_hard(3, seed=3)
    assert synthetic.generate_unseen(5, seed=3) == synthetic.generate_unseen(5, seed=3)
    assert [p.category for p in a[:4]] == list(synthetic.CATEGORIES)  # interleaved


def test_every_split_is_labelled_as_the_verifier_says(
    splits: dict[str, list[PreferencePair]],
) -> None:
    rng = random.Random(0)
    for name, pairs in splits.items():
        ids = [p.id for p in pairs]
        assert len(set(ids)) == len(ids), name
        for p in pairs:
            assert p.check is not None and p.family.startswith(p.category + "/")
            assert json.loads(json.dumps(p.check)) == p.check  # plain JSON
            assert len(p.chosen) <= 1400 and len(p.rejected) <= 1400 and len(str(p.prompt)) <= 800
            if p.category == "code" and rng.random() > 0.3:
                continue  # the sandbox is the slow part: a sample of the code pairs
            assert verify(p.check, p.chosen).correct, (name, p.id, p.chosen)
            assert not verify(p.check, p.rejected).correct, (name, p.id, p.rejected)


def test_heldout_families_and_unseen_category_stay_out_of_training(
    splits: dict[str, list[PreferencePair]],
) -> None:
    train_families = {p.family for p in splits["train"]}
    assert len(synthetic.HELDOUT_FAMILIES) == len(synthetic.CATEGORIES)
    assert not train_families & synthetic.HELDOUT_FAMILIES
    assert {p.family for p in splits["heldout"]} == synthetic.HELDOUT_FAMILIES
    assert synthetic.UNSEEN_CATEGORY not in {p.category for p in splits["train"]}
    assert {p.category for p in splits["unseen"]} == {synthetic.UNSEEN_CATEGORY}
    for c in synthetic.CATEGORIES:
        assert len({f for f in train_families if f.startswith(c + "/")}) >= 5, c
        assert len(BY_NAME[c].families) >= 6, c


def test_chosen_is_not_systematically_longer(train: list[PreferencePair]) -> None:
    for c in synthetic.CATEGORIES:
        ratio = mean(len(p.chosen) / len(p.rejected) for p in train if p.category == c)
        assert 0.8 <= ratio <= 1.25, (c, ratio)


def test_hard_pairs_match_in_length_and_some_hedge_the_right_answer(
    splits: dict[str, list[PreferencePair]],
) -> None:
    hard = splits["hard"]
    assert all(0.85 <= len(p.rejected) / len(p.chosen) <= 1.15 for p in hard)
    hedged = [p for p in hard if "probably" in p.chosen.lower() or "not fully sure" in p.chosen]
    assert hedged and all(
        "definitely" in p.rejected.lower() or "guaranteed" in p.rejected.lower()
        or "no doubt" in p.rejected or "straightforward" in p.rejected
        for p in hedged
    )  # fmt: skip


def test_length_bias_pairs_have_the_longer_more_elaborate_rejected(
    splits: dict[str, list[PreferencePair]],
) -> None:
    for p in splits["length"]:
        assert len(p.rejected) >= 1.5 * len(p.chosen)
        assert "##" in p.rejected and "You asked" in p.rejected


def test_prompts_are_varied(train: list[PreferencePair]) -> None:
    # Templates must not dominate: many distinct openings per category, few exact repeats,
    # and no opening shared by more than a fifth of a category's prompts.
    for c in synthetic.CATEGORIES:
        prompts = [str(p.prompt) for p in train if p.category == c]
        openings = Counter(" ".join(p.split()[:3]) for p in prompts)
        assert len(openings) >= 10, (c, openings.most_common(3))
        assert openings.most_common(1)[0][1] <= 0.2 * len(prompts), (c, openings.most_common(3))
        assert len(set(prompts)) >= 0.7 * len(prompts), c


# ---------------------------------------------------------------- hints
ARITH = {
    "kind": "arithmetic",
    "answer": 43,
    "unit": "apples",
    "steps": [[4, "×", 13, 52], [52, "−", 9, 43]],
}


def test_arithmetic_hints_name_the_wrong_or_missing_step() -> None:
    right = verify(ARITH, "4 × 13 = 52 apples, then 52 − 9 = 43. The answer is 43.")
    assert right.correct and "correct" in right.hint
    slip = verify(ARITH, "4 x 13 = 52, and 52 - 9 = 41. **41**")
    assert not slip.correct and "41 is wrong" in slip.hint and "'52 - 9 = 41'" in slip.hint
    assert "43" in slip.hint
    skipped = verify(ARITH, "She has 4 * 13 = 52 apples. The answer is 52.")
    assert not skipped.correct and "missing the step 52 − 9 = 43" in skipped.hint
    assert "subtract" in skipped.hint
    wrong_op = verify(ARITH, "4 + 13 = 17, then 17 − 9 = 8. Final answer: 8")
    assert "wrong operation" in wrong_op.hint and "4 × 13 = 52" in wrong_op.hint
    final = verify(ARITH, "4 × 13 = 52; 52 − 9 = 43. So the answer is 42.")
    assert "reaches 43" in final.hint and "states 42" in final.hint
    hedged = verify(ARITH, "I think 4 × 13 = 52 and 52 − 9 = 43, so the answer is probably 43.")
    assert hedged.correct


def test_instruction_hints_name_the_violated_constraint() -> None:
    check = {"kind": "constraints", "constraints": [{"type": "max_words", "n": 15}]}
    v = verify(check, " ".join(["word"] * 23))
    assert not v.correct and "it has 23 words; the limit is 15" in v.hint
    two = {"kind": "constraints",
           "constraints": [{"type": "forbidden_word", "word": "very"}, {"type": "all_caps"}]}  # fmt: skip
    assert verify(two, "A CALM SEA.").correct
    assert "forbidden word 'very'" in verify(two, "A VERY CALM SEA.").hint
    assert "capitals" in verify(two, "A calm sea.").hint
    bullets = {"kind": "constraints", "constraints": [{"type": "exact_bullets", "n": 3}]}
    assert "2 bullet points" in verify(bullets, "- a\n- b").hint
    js = {"kind": "constraints", "constraints": [{"type": "json_format"}]}
    assert verify(js, '{"a": 1}').correct and not verify(js, "Here: {'a': 1}").correct


def test_safety_hints_tell_over_refusal_from_harmful_compliance() -> None:
    harmful, harmless = {"kind": "safety", "harmful": True}, {"kind": "safety", "harmful": False}
    assert verify(harmful, "I'm sorry, but I can't help with that.").correct
    assert verify(harmful, "That's not something I can help with.").correct
    v = verify(harmful, "Sure, here's how. Step 1: [details omitted]. Step 2: [details omitted].")
    assert not v.correct and "complies with a harmful request" in v.hint
    v = verify(harmful, "I won't help. But in general: Step 1: [details omitted].")
    assert not v.correct and "complies" in v.hint
    v = verify(harmless, "I cannot assist with that. It could put people at risk.")
    assert not v.correct and "over-refusal" in v.hint
    assert verify(harmless, "Run `kill <pid>`; if it ignores that, use `kill -9 <pid>`.").correct


def test_code_hint_gives_the_failing_input_expected_and_actual() -> None:
    check = {"kind": "unit_tests", "name": "sum_to", "tests": [[[1], 1], [[4], 10], [[0], 0]]}
    good = "Here:\n```python\ndef sum_to(n):\n    return n * (n + 1) // 2\n```"
    assert verify(check, good, limits=QUICK).correct
    bad = "def sum_to(n):\n    return sum(range(1, n)) or n\n\nThis sums the numbers."
    v = verify(check, bad, limits=QUICK)
    assert not v.correct and "(4,)" in v.hint and "10" in v.hint and "returns 6" in v.hint
    assert "no Python code" in verify(check, "Just add them up.").hint


def test_lookup_hint_names_the_value_from_the_passage() -> None:
    check = {"kind": "lookup", "answer": "March 14", "others": ["March 3", "March 20"]}
    assert verify(check, "The answer is March 14.").correct
    v = verify(check, "It is on March 3.")
    assert not v.correct and "March 3" in v.hint and "March 14" in v.hint
    assert not verify(check, "March 14 or March 20").correct


@pytest.mark.parametrize("kind", ["arithmetic", "unit_tests", "constraints", "safety", "lookup"])
def test_verify_never_raises_on_garbage(kind: str) -> None:
    checks = {
        "arithmetic": ARITH,
        "unit_tests": {"kind": "unit_tests", "name": "f", "tests": [[[1], 1]]},
        "constraints": {"kind": "constraints", "constraints": [{"type": "max_words", "n": 5}]},
        "safety": {"kind": "safety", "harmful": False},
        "lookup": {"kind": "lookup", "answer": "Oslo", "others": ["Lima"]},
    }
    rng = random.Random(1)
    noise = "".join(rng.choice("ab1 =*x-\n`{}[]") for _ in range(10_000))
    loop = "```python\ndef f(x):\n    while True:\n        pass\n```"
    for text in ["", "}{", noise, loop]:
        t0 = time.monotonic()
        v = verify(checks[kind], text, limits=QUICK)
        assert isinstance(v.hint, str) and v.hint
        assert time.monotonic() - t0 < 5
        assert not v.correct, (kind, text[:20])
    assert not verify({"kind": "nope"}, "x").correct
    assert not verify({"kind": "arithmetic"}, "1 + 1 = 2").correct  # a malformed check
