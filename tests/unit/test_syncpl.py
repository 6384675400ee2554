"""SyncPL's trainer side on hand-made trajectories: the label rules (consistency, then ranking),
the training segments on the service's judgment prompts, /compare accuracy with the position
swap, and DPO over whole trajectories on a tiny random Llama."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from service.contract.formatting import PromptFormatter
from service.contract.judging import criteria_chat, rubric_chat, score_chat
from trainer.syncpl import (
    compare_accuracy,
    dpo_trajectories,
    filter_records,
    label_rules,
    rsft_examples,
    segments,
    trajectories_of,
    trajectory_json,
)

PAIR = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "category": "reasoning"}


def record(*trajectories: tuple[str, int, list[tuple[int, int]]]) -> dict[str, Any]:
    """Three sampled criteria lists of two criteria; trajectories (order, sample, scores)."""
    return {
        "pair": PAIR,
        "criteria": [["accuracy", "clarity"], ["correct sum", "brevity"], ["math", "tone"]],
        "rubrics": [["1 wrong, 5 right", "1 muddled, 5 clear"]] * 3,
        "trajectories": [
            {"order": o, "sample": s, "scores": [list(x) for x in sc]} for o, s, sc in trajectories
        ],
    }


# AB: A (chosen) shown first. Scores are in the pair's orientation (A's, B's).
MIXED = record(
    ("AB", 0, [(5, 2), (3, 3)]),  # A, gap 3
    ("AB", 1, [(4, 3), (4, 4)]),  # A, gap 1
    ("AB", 2, [(2, 4), (3, 3)]),  # B
    ("BA", 0, [(4, 2), (3, 3)]),  # A, gap 2
    ("BA", 1, [(5, 1), (2, 4)]),  # A: the largest gap (4 for A) decides, not the sum
    ("BA", 2, [(3, 3), (3, 3)]),  # tie
)


def test_the_consistency_rule_keeps_label_agreeing_trajectories_of_a_majority_pair() -> None:
    kept, rejected, verdict = label_rules(MIXED)
    assert verdict == "A" and kept == [0, 1, 3, 4] and rejected == [2, 5]
    # A pair whose verdict is not A keeps nothing, not even its A trajectory.
    flipped = record(("AB", 0, [(2, 5)]), ("BA", 0, [(1, 4)]), ("AB", 1, [(5, 1)]))
    flipped["criteria"] = [["accuracy"], ["clarity"]]
    flipped["rubrics"] = [["r"], ["r"]]
    assert label_rules(flipped)[:2] == ([], [])


def test_filter_keeps_the_largest_gap_and_reports_the_base_judges_accuracy() -> None:
    disagree = record(("AB", 0, [(5, 1), (3, 3)]), ("BA", 0, [(1, 5), (3, 3)]))
    kept, report = filter_records([MIXED, disagree, None])
    assert [r["kept"] for r in kept] == [0] and kept[0]["rejected"] == 2
    assert report == {
        "pairs": 3,
        "too_long": 1,
        "kept": 1,
        "with_rejected": 1,
        "base_judge_accuracy": (1.0 + 0.5) / 2,  # the orders disagree: a tie
    }


@pytest.fixture(scope="module")
def fmt(tiny_formatter: PromptFormatter) -> PromptFormatter:
    return tiny_formatter


def _split(fmt: PromptFormatter, seq: Any) -> tuple[list[int], str]:
    return seq.ids[: seq.target_from], fmt.tokenizer.decode(seq.ids[seq.target_from :])


def test_segments_are_the_judgment_prompts_with_ranked_criteria_and_shown_scores(
    fmt: PromptFormatter,
) -> None:
    messages = fmt.neutral_messages(PAIR["prompt"])
    ids = lambda chat: fmt.chat_ids(chat, add_generation_prompt=True)  # noqa: E731
    # BA sample 1: criteria "correct sum" (gap +4) and "brevity" (gap -2), ranked by |gap|.
    segs = segments(fmt, MIXED, 4, ranked=True, max_len=1024)
    assert len(segs) == 1 + 2 + 4
    prompt, text = _split(fmt, segs[0])
    assert prompt == ids(criteria_chat(messages, 2))
    assert text.startswith("- correct sum\n- brevity\n")
    prompt, text = _split(fmt, segs[1])
    assert prompt == ids(rubric_chat(messages, "correct sum")) and text.startswith("1 wrong")
    # BA: the rejected response is shown first, so "Response A" there is the pair's B.
    prompt, text = _split(fmt, segs[3])
    shown = score_chat(messages, "5", "4", "correct sum", "1 wrong, 5 right", "A")
    assert prompt == ids(shown) and text.startswith("1")  # B's score, 1
    assert _split(fmt, segs[4])[1].startswith("5")  # A's score, shown second
    # Unranked (a rejected trajectory): the criteria as sampled.
    tie_first = record(("AB", 0, [(3, 3), (5, 1)]))
    assert _split(fmt, segments(fmt, tie_first, 0, ranked=True, max_len=1024)[0])[1].startswith(
        "- clarity\n- accuracy\n"
    )
    assert _split(fmt, segments(fmt, tie_first, 0, ranked=False, max_len=1024)[0])[1].startswith(
        "- accuracy\n- clarity\n"
    )


def test_rsft_and_dpo_inputs_come_from_the_kept_and_rejected_trajectories(
    fmt: PromptFormatter,
) -> None:
    kept, _ = filter_records([MIXED])
    examples = rsft_examples(fmt, kept, 1024)
    assert len(examples) == 7 and all(e.chosen_score is None for e in examples)
    assert examples[0].chosen_lm == segments(fmt, MIXED, 0, ranked=True, max_len=1024)[0]
    ((good, bad),) = dpo_trajectories(fmt, kept, 1024)
    assert good == segments(fmt, MIXED, 0, ranked=True, max_len=1024)
    assert bad == segments(fmt, MIXED, 2, ranked=False, max_len=1024)
    assert dpo_trajectories(fmt, [dict(kept[0], rejected=None)], 1024) == []


def test_compare_accuracy_counts_position_disagreement_as_a_tie() -> None:
    a_wins = record(("AB", 0, [(5, 1)]), ("BA", 0, [(4, 2)]))
    b_wins = record(("AB", 0, [(1, 5)]), ("BA", 0, [(2, 4)]))
    swapped = record(("AB", 0, [(5, 1)]), ("BA", 0, [(1, 5)]))
    for r in (a_wins, b_wins, swapped):
        r["criteria"], r["rubrics"] = [["accuracy"]], [["r"]]
    acc = compare_accuracy([a_wins, b_wins, swapped, None])
    assert acc["pairs"] == 3 and acc["overall"] == pytest.approx(1.5 / 3)
    assert acc["position_consistent"] == pytest.approx(2 / 3)
    assert acc["per_category"] == {"reasoning": pytest.approx(0.5)}
    assert acc["greedy"]["overall"] == acc["overall"]  # no expected scores: the same reading


def test_expected_scores_decide_where_recorded_and_greedy_digits_are_reported_beside() -> None:
    tied = record(("AB", 0, [(3, 3)]), ("BA", 0, [(3, 3)]))
    tied["criteria"], tied["rubrics"] = [["accuracy"]], [["r"]]
    tied["trajectories"][0]["expected"] = [[3.4, 3.1]]  # A (chosen) leans ahead in both orders
    tied["trajectories"][1]["expected"] = [[3.3, 3.2]]
    acc = compare_accuracy([tied])
    assert acc["overall"] == 1.0 and acc["greedy"]["overall"] == 0.5
    (ab, ba) = trajectories_of(tied)
    assert ab.criteria[0].gap == pytest.approx(0.3) and ba.criteria[0].gap == pytest.approx(0.1)
    assert trajectories_of(tied, digits_only=True)[0].criteria[0].gap == 0
    assert trajectory_json(ab) == tied["trajectories"][0]
    digits = trajectories_of(tied, digits_only=True)[0]
    assert "expected" not in trajectory_json(digits)


def test_dpo_over_whole_trajectories_starts_at_log_two_and_falls(
    tiny_llama: Path, fmt: PromptFormatter
) -> None:
    import peft
    from transformers import AutoModelForCausalLM

    from trainer.preference import completion_logps, train_dpo

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = peft.get_peft_model(
        lm, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])
    )
    kept, _ = filter_records([MIXED])
    pairs = dpo_trajectories(fmt, kept, 1024) * 2
    good, _ = pairs[0]
    with torch.no_grad():  # a trajectory's log-probability is the sum of its segments'
        whole = completion_logps(model, [good], pad_id=2)
        parts = completion_logps(model, list(good), pad_id=2)
    assert float(whole[0]) == pytest.approx(float(parts.sum()), rel=1e-5)
    losses = train_dpo(model, pairs, beta=0.5, lr=1e-2, epochs=8, per_step=2, seed=0, pad_id=2)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[-1] < 0.6 * math.log(2)
