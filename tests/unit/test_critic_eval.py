"""The critic's own metrics (issue 12, item 4) with a scripted generator: mean critique utility
of right and wrong responses, and the fix rate after each critique-revision round. The real
engine runs them through the eval stage (eval.critic)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from service.contract.formatting import PromptFormatter
from service.engines.base import Critique, EngineStats, SamplingSpec
from tests.unit.test_trainer_utility import PAIR, RIGHT, WRONG
from trainer.critic_eval import CriticEvalSettings, critic_metrics, write_critic_report
from trainer.critic_plots import compare_panels, critic_panels
from trainer.data.pairs import PreferencePair


class Critic:
    """Critiques: a right response gets KEEP then NOISE, a wrong one FIX-IT then NOISE.
    Revisions: KEEP and FIX-IT give the right answer, NOISE a wrong one."""

    def __init__(self, fmt: PromptFormatter) -> None:
        self.fmt = fmt
        self.revisions = 0

    async def generate(
        self, prompts: Sequence[list[int]], specs: Sequence[SamplingSpec]
    ) -> tuple[list[list[Critique]], EngineStats]:
        out = []
        for ids, spec in zip(prompts, specs, strict=True):
            text = self.fmt.tokenizer.decode(ids)
            if "Here is a review of your response" in text:
                self.revisions += spec.n
                review = text.split("Here is a review of your response", 1)[1]
                answer = WRONG if "NOISE" in review else RIGHT
                out.append([Critique(answer, 9, "stop")] * spec.n)
            else:
                right = "= 25" in text
                texts = ["KEEP", "NOISE"] if right else ["FIX-IT", "NOISE"]
                out.append([Critique(t, 1, "stop") for t in texts[: spec.n]])
        return out, EngineStats()


@pytest.fixture(scope="module")
def fmt(tiny_formatter: PromptFormatter) -> PromptFormatter:
    return tiny_formatter


def test_mean_utility_and_fix_rate_of_a_scripted_critic(
    fmt: PromptFormatter, tmp_path: Path
) -> None:
    pair = PreferencePair(**PAIR)
    unverifiable = PreferencePair("Say hi.", "Hi!", "Bye.", "general")
    gen = Critic(fmt)
    settings = CriticEvalSettings(critiques=2, revisions=2, rounds=2, revision_tokens=64)
    m = asyncio.run(
        critic_metrics(
            gen,
            fmt,
            [pair, unverifiable],
            critique_tokens=16,
            temperature=0.8,
            top_p=0.95,
            settings=settings,
        )
    )
    assert m["pairs"] == 1 and m["critiques"] == 4  # the pair without a verifier is left out
    # Right response: KEEP leaves it right (ties, 0.5), NOISE breaks it (0): 0.25.
    # Wrong response: FIX-IT fixes it (1), NOISE leaves it wrong (ties, 0.5): 0.75.
    assert m["mean_cu_right"] == pytest.approx(0.25) and m["mean_cu_wrong"] == pytest.approx(0.75)
    assert m["mean_cu"] == pytest.approx(0.5)
    # Round 1 critiques the wrong answer (FIX-IT: fixed), round 2 the fixed one (KEEP: stays).
    assert {k: v["rate"] for k, v in m["fix_rate"].items()} == {"1": 1.0, "2": 1.0}
    assert gen.revisions == 4 * 2 + 2  # utility revisions, then one per round
    write_critic_report({"trained": {"test": m}}, tmp_path)
    table = (tmp_path / "critic.md").read_text()
    assert "| trained | test | 1 | 0.500 (0.750 / 0.250) | 1.000 [" in table
    assert (tmp_path / "critic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_panels_carry_each_version_split_and_interval() -> None:
    rate = {"rate": 0.25, "ci95": [0.1, 0.5]}
    critic = {
        "base": {"test": {"fix_rate": {"1": rate, "2": rate}, "mean_cu_wrong": 0.6}},
        "trained": {"test": {"pairs": 0}},  # a split with nothing to measure draws no bar
    }
    fix1, fix2, cu = critic_panels(critic)
    assert fix1[2] == {"base": {"test": (0.25, 0.1, 0.5)}, "trained": {"test": None}}
    assert fix2[0] == "fix rate after 2 rounds"
    assert cu[2]["base"]["test"] == (0.6, 0.6, 0.6) and cu[2]["trained"]["test"] is None
    compare = {"base": {"hard": {"overall": 0.5, "ci95": [0.37, 0.63]}}}
    ((title, _, bars),) = compare_panels(compare)
    assert "compare" in title and bars == {"base": {"hard": (0.5, 0.37, 0.63)}}
