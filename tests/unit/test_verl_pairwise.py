"""verl's pairwise reward over /compare: the grouping, the call plan, the win rates (hand-worked),
and the adapter against the gateway on fake engines over a real socket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from critic_rm_client import calls
from critic_rm_client.adapters import make_reward_function, make_verl_pairwise_compute_score
from critic_rm_client.adapters.verl_pairwise import (
    compare_score_batch,
    groups,
    pair_matrix,
    plan,
    win_rates,
)
from critic_rm_client.results import CompareResult, PairJudgment
from service.app import create_app
from tests.fakes import loader_for
from tests.unit.client_fake import serve_app
from tests.unit.test_gateway import make_settings


def pair(a: int, b: int, preference: str, p_a: float, bt_p_a: float = 0.5) -> PairJudgment:
    return PairJudgment(a, b, preference, p_a, bt_p_a, {}, 1.0, False, False, [])


def result(*pairs: PairJudgment, version: str = "v1") -> CompareResult:
    return CompareResult(version, list(pairs), None, [], 0, [])


def test_groups_follow_the_prompt_in_first_seen_order() -> None:
    msgs = [{"role": "user", "content": "q"}]
    assert groups(["q", "p", "q", msgs, "p", list(msgs)]) == [[0, 2], [1, 4], [3, 5]]


def test_the_plan_is_one_call_up_to_four_then_every_pair() -> None:
    assert plan(0) == [] and plan(1) == []
    assert plan(2) == [(0, 1)] and plan(4) == [(0, 1, 2, 3)]
    five = plan(5)
    assert len(five) == 10 and all(len(c) == 2 for c in five) and len(set(five)) == 10


def test_win_rates_by_hand() -> None:
    # Three distinct responses: 0 beats 1 (p 0.8), 2 beats 0 (p_a 0.25), 1 and 2 tie.
    judged = [
        (
            (0, 1, 2),
            result(pair(0, 1, "A", 0.8), pair(0, 2, "B", 0.25), pair(1, 2, "tie", 0.5, 0.9)),
        )
    ]
    half = pair_matrix(3, judged, "half")
    assert half[0][1] == 0.8 and half[1][0] == pytest.approx(0.2)
    assert half[2][0] == 0.75 and half[1][2] == 0.5
    head = pair_matrix(3, judged, "reward_head")
    assert head[1][2] == 0.9 and head[2][1] == pytest.approx(0.1)
    rates = win_rates(["a", "b", "c"], half)
    assert rates == pytest.approx([(0.8 + 0.25) / 2, (0.2 + 0.5) / 2, (0.75 + 0.5) / 2])
    # A copy ties with its original; an empty response loses to all but another empty one.
    rates = win_rates(["a", "b", "a", " ", ""], half)
    assert rates[0] == pytest.approx((0.8 + 0.5 + 1 + 1) / 4) and rates[0] == rates[2]
    assert rates[3] == pytest.approx((0 + 0 + 0 + 0.5) / 4) == rates[4]
    assert win_rates(["alone"], [[0.5]]) == [0.5]


def test_the_options_are_compares_and_misspelt_ones_raise() -> None:
    with pytest.raises(TypeError, match="num_critiques"):
        make_verl_pairwise_compute_score("http://x", num_critiques=2)
    with pytest.raises(TypeError, match="empty_reward"):
        make_reward_function("verl_pairwise", "http://x", empty_reward=-1.0)
    with pytest.raises(ValueError, match="ties"):
        make_verl_pairwise_compute_score("http://x", ties="coin")
    adapter = make_reward_function("verl_pairwise", "http://x", samples=2, ties="half")
    assert adapter.compare_options == {"samples": 2}  # type: ignore[attr-defined]


def test_the_batch_is_judged_per_group_against_the_gateway(
    checkpoint_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[list[str]] = []
    real = calls.compare

    def counting(config: Any, prompt: Any, responses: Any, *args: Any) -> Any:
        sent.append(list(responses))
        return real(config, prompt, responses, *args)

    monkeypatch.setattr(calls, "compare", counting)
    app = create_app(make_settings(checkpoint_root), loader_for(checkpoint_root))
    # GRPO-style batch: q1 has 3 rollouts (one repeated, one empty), q2 has 5 distinct, q3 one.
    solutions = ["4", "five", "4", "", "a", "bb", "ccc", "dddd", "eeeee", "solo"]
    prompts = ["q1"] * 4 + ["q2"] * 5 + ["q3"]
    infos = [{"prompt": p} for p in prompts]
    with serve_app(app) as url:
        score = make_verl_pairwise_compute_score(url, num_criteria=2, samples=1)
        rewards = score(["d"] * 10, solutions, [None] * 10, infos)
        again = asyncio.run(score.acall(["d"] * 10, solutions, [None] * 10, infos))
        monkeypatch.setenv("CRITIC_RM_URL", url)
        entry = compare_score_batch(["d"] * 4, solutions[:4], [None] * 4, infos[:4], samples=1)
    assert len(rewards) == 10 and all(0.0 <= r <= 1.0 for r in rewards)
    assert again == pytest.approx(rewards) and entry == pytest.approx(rewards[:4])
    # q1: one call for its two distinct non-empty responses; q2: its ten pairs one by one.
    assert sent[:11].count(["4", "five"]) == 1 and sum(len(s) == 2 for s in sent[:11]) == 11
    assert rewards[0] == rewards[2]  # copies of "4"
    assert rewards[3] == 0.0  # the empty one lost to all three non-empty ones
    # Every opponent's p and 1 - p: a group of n with one opponent per pair sums to n / 2.
    assert sum(rewards[4:9]) == pytest.approx(2.5)
    assert rewards[9] == 0.5  # no opponent
