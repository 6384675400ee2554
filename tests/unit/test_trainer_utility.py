"""Critique utility (RCO) bookkeeping: the verifier judge in both orders with ties, CU as the
mean outcome, top K and (best, worst) pairs; the actor is asked with /refine's revision
conversation. The generator here is a scripted stand-in; the real engine runs the stage in
tests/integration/test_trainer_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from service.contract.formatting import PromptFormatter
from service.engines.base import Critique, EngineStats, SamplingSpec
from tests.chat_server import chat_server
from trainer.config import ActorConfig
from trainer.run import StageError
from trainer.utility import (
    actor_of,
    both_orders,
    critique_utility,
    preference_pair,
    revision_prompt,
    utility_refine,
    verifier_judgment,
)

PAIR = {
    "prompt": "6 friends share a bill of $144 plus a $6 tip equally. How much does each pay?",
    "chosen": "1. The total is: 144 + 6 = 150\n2. Each pays: 150 ÷ 6 = 25\n\nAnswer: 25",
    "rejected": "1. The total is: 144 + 6 = 150\n\nAnswer: 150",
    "category": "reasoning",
    "check": {
        "kind": "arithmetic",
        "answer": 25.0,
        "unit": "dollars",
        "steps": [[144.0, "+", 6.0, 150.0], [150.0, "÷", 6.0, 25.0]],
    },
}
RIGHT = PAIR["chosen"]
WRONG = "1. The total is: 144 + 6 = 150\n2. Each pays: 150 ÷ 6 = 30\n\nAnswer: 30"


def test_judgments_in_both_orders_with_ties() -> None:
    assert verifier_judgment(True, False) == 1.0 and verifier_judgment(False, True) == 0.0
    assert verifier_judgment(True, True) == verifier_judgment(False, False) == 0.5
    # A revision that fixes a wrong original wins read either way round.
    assert both_orders(verifier_judgment(True, False), verifier_judgment(False, True)) == 1.0
    assert both_orders(0.5, 0.5) == 0.5
    # A position-biased judge that always prefers the first answer gives a tie.
    assert both_orders(1.0, 1.0) == 0.5
    assert critique_utility([1.0, 0.5, 0.0, 1.0]) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        critique_utility([])
    assert preference_pair(["a", "b", "c"], [0.5, 1.0, 0.0]) == ("b", "c")
    assert preference_pair(["a", "b"], [0.5, 0.5]) is None and preference_pair(["a"], [1]) is None


class Scripted:
    """Answers each revision prompt with the revisions scripted for the critique in it."""

    def __init__(self, fmt: PromptFormatter, script: dict[str, list[str]]) -> None:
        self.fmt, self.script, self.seen = fmt, script, []

    async def generate(
        self, prompts: Sequence[list[int]], specs: Sequence[SamplingSpec]
    ) -> tuple[list[list[Critique]], EngineStats]:
        out = []
        for ids, spec in zip(prompts, specs, strict=True):
            text = self.fmt.tokenizer.decode(ids)
            self.seen.append(text)
            key = next(k for k in self.script if k in text)
            assert spec.n == len(self.script[key])
            out.append([Critique(t, 1, "stop") for t in self.script[key]])
        return out, EngineStats()


@pytest.fixture(scope="module")
def fmt(tiny_formatter: PromptFormatter) -> PromptFormatter:
    return tiny_formatter


def test_utility_refinement_ranks_critiques_by_what_their_revisions_achieve(
    fmt: PromptFormatter,
) -> None:
    record: dict[str, Any] = {
        "pair": PAIR,
        "chosen": [{"text": "KEEP-IT: looks right."}, {"text": "BREAK-IT: redo the division."}],
        "rejected": [
            {"text": "VAGUE: could be better."},
            {"text": "FIX-IT: divide 150 by 6."},
            {"text": "HALF: check step 2."},
        ],
    }
    script = {
        "KEEP-IT": [RIGHT, RIGHT],  # the right original stays right: ties
        "BREAK-IT": [WRONG, RIGHT],  # one revision breaks it: 0 and 0.5
        "VAGUE": [WRONG, WRONG],  # the wrong original stays wrong: ties
        "FIX-IT": [RIGHT, RIGHT],  # both revisions fix it: wins
        "HALF": [RIGHT, WRONG],
    }
    gen = Scripted(fmt, script)
    (out,) = asyncio.run(
        utility_refine(
            gen, fmt, [record], k=1, revisions=2, max_tokens=64, temperature=0.8, top_p=0.95
        )
    )
    assert out["chosen_cu"] == [0.5, 0.25] and out["rejected_cu"] == [0.5, 1.0, 0.75]
    assert out["chosen_train"] == ["KEEP-IT: looks right."]
    assert out["rejected_train"] == ["FIX-IT: divide 150 by 6."]
    assert out["chosen_cu_pair"] == ["KEEP-IT: looks right.", "BREAK-IT: redo the division."]
    assert out["rejected_cu_pair"] == ["FIX-IT: divide 150 by 6.", "VAGUE: could be better."]
    # The actor was asked with /refine's revision conversation: prompt, response, critique.
    expected = revision_prompt(fmt, PAIR["prompt"], PAIR["rejected"], "FIX-IT: divide 150 by 6.")
    assert fmt.tokenizer.decode(expected) in gen.seen


class ScriptedJudge(Scripted):
    """The actor as scripted; as the /compare judge, it lists criteria, writes a rubric, and
    scores 5 the response that divides right ("= 25") and 1 any other, wherever it is shown."""

    scored = 0

    async def generate(
        self, prompts: Sequence[list[int]], specs: Sequence[SamplingSpec]
    ) -> tuple[list[list[Critique]], EngineStats]:
        judged = []
        for ids, spec in zip(prompts, specs, strict=True):
            text = self.fmt.tokenizer.decode(ids)
            if "most important criteria" in text:
                judged.append([Critique("- accuracy\n- clarity\n- brevity\n", 9, "stop")] * spec.n)
            elif "scoring rubric" in text:
                judged.append([Critique("1: wrong; 5: right", 6, "stop")] * spec.n)
            elif "Score Response" in text:
                assert spec.temperature == 0.0  # /compare's greedy scores
                self.scored += 1
                which = text.rsplit("Score Response ", 1)[1][0]
                start = text.index(f"[Response {which}]")
                shown = text[start : text.index("\n\n", start + 14)]
                judged.append([Critique("5" if "= 25" in shown else "1", 1, "stop")])
            else:
                judged += (await super().generate([ids], [spec]))[0]
        return judged, EngineStats()


def test_without_a_verifier_the_compare_judge_decides_in_both_orders(
    fmt: PromptFormatter,
) -> None:
    record = {
        "pair": {**PAIR, "check": None},
        "chosen": [],
        "rejected": [{"text": "VAGUE: could be better."}, {"text": "FIX-IT: divide 150 by 6."}],
    }
    gen = ScriptedJudge(fmt, {"VAGUE": [WRONG, WRONG], "FIX-IT": [RIGHT, WRONG]})
    (out,) = asyncio.run(
        utility_refine(
            gen, fmt, [record], k=1, revisions=2, max_tokens=64, temperature=0.8, top_p=0.95
        )
    )
    # FIX-IT: one revision the judge prefers in both orders (1), one it cannot tell from
    # the original (both score 1: a tie, 0.5); VAGUE: two ties.
    assert out["rejected_cu"] == [0.5, 0.75] and out["chosen_cu"] == []
    assert out["rejected_cu_pair"] == ["FIX-IT: divide 150 by 6.", "VAGUE: could be better."]
    # 4 revisions x 2 orders x 3 criteria (/compare's default) x 2 responses.
    assert gen.scored == 48


def _scripted(server: Any, body: dict[str, Any]) -> tuple[int, Any]:
    """Revisions by the critique's keyword in the script; HTTP 500 once told to fail."""
    critique = body["messages"][-1]["content"]
    texts = next(v for k, v in server.script.items() if k in critique)
    payload = {"choices": [{"message": {"content": t}} for t in texts[: body["n"]]]}
    return (500 if server.fail else 200), payload


@pytest.fixture()
def actor_server() -> Iterator[Any]:
    with chat_server(_scripted) as server:
        server.fail = False
        server.script = {"FIX-IT": [RIGHT, RIGHT], "VAGUE": [WRONG, RIGHT]}
        yield server


def _refine_by_actor(
    gen: Scripted, fmt: PromptFormatter, record: dict[str, Any], actor: Any
) -> list[dict[str, Any]]:
    return asyncio.run(
        utility_refine(
            gen,
            fmt,
            [record],
            k=1,
            revisions=2,
            max_tokens=64,
            temperature=0.8,
            top_p=0.95,
            actor=actor,
        )
    )


def test_an_external_actor_writes_the_revisions(
    fmt: PromptFormatter, actor_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{actor_server.server_address[1]}/v1"
    monkeypatch.setenv("ACTOR_KEY_FOR_TEST", "sk-actor")
    actor = actor_of(ActorConfig(url=url, model="policy-7b", api_key_env="ACTOR_KEY_FOR_TEST"))
    record: dict[str, Any] = {
        "pair": PAIR,
        "chosen": [],
        "rejected": [{"text": "VAGUE: could be better."}, {"text": "FIX-IT: divide 150 by 6."}],
    }
    gen = Scripted(fmt, {})  # the generator writes nothing: no key matches, so it would fail
    (out,) = _refine_by_actor(gen, fmt, record, actor)
    assert gen.seen == []
    assert out["rejected_cu"] == [0.75, 1.0]
    assert out["rejected_cu_pair"] == ["FIX-IT: divide 150 by 6.", "VAGUE: could be better."]
    path, body, auth = actor_server.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-actor"
    assert body["model"] == "policy-7b" and body["n"] == 2 and body["max_tokens"] == 64
    # /refine's revision conversation: the prompt, the response, then the critique turn.
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == PAIR["rejected"]


def test_a_failing_actor_stops_the_stage_naming_the_field(
    fmt: PromptFormatter, actor_server: Any
) -> None:
    actor_server.fail = True
    url = f"http://127.0.0.1:{actor_server.server_address[1]}"
    actor = actor_of(ActorConfig(url=url))
    record: dict[str, Any] = {"pair": PAIR, "chosen": [], "rejected": [{"text": "FIX-IT: x"}]}
    with pytest.raises(StageError, match=r"refine\.actor\.url .*HTTP 500"):
        _refine_by_actor(Scripted(fmt, {}), fmt, record, actor)
    assert actor_of(ActorConfig()) is None
    with pytest.raises(ValidationError, match="http"):
        ActorConfig(url="file:///etc/passwd")
