"""Grounded critiques: the structured critique format, hints only in the training sampling
prompt, the constrained verdict, the grounded instance filter, and the report's intervals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from service.checkpoint.critique_format import (
    VERDICT_REGEX,
    parse,
    parse_verdict,
    with_verdict,
)
from trainer import critiques
from trainer.config import SamplingConfig
from trainer.critiques import sample_and_judge
from trainer.data.pairs import PreferencePair
from trainer.evaluate import accuracy, wilson
from trainer.selection import filter_grounded

from .test_trainer_pipeline import CharFormatter, ScriptedGenerator, _decode


# ---------------------------------------------------------------- the format
def test_structured_critique_parses_into_its_three_parts() -> None:
    text = with_verdict(
        "Analysis: the sum skips n.\nImprovement suggestions: use range(1, n + 1).", "Incorrect"
    )
    assert text.endswith("\nOverall judgment: Incorrect")
    c = parse(text)
    assert c.analysis == "the sum skips n."
    assert c.suggestions == "use range(1, n + 1)."
    assert c.verdict == "Incorrect" and c.text == text


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Correct", "Correct"),
        (" Incorrect ", "Incorrect"),
        ("Looks fine.\n**Overall judgment:** correct", "Correct"),
        ("Overall judgment: Correct\nOverall judgment: Incorrect", "Incorrect"),  # the last
        ("The answer is correct.", None),  # prose is not a verdict line
        ("", None),
    ],
)
def test_verdict_line_parsing(text: str, want: str | None) -> None:
    assert parse_verdict(text) == want


def test_a_critique_without_headers_is_all_analysis() -> None:
    c = parse("It forgets to subtract the 4 given away.")
    assert c.analysis.startswith("It forgets") and c.suggestions == "" and c.verdict is None


# ---------------------------------------------------------------- grounded sampling
@dataclass(frozen=True)
class Finding:
    correct: bool
    hint: str


async def test_grounded_sampling_hints_training_prompts_only_and_constrains_the_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = PreferencePair("q", "good", "bad", "code", "p0", check={"kind": "test"})

    async def fake_verify(pairs: Any) -> list[dict[str, Finding] | None]:
        return [
            {"chosen": Finding(True, "passes 3 tests"), "rejected": Finding(False, "fails 1")}
            if p.check
            else None
            for p in pairs
        ]

    monkeypatch.setattr(critiques, "verify_pairs", fake_verify)
    gen = ScriptedGenerator(
        [
            ["c1", "c2"],  # hinted critiques of chosen
            ["c3", "c4"],  # of rejected
            ["Correct"],
            ["Incorrect"],  # c2 says the passing code is wrong
            ["Incorrect"],
            ["maybe"],  # not a verdict: dropped and counted
            ["p1"],  # plain critiques, one per response
            ["p2"],
        ]
    )
    cfg = SamplingConfig(num_critiques=2, max_tokens=8, plain_critiques=1)  # type: ignore[call-arg]
    records, stats = await sample_and_judge(gen, CharFormatter(), [checked], cfg)  # type: ignore[arg-type]
    rec = records[0]
    assert rec["chosen"] == [
        {"text": "c1\nOverall judgment: Correct", "verdict": "Correct"},
        {"text": "c2\nOverall judgment: Incorrect", "verdict": "Incorrect"},
    ]
    assert rec["rejected"] == [{"text": "c3\nOverall judgment: Incorrect", "verdict": "Incorrect"}]
    assert rec["verifier"]["chosen"] == {"correct": True, "hint": "passes 3 tests"}
    assert rec["chosen_plain"] == ["p1"] and rec["rejected_plain"] == ["p2"]
    assert stats.unparseable == 1 and stats.grounded_pairs == 1
    hinted, _ = gen.calls[0]
    assert "hint:passes 3 tests" in _decode(hinted[0]) and "hint:fails 1" in _decode(hinted[1])
    closing, specs = gen.calls[1]
    assert _decode(closing[0]).endswith("c1\nOverall judgment: ")
    # The verdict is decoded without the hint: it says what the critique's own text implies.
    assert all("hint:" not in _decode(p) for p in closing)
    assert all(s.regex == VERDICT_REGEX and s.temperature == 0.0 and s.n == 1 for s in specs)
    plain, plain_specs = gen.calls[2]
    assert all("hint:" not in _decode(p) for p in plain)  # the service's own input
    assert all(s.regex is None and s.temperature == cfg.temperature for s in plain_specs)


# ---------------------------------------------------------------- the grounded filter
def _grounded(chosen: list[str], rejected: list[str], cat: str = "code") -> dict[str, Any]:
    return {
        "pair": {"prompt": "q", "chosen": "a", "rejected": "b", "category": cat},
        "verifier": {"chosen": {"correct": True}, "rejected": {"correct": False}},
        "chosen": [{"text": f"z{i}", "verdict": v} for i, v in enumerate(chosen)],
        "rejected": [{"text": f"w{i}", "verdict": v} for i, v in enumerate(rejected)],
    }


def test_grounded_filter_keeps_only_critiques_that_agree_with_the_verifier() -> None:
    agree = _grounded(["Incorrect", "Correct"], ["Incorrect", "Incorrect"])
    one_side_wrong = _grounded(["Correct"], ["Correct", "Correct"])
    judged = {  # no verifier (a loaded dataset): the judge-score filter decides
        "pair": {"prompt": "q", "chosen": "a", "rejected": "b", "category": "chat"},
        "chosen": [{"text": "x", "score": 8}],
        "rejected": [{"text": "y", "score": 3}],
    }
    judged_tie = {**judged, "rejected": [{"text": "y", "score": 8}]}
    mislabelled = _grounded(["Correct"], ["Incorrect"])
    mislabelled["verifier"]["rejected"]["correct"] = True  # e.g. a flaky sandbox run
    kept, report, agreement = filter_grounded(
        [agree, one_side_wrong, judged, judged_tie, mislabelled]
    )
    # The pair whose rejected side kept no critique stays for the reward head.
    assert [k["pair"]["category"] for k in kept] == ["code", "code", "chat"]
    assert kept[1]["chosen"] == [{"text": "z0", "verdict": "Correct"}] and kept[1]["rejected"] == []
    assert kept[0]["chosen"] == [{"text": "z1", "verdict": "Correct"}]
    assert [c["text"] for c in kept[0]["rejected"]] == ["w0", "w1"]
    assert report.kept == {"code": 1, "chat": 1} and report.total == {"code": 3, "chat": 2}
    assert report.label_disagreements == {"code": 1}
    assert agreement == {"code": pytest.approx(4 / 7)}  # 1 + 2 of 4, 1 + 0 of 3


# ---------------------------------------------------------------- intervals
def test_wilson_interval_matches_known_values() -> None:
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(50, 50)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.9287, abs=1e-3)


def test_accuracy_reports_pairs_and_intervals_per_category() -> None:
    acc = accuracy([1.0, 1.0, 0.0], [0.0, 0.0, 1.0], ["a", "a", "b"])
    assert acc["pairs"] == 3 and acc["per_category_pairs"] == {"a": 2, "b": 1}
    lo, hi = acc["ci95"]
    assert lo < acc["overall"] < hi
    assert acc["per_category_ci95"]["b"][0] == 0.0


async def test_a_critique_that_cites_its_hint_or_writes_its_own_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = PreferencePair("q", "good", "bad", "code", "p0", check={"kind": "test"})

    async def fake_verify(pairs: Any) -> list[dict[str, Finding] | None]:
        return [{"chosen": Finding(True, "ok"), "rejected": Finding(False, "fails")}]

    monkeypatch.setattr(critiques, "verify_pairs", fake_verify)
    gen = ScriptedGenerator(
        [
            ["As the verifier says, it passes."],  # cites the check: dropped
            ["Wrong base case.\nOverall judgment: Correct"],  # its own verdict is replaced
            ["Correct"],
            ["Incorrect"],
        ]
    )
    cfg = SamplingConfig(num_critiques=1, max_tokens=64, plain_critiques=0)  # type: ignore[call-arg]
    records, stats = await sample_and_judge(gen, CharFormatter(), [checked], cfg)  # type: ignore[arg-type]
    assert records[0]["chosen"] == [] and stats.hint_echoes == 1
    assert records[0]["rejected"] == [
        {"text": "Wrong base case.\nOverall judgment: Incorrect", "verdict": "Incorrect"}
    ]
    closing, _ = gen.calls[1]
    assert _decode(closing[1]).endswith("Wrong base case.\nOverall judgment: ")
    hinted_specs = gen.calls[0][1]
    # The free text leaves room for the verdict line within the critique budget.
    assert all(s.max_tokens == 64 - len("\nOverall judgment: Incorrect") for s in hinted_specs)


def test_sampled_reward_inputs_need_sampled_critiques() -> None:
    from trainer.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="plain_critiques"):
        load_config(None, ["sampling.plain_critiques=0", "train.reward_inputs=[plain, sampled]"])
    load_config(None, ["sampling.plain_critiques=0", "train.reward_inputs=[plain]"])
    with pytest.raises(ConfigError, match="splits"):
        load_config(None, ["eval.splits={hard: 0}"])


# ---------------------------------------------------------------- teacher critiques
class _Tok:
    eos_token_id = 0


class EosCharFormatter(CharFormatter):
    markers = None
    tokenizer = _Tok()


def test_teacher_critique_states_the_finding_without_its_source() -> None:
    from trainer.verify.teacher import teacher_critique

    wrong = Finding(False, "Verifier: the final answer 17 is wrong; the correct result is 6.")
    text = teacher_critique("reasoning", wrong)  # type: ignore[arg-type]
    c = parse(text)
    assert c.verdict == "Incorrect"
    assert c.analysis == "The final answer 17 is wrong; the correct result is 6."
    assert c.suggestions == "Redo the calculation step by step."
    assert critiques.HINT_ECHO.search(text) is None  # it never claims a check it cannot run
    ok = Finding(True, "Execution feedback: the code passes all 3 unit tests.")
    assert parse(teacher_critique("code", ok)).verdict == "Correct"  # type: ignore[arg-type]
    refusal = Finding(False, "Verifier: the response refuses a harmless request (over-refusal).")
    assert "helpfully" in parse(teacher_critique("safety", refusal)).suggestions  # type: ignore[arg-type]


def test_teacher_critique_shortens_its_analysis_to_keep_the_verdict_in_budget() -> None:
    from trainer.verify.teacher import teacher_critique

    long = Finding(False, "Verifier: one two three four. Five six seven eight. Nine ten.")
    text = teacher_critique("code", long, lambda t: len(t) <= 120)  # type: ignore[arg-type]
    assert len(text) <= 120 and text.endswith("Overall judgment: Incorrect")
    assert parse(text).analysis == "One two three four."  # whole sentences go first
    tiny = teacher_critique("code", long, lambda t: len(t) <= 105)  # type: ignore[arg-type]
    assert parse(tiny).analysis == "One two" and parse(tiny).verdict == "Incorrect"


async def test_teacher_mode_writes_training_critiques_and_samples_only_plain_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = PreferencePair("q", "good", "bad", "code", "p0", check={"kind": "test"})
    judged = PreferencePair("q2", "g", "b", "general", "p1")  # no verifier: sampled and judged

    async def fake_verify(pairs: Any) -> list[dict[str, Finding] | None]:
        return [
            {
                "chosen": Finding(True, "Execution feedback: the code passes all 3 unit tests."),
                "rejected": Finding(False, "Execution feedback: the code fails 1 of 3 tests."),
            }
            if p.check
            else None
            for p in pairs
        ]

    monkeypatch.setattr(critiques, "verify_pairs", fake_verify)
    gen = ScriptedGenerator(
        [
            ["j1"],  # the unverified pair's critiques, then their judge scores
            ["j2"],
            ["8"],
            ["3"],
            ["p1"],  # plain critiques, one per response
            ["p2"],
            ["p3"],
            ["p4"],
        ]
    )
    cfg = SamplingConfig(num_critiques=1, max_tokens=200, plain_critiques=1, teacher=True)  # type: ignore[call-arg]
    records, stats = await sample_and_judge(gen, EosCharFormatter(), [checked, judged], cfg)  # type: ignore[arg-type]
    rec = records[0]
    assert [c["verdict"] for c in rec["chosen"]] == ["Correct"]
    assert [c["verdict"] for c in rec["rejected"]] == ["Incorrect"]
    assert rec["rejected"][0]["text"].startswith("Analysis: The code fails 1 of 3 tests.")
    assert rec["chosen_plain"] == ["p1"] and rec["rejected_plain"] == ["p2"]
    assert records[1]["chosen"] == [{"text": "j1", "score": 8}]
    assert stats.teacher == 2
    # Only the unverified pair was sampled with its own prompts; no hint reached any prompt.
    assert len(gen.calls[0][0]) == 2
    assert all("hint:" not in _decode(p) for call, _ in gen.calls for p in call)
    kept, _report, agreement = filter_grounded(records[:1])
    assert kept[0]["chosen"] and kept[0]["rejected"] and agreement == {"code": 1.0}


def test_teacher_critique_names_the_failing_input_of_partly_failing_code() -> None:
    from trainer.verify.teacher import teacher_critique

    hint = (
        "Execution feedback: the code fails 1 of 3 unit tests. For the input ([1], 9), the "
        "expected output is -1, but the code returns None."
    )
    c = parse(teacher_critique("code", Finding(False, hint)))  # type: ignore[arg-type]
    assert c.analysis == "For the input ([1], 9), the code returns None instead of -1."
    assert c.verdict == "Incorrect"
