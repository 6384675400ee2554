"""POST /get_reward, OpenRLHF's remote reward-model protocol, on fake engines; the client below
behaves like OpenRLHF's: one sample per request, many at once, aiohttp, raise_for_status, 180 s."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.fakes import loader_for, wait_ready
from tests.unit.test_admission import live_fake  # noqa: F401 - fixture


@pytest.fixture()
def client(checkpoint_root: Path) -> Iterator[TestClient]:
    app = create_app(
        Settings(checkpoint_root=checkpoint_root, warmup=False, max_model_len=512),
        loader_for(checkpoint_root),
    )
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def render(c: TestClient, messages: list[dict[str, str]]) -> str:
    tok = c.app.state.service.runtime.formatter.tokenizer  # type: ignore[attr-defined]
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


CONVS = [
    ([{"role": "user", "content": "What is 17 * 3?"}], "17 * 3 = 51."),
    (
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Capital of Peru?"},
        ],
        "Lima",
    ),
]


def test_get_reward_equals_score_for_the_same_conversation(client: TestClient) -> None:
    prompts = [render(client, m) for m, _ in CONVS]
    queries = [p + r + "<|im_end|>" for p, (_, r) in zip(prompts, CONVS, strict=True)]
    with_prompts = client.post(
        "/get_reward", json={"query": queries, "prompts": prompts, "labels": ["", ""]}
    )
    assert with_prompts.status_code == 200, with_prompts.text
    body = with_prompts.json()
    assert body["rewards"] == body["scores"] and len(body["rewards"]) == 2
    assert len(body["extra_logs"]["critic_rm_reward_std"]) == 2
    without_prompts = client.post("/get_reward", json={"query": queries}).json()
    assert without_prompts["rewards"] == body["rewards"]
    direct = client.post(
        "/score",
        json={"items": [{"prompt": m, "response": r} for m, r in CONVS], "truncate_prompt": True},
    ).json()
    assert [x["reward"] for x in direct["results"]] == body["rewards"]
    assert all(x["cached"] for x in direct["results"]), "same conversation, same cache key"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": []}, "query"),
        ({"query": ["  "]}, "query"),
        ({"query": ["a", "b"], "prompts": ["a"]}, "prompts"),
        ({"query": ["no chat markup at all"]}, "query[0]"),
        (
            {"query": ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_end|>"]},
            "query[0]",
        ),
    ],
)
def test_bad_get_reward_requests_name_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    r = client.post("/get_reward", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


async def openrlhf_like_request(
    session: aiohttp.ClientSession, url: str, query: str, prompt: str
) -> list[float]:
    """What OpenRLHF's remote reward client does per sample."""
    async with session.post(
        url, json={"query": [query], "prompts": [prompt], "labels": [None]}
    ) as resp:
        resp.raise_for_status()
        data = await resp.json()
        rewards: list[float] = data["rewards"]
        return rewards


def test_openrlhf_style_client_many_single_sample_requests(live_fake: tuple[str, FastAPI]) -> None:  # noqa: F811
    url, app = live_fake
    tok = app.state.service.runtime.formatter.tokenizer
    samples = []
    for i in range(24):
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": f"Add {i} and {i}."}],
            tokenize=False,
            add_generation_prompt=True,
        )
        samples.append((prompt + f"{2 * i}<|im_end|>", prompt))

    async def run() -> list[list[float]]:
        timeout = aiohttp.ClientTimeout(total=180)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return await asyncio.gather(
                *(openrlhf_like_request(session, f"{url}/get_reward", q, p) for q, p in samples)
            )

    results = asyncio.run(run())
    assert all(len(r) == 1 for r in results)
    assert len({r[0] for r in results}) > 1
