"""/compare's own logic: the voting rules (hand-worked cases), the criteria parsing, and the
endpoint on fake engines (both orders judged, ties, identical responses, ranking, limits)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from critic_rm_client import RewardClient
from critic_rm_client.adapters import make_trl_pairwise_judge
from service.app import create_app
from service.contract.judging import criteria_regex, expected_score, parse_criteria, parse_score
from service.contract.voting import (
    CriterionScores,
    Trajectory,
    judge_pair,
    majority,
    ranking,
)
from service.engines.base import Critique, SamplingSpec
from service.engines.judgment import sample_scores
from tests.fakes import FakeGenerator, loader_for, wait_ready
from tests.unit.client_fake import serve_app
from tests.unit.test_gateway import make_settings


def t(order: str, *scores: tuple[int, int]) -> Trajectory:
    return Trajectory(
        order,  # type: ignore[arg-type]
        [CriterionScores(f"c{i}", "", a, b) for i, (a, b) in enumerate(scores)],
    )


def test_the_ranking_rule_lets_the_largest_gap_decide() -> None:
    # The totals favour A (11 against 10), but the largest gap, c2's, favours B.
    traj = t("AB", (5, 3), (5, 3), (1, 4))
    assert [c.criterion for c in traj.ranked()] == ["c2", "c0", "c1"]
    assert traj.preference() == "B"
    # Equal largest gaps in opposite directions cancel: a tie.
    assert t("AB", (5, 3), (2, 4), (3, 3)).preference() == "tie"
    assert t("AB", (3, 3), (2, 2)).preference() == "tie"
    assert t("AB", (5, 1), (1, 4)).preference() == "A"


def test_the_consistency_rule_takes_the_majority() -> None:
    assert majority(["A", "A", "B"]) == "A"
    assert majority(["A", "B"]) == "tie"
    assert majority(["tie", "tie", "B"]) == "tie"
    assert majority(["B", "B", "tie", "tie"]) == "B"


def test_agreeing_orders_give_the_verdict_and_p_from_the_votes() -> None:
    v = judge_pair([t("AB", (5, 2)), t("AB", (4, 4)), t("BA", (5, 1)), t("BA", (4, 3))])
    # Votes: A, tie, A, A -> p = (3 + 0.5) / 4.
    assert v.preference == "A" and v.p_a == pytest.approx(0.875)
    assert v.votes == {"A": 3, "B": 0, "tie": 1} and v.consistency == pytest.approx(0.75)
    assert v.by_order == {"AB": "A", "BA": "A"} and not v.position_disagreement


def test_disagreeing_orders_are_a_tie_at_one_half() -> None:
    # Position bias: whichever is shown first wins.
    v = judge_pair([t("AB", (5, 2)), t("BA", (2, 5))])
    assert v.preference == "tie" and v.p_a == 0.5 and v.position_disagreement
    assert v.by_order == {"AB": "A", "BA": "B"}


def test_the_ranking_orders_responses_by_summed_p() -> None:
    a = judge_pair([t("AB", (5, 1)), t("BA", (5, 1))])  # 0 beats 1
    b = judge_pair([t("AB", (1, 5)), t("BA", (1, 5))])  # 2 beats 0 (as pair (0, 2): B)
    c = judge_pair([t("AB", (1, 5)), t("BA", (1, 5))])  # 2 beats 1
    assert ranking(3, {(0, 1): a, (0, 2): b, (1, 2): c}) == [2, 0, 1]


def test_criteria_parse_from_lines_and_scores_from_digits() -> None:
    text = "- Accuracy of the sum\n2. clarity\n- accuracy of the sum\n* brevity.\n- x\n"
    assert parse_criteria(text, 5) == ["Accuracy of the sum", "clarity", "brevity"]
    assert parse_criteria(text, 1) == ["Accuracy of the sum"]
    assert parse_score("4") == 4 and parse_score("x") is None
    assert criteria_regex(2).endswith("{2}")


@pytest.fixture()
def client(checkpoint_root: Path) -> Iterator[TestClient]:
    app = create_app(
        make_settings(checkpoint_root, max_compare_samples=4), loader_for(checkpoint_root)
    )
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def generator(c: TestClient) -> FakeGenerator:
    gen: FakeGenerator = c.app.state.service.runtime.generator  # type: ignore[attr-defined]
    return gen


BODY = {"prompt": "What is 2+2?", "responses": ["4", "5"]}


def test_every_pair_is_judged_in_both_orders(client: TestClient) -> None:
    r = client.post("/compare", json={**BODY, "samples": 2, "num_criteria": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ranking"] is None and len(body["rewards"]) == 2
    (pair,) = body["pairs"]
    assert (pair["a"], pair["b"]) == (0, 1) and not pair["identical"]
    assert sorted(t["order"] for t in pair["trajectories"]) == ["AB", "AB", "BA", "BA"]
    for traj in pair["trajectories"]:
        assert len(traj["criteria"]) == 3
        gaps = [abs(c["gap"]) for c in traj["criteria"]]
        assert gaps == sorted(gaps, reverse=True)  # ranked: the largest gap first
        for c in traj["criteria"]:
            assert c["criterion"].startswith(("accuracy", "clarity", "completeness"))
            assert all(1 <= s <= 5 for s in c["scores"].values())
            # Read as expected digits by default: the rules judge by their gap.
            assert all(1 <= s <= 5 for s in c["expected"].values())
            assert c["gap"] == pytest.approx(c["expected"]["A"] - c["expected"]["B"])
    assert sum(pair["votes"].values()) == 4
    r0, r1 = body["rewards"]
    assert pair["bt_p_a"] == pytest.approx(1 / (1 + math.exp(-(r0 - r1))))
    assert body["usage"]["judge_tokens"] > 0


def test_one_score_for_everything_is_a_tie_in_every_trajectory(client: TestClient) -> None:
    generator(client).score = 3
    pair = client.post("/compare", json={**BODY, "samples": 2}).json()["pairs"][0]
    assert pair["preference"] == "tie" and pair["p_a"] == 0.5
    assert pair["votes"] == {"A": 0, "B": 0, "tie": 4} and not pair["position_disagreement"]


def test_greedy_reading_judges_by_the_digits_and_asks_for_no_values(
    client: TestClient,
) -> None:
    gen = generator(client)
    body = client.post("/compare", json={**BODY, "score_reading": "greedy"}).json()
    for traj in body["pairs"][0]["trajectories"]:
        for c in traj["criteria"]:
            assert c["expected"] is None and c["gap"] == c["scores"]["A"] - c["scores"]["B"]
    assert all(not s.read_ids for call in gen.specs for s in call)
    client.post("/compare", json=BODY)
    ids = [s.read_ids for s in gen.specs[-1]]
    assert all(len(i) == 5 for i in ids)  # the tokens of "1".."5", read at the score step
    bad = client.post("/compare", json={**BODY, "score_reading": "mean"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "score_reading"


def test_expected_scores_break_the_ties_greedy_digits_make() -> None:
    # Both digits are 3; the judge leans towards A (more mass on 4) and the rules follow it.
    leaning = CriterionScores("c", "", 3, 3, expected_a=3.4, expected_b=3.1)
    assert leaning.gap == pytest.approx(0.3) and leaning.digits_only().gap == 0
    traj = Trajectory("AB", [leaning, CriterionScores("d", "", 4, 2, 3.5, 3.45)])
    # c's expected gap (0.3) outranks d's (0.05) though d's digits differ by 2.
    assert [c.criterion for c in traj.ranked()] == ["c", "d"] and traj.preference() == "A"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((0.0, 0.0, 0.0, 0.0, 0.0), 3.0),  # uniform: the middle
        ((5.0, 5.0, 5.0, 5.0, 5.0), 3.0),  # raw logits: a constant cancels
        ((math.log(0.5), math.log(0.5), -math.inf, -math.inf, -math.inf), 1.5),
        ((math.log(0.1), -math.inf, -math.inf, -math.inf, math.log(0.3)), 4.0),  # (0.1 + 1.5) / 0.4
    ],
)
def test_the_expected_score_by_hand(values: tuple[float, ...], expected: float) -> None:
    assert expected_score(values) == pytest.approx(expected)


def test_an_unreadable_digit_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="5 digit values"):
        expected_score((0.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        expected_score((-math.inf,) * 5)


def test_identical_responses_are_a_tie_without_generation(client: TestClient) -> None:
    gen = generator(client)
    before = len(gen.calls)
    body = client.post(
        "/compare", json={"prompt": "q", "responses": ["same", "same"], "criteria": ["x y z"]}
    ).json()
    pair = body["pairs"][0]
    assert pair["identical"] and pair["preference"] == "tie" and pair["trajectories"] == []
    assert len(gen.calls) == before  # only the scorer ran (the m = 0 rewards)


def test_four_responses_give_six_pairs_and_a_ranking(client: TestClient) -> None:
    body = client.post(
        "/compare",
        json={"prompt": "q", "responses": ["a", "bb", "a", "dddd"], "criteria": ["accuracy"]},
    ).json()
    assert [(p["a"], p["b"]) for p in body["pairs"]] == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    assert body["pairs"][1]["identical"]  # responses 0 and 2 are the same
    assert sorted(body["ranking"]) == [0, 1, 2, 3]
    for p in body["pairs"]:
        for traj in p["trajectories"]:
            assert [c["criterion"] for c in traj["criteria"]] == ["accuracy"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"responses": ["only one"]}, "responses"),
        ({"responses": ["a", "b", "c", "d", "e"]}, "responses"),
        ({"responses": ["a", " "]}, "responses"),
        ({"samples": 5}, "samples"),
        ({"samples": 0}, "samples"),
        ({"num_criteria": 9}, "num_criteria"),
        ({"criteria": []}, "criteria"),
        ({"criteria": ["x" * 61]}, "criteria"),
        ({"max_rubric_tokens": 9999}, "max_rubric_tokens"),
        ({"temperature": 50}, "temperature"),
        ({"prompt": ""}, "prompt"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_compare_input_names_the_field(
    client: TestClient, change: dict[str, Any], field: str
) -> None:
    r = client.post("/compare", json={**BODY, **change})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_compare_metrics_count_votes_ties_and_disagreements(client: TestClient) -> None:
    client.post("/compare", json={**BODY, "samples": 2})
    client.post("/compare", json={"prompt": "q", "responses": ["s", "s"]})
    text = client.get("/metrics").text
    assert 'critic_rm_compare_pairs_total{result="identical"} 1.0' in text
    votes = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("critic_rm_compare_votes_total{")
    ]
    assert sum(votes) == 4
    assert "critic_rm_compare_position_disagreements_total" in text


def test_the_client_and_the_trl_judge_read_the_gateways_answers(checkpoint_root: Path) -> None:
    app = create_app(make_settings(checkpoint_root), loader_for(checkpoint_root))
    with serve_app(app) as url:
        with RewardClient(url) as rm:
            rm.wait_ready(timeout_s=30, poll_s=0.05)
            out = rm.compare("q", ["a", "bb", "ccc"], samples=2, num_criteria=2)
            with pytest.raises(TypeError, match="'samples'"):
                rm.compare("q", ["a", "b"], sample=2)  # type: ignore[call-arg]
            with pytest.raises(ValueError, match="2 to 4"):
                rm.compare("q", ["a"])
        assert [(p.a, p.b) for p in out.pairs] == [(0, 1), (0, 2), (1, 2)]
        assert sorted(out.ranking or []) == [0, 1, 2] and len(out.rewards) == 3
        assert all(sum(p.votes.values()) == 4 for p in out.pairs)
        with make_trl_pairwise_judge(url, num_criteria=2) as judge:
            picks = judge.judge(["q", "q", "q"], [["a", "bb"], ["same", "same"], ["x", " "]])
            scores = judge.judge(["q"], [["a", "bb"]], return_scores=True)
        # Judged (0 or 1); identical: a tie broken by the reward head (0 or 1); empty: -1.
        assert picks[0] in (0, 1) and picks[1] in (0, 1) and picks[2] == -1
        assert 0.0 <= scores[0] <= 1.0
        with pytest.raises(TypeError, match="'num_criteria'"):
            make_trl_pairwise_judge(url, num_criterion=2)


def _judge_favouring(text: str, unread: str = "") -> Any:
    """A scripted judge: mass on 5 for the response `text`, on 1 for any other, wherever the
    scored response is shown; no digit values for the criterion `unread`."""

    async def generate(chats: list[list[Any]], spec: SamplingSpec) -> list[list[Critique]]:
        out = []
        for chat in chats:
            user = chat[-1]["content"]
            which = user.rsplit("Score Response ", 1)[1][0]
            shown = user.split(f"[Response {which}]\n", 1)[1].split("\n\n", 1)[0]
            values = (0.0, 0.0, 0.0, 0.0, 2.0) if shown == text else (2.0, 0.0, 0.0, 0.0, 0.0)
            read = spec.read_ids and f"Criterion: {unread}\n" not in user
            out.append([Critique("3", 1, "stop", values if read else None)])
        return out

    return generate


def test_expected_scores_keep_the_pairs_orientation_in_both_orders() -> None:
    messages = [{"role": "user", "content": "What is 17 + 25?"}]
    texts = ["43", "42"]
    digits = (1, 2, 3, 4, 5)

    def run(gen: Any, ids: tuple[int, ...] | None) -> dict[tuple[int, int], list[Trajectory]]:
        criteria, rubrics = [["c", "d"]], [["r", "r"]]
        return asyncio.run(
            sample_scores(gen, messages, texts, [(0, 1)], criteria, rubrics, digit_ids=ids)
        )

    trajectories = run(_judge_favouring("42"), digits)[(0, 1)]
    assert sorted(t.order for t in trajectories) == ["AB", "BA"]
    for t in trajectories:
        for c in t.criteria:  # the pair's B is "42", whichever is shown first
            assert c.expected_a is not None and c.expected_b is not None
            assert c.expected_b > 4 > 2 > c.expected_a and c.score_a == c.score_b == 3
    verdict = judge_pair(trajectories)
    assert verdict.preference == "B" and not verdict.position_disagreement
    # Without the digits' values the decoded digits decide: all 3, a tie.
    assert judge_pair(run(_judge_favouring("42"), None)[(0, 1)]).preference == "tie"
    # A criterion without values makes its whole trajectory read by the digits.
    mixed = run(_judge_favouring("42", unread="d"), digits)[(0, 1)]
    assert all(c.expected_a is None for t in mixed for c in t.criteria)
