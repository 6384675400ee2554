"""Judge-score parsing, filtering and selection, the synthetic generator's labels, and loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.data import synthetic
from trainer.data.load import DataError, load_pairs, to_pair
from trainer.judge import parse_score
from trainer.selection import Scored, filter_pairs, keep_pair, top_k
from trainer.verify.arithmetic import final_answer
from trainer.verify.checks import verify


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("7", 7),
        (" 10 ", 10),
        ("The answer is wrong.\nScore: 3", 3),
        ("score (1-10): 8/10", 8),
        ("Rating: 9 out of 10", 9),
        ("I would give it 6/10.", 6),
        ("Score: 4. On reflection, Score: 5", 5),  # the last one wins
        ("0", None),
        ("11", None),
        ("Score: 12", None),
        ("Score: 7.5", None),
        ("no score here", None),
        ("", None),
        ("Score: ", None),
    ],
)
def test_parse_score(text: str, want: int | None) -> None:
    assert parse_score(text) == want


def s(*scores: int | None) -> list[Scored]:
    return [Scored(f"c{i}", x) for i, x in enumerate(scores)]


def test_instance_filter_keeps_pairs_whose_critiques_agree_with_the_label() -> None:
    assert keep_pair(s(8, 6), s(3, None))
    assert not keep_pair(s(5, 5), s(5))  # a tie is not agreement
    assert not keep_pair(s(2), s(9))
    assert not keep_pair(s(None, None), s(1))  # nothing parsed on one side
    kept, report = filter_pairs(
        ["p1", "p2", "p3"],
        ["code", "code", "safety"],
        [s(9), s(1), s(7)],
        [s(2), s(8), s(3)],
    )
    assert kept == ["p1", "p3"]
    assert report.fraction("code") == 0.5 and report.fraction("safety") == 1.0
    assert report.overall == pytest.approx(2 / 3)


def test_top_k_takes_the_highest_meta_scores_with_unscored_last() -> None:
    crits = s(1, 2, 3, 4)
    assert [c.text for c in top_k(crits, [5, None, 9, 5], 3)] == ["c2", "c0", "c3"]
    assert [c.text for c in top_k(crits, [None, None, 1, None], 2)] == ["c2", "c0"]


def test_generator_is_deterministic_and_balanced() -> None:
    a, b = synthetic.generate(6, seed=3), synthetic.generate(6, seed=3)
    assert a == b and a != synthetic.generate(6, seed=4)
    assert sorted({p.category for p in a}) == sorted(synthetic.CATEGORIES)
    assert all(sum(p.category == c for p in a) == 6 for c in synthetic.CATEGORIES)
    assert all(p.chosen != p.rejected and p.family and p.check for p in a)


def test_code_tasks_label_their_implementations_by_the_sandbox() -> None:
    assert len(synthetic.CODE_TASKS) >= 16
    task = synthetic.CODE_TASKS[0]
    check = {"kind": "unit_tests", "name": task.name, "tests": task.tests}
    assert all(verify(check, src).correct for src in task.good)
    assert not any(verify(check, src).correct for src in task.bad)
    assert not verify(check, "def sum_to(n:\n").correct  # syntax errors fail, not raise


def test_reasoning_rejected_answers_are_wrong() -> None:
    for p in synthetic.generate(20, seed=1):
        if p.category == "reasoning":
            assert p.check is not None
            right, wrong = final_answer(p.chosen), final_answer(p.rejected)
            assert right == p.check["answer"] and right != wrong


def test_splits_share_no_prompt() -> None:
    pairs = synthetic.generate(25, seed=0)
    train, val, test = synthetic.split(pairs, (0.8, 0.1, 0.1), seed=0)
    assert len(train) + len(val) + len(test) == len(pairs)
    for key in (lambda p: p.prompt_key(), synthetic.group_key):
        keys = [{key(p) for p in part} for part in (train, val, test)]
        assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    # Code tasks and safety requests are groups: each lies in one split only.
    for c in ("code", "safety"):
        groups = [{synthetic.group_key(p) for p in part if p.category == c}
                  for part in (train, val, test)]  # fmt: skip
        assert sum(len(g) for g in groups) == len(set().union(*groups)), c
    assert val and test


def test_loader_accepts_ours_rewardbench_and_openrlhf_fields(tmp_path: Path) -> None:
    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b", "category": "code"},
        {"prompt": "q2", "chosen": "a", "rejected": "b", "subset": "math-prm", "id": 7},
        {"input": "q3", "chosen_response": "a", "rejected_response": "b"},
        {
            "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "A"}],
            "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "B"}],
        },
        {"prompt": [{"role": "user", "content": "q5"}], "chosen": "a", "rejected": "b"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pairs = load_pairs(path)
    assert [p.category for p in pairs] == ["code", "math-prm", "general", "general", "general"]
    assert pairs[1].id == "7"
    assert pairs[2].prompt == "q3"
    assert pairs[3].prompt == [{"role": "user", "content": "hi"}]
    assert (pairs[3].chosen, pairs[3].rejected) == ("A", "B")
    assert pairs[4].prompt == [{"role": "user", "content": "q5"}]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"prompt": "q", "rejected": "b"}, "chosen"),
        ({"prompt": "q", "chosen": "a"}, "rejected"),
        ({"chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "prompt"),
    ],
)
def test_loader_names_the_bad_field(record: dict[str, object], field: str) -> None:
    with pytest.raises(DataError, match=field):
        to_pair(record, "row 1")


def test_loader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        load_pairs(path)
