"""/compare on the real engines over HTTP: criteria decoded under their constraint, rubrics,
1-5 scores in both orders, the verdict rules, identical responses, bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.engine

BODY = {
    "prompt": [{"role": "user", "content": "What is 17 + 25? Answer with the number."}],
    "responses": ["17 + 25 = 42", "17 + 25 = 43"],
    "num_criteria": 2,
    "max_rubric_tokens": 16,
}


def test_a_pair_is_judged_through_criteria_rubrics_and_scores(http: httpx.Client) -> None:
    r = http.post("/compare", json=BODY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == http.get("/info").json()["model_version"]
    (pair,) = body["pairs"]
    assert sorted(t["order"] for t in pair["trajectories"]) == ["AB", "BA"]
    for traj in pair["trajectories"]:
        # Two asked for; a sampled list that repeats a criterion keeps it once (and warns).
        assert 1 <= len(traj["criteria"]) <= 2
        for c in traj["criteria"]:
            # The constrained decoders give a criterion of letters and a digit score.
            assert 3 <= len(c["criterion"]) <= 60 and c["rubric"].strip()
            assert set(c["scores"]) == {"A", "B"} and all(1 <= s <= 5 for s in c["scores"].values())
            # Read as expected digits from the engine's digit values: a score within 1-5.
            expected = c["expected"]
            assert set(expected) == {"A", "B"} and all(1 <= s <= 5 for s in expected.values())
            assert c["gap"] == pytest.approx(expected["A"] - expected["B"])
    votes = pair["votes"]
    assert sum(votes.values()) == 2
    if pair["position_disagreement"]:
        assert pair["preference"] == "tie" and pair["p_a"] == 0.5
    else:
        assert pair["preference"] == pair["by_order"]["AB"] == pair["by_order"]["BA"]
    assert 0 < pair["bt_p_a"] < 1 and len(body["rewards"]) == 2
    assert body["usage"]["judge_tokens"] > 0


def test_identical_responses_are_a_tie_and_three_give_a_ranking(http: httpx.Client) -> None:
    body = http.post(
        "/compare",
        json={**BODY, "responses": ["42", "42", "43"], "criteria": ["correct sum"]},
    ).json()
    first = body["pairs"][0]
    assert first["identical"] and first["preference"] == "tie" and first["trajectories"] == []
    assert sorted(body["ranking"]) == [0, 1, 2]
    for p in body["pairs"][1:]:
        assert [c["criterion"] for t in p["trajectories"] for c in t["criteria"]] == [
            "correct sum",
            "correct sum",
        ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"responses": ["x"]}, "responses"),
        ({"responses": ["a", "b", "c", "d", "e"]}, "responses"),
        ({"responses": ["a", ""]}, "responses"),
        ({"samples": 99}, "samples"),
        ({"criteria": ["x" * 100]}, "criteria"),
    ],
)
def test_bad_compare_input_is_refused_naming_the_field(
    http: httpx.Client, change: dict[str, Any], field: str
) -> None:
    r = http.post("/compare", json={**BODY, **change})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
