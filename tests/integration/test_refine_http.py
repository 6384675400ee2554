"""/refine on the real engines over HTTP: trajectory shapes, the stop rules, one model version,
bad input, and a real external policy (a `vllm serve` of the checkpoint's generator view)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.bench.path_diy import serve_cmd
from loadtests.bench.procs import server_process
from service.checkpoint.store import CheckpointVersion
from service.engines.dtype import generator_dtype
from service.engines.vllm_engines import configure_cpu_env
from service.settings import Settings
from tests.integration.conftest import MAX_MODEL_LEN, policy_base_url

pytestmark = pytest.mark.engine

PAIR = {
    "prompt": [{"role": "user", "content": "What is 17 + 25? Answer with the number."}],
    "response": "17 + 25 = 43",
}
# Short critiques and revisions: the loop's logic, not its quality, is under test (CI time).
TOKENS = 16
SMALL = {"num_critiques": 2, "max_critique_tokens": TOKENS, "max_revision_tokens": TOKENS}


def _scored(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [body["original"]] + [c for r in body["rounds"] for c in r["candidates"]]


def _check_scored(s: dict[str, Any], m: int) -> None:
    assert len(s["critique_rewards"]) == m and len(s["critiques"]) == m
    assert s["reward"] == pytest.approx(sum(s["critique_rewards"]) / m)
    for c in s["critiques"]:
        # Every critique closes with a verdict decoded under the constraint.
        assert c["verdict"] in ("Correct", "Incorrect"), c
        assert c["text"].endswith(f"Overall judgment: {c['verdict']}")


def test_a_refine_trajectory_on_the_real_engines(http: httpx.Client) -> None:
    r = http.post("/refine", json={**PAIR, **SMALL, "rounds": 2, "candidates": 2, "stop": "never"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == http.get("/info").json()["model_version"]
    assert body["stop_reason"] in ("rounds", "no_revision")
    for s in _scored(body):
        _check_scored(s, 2)
    for r_ in body["rounds"]:
        assert 1 <= len(r_["candidates"]) <= 2
        assert r_["critique"]["text"] in [c["text"] for s in _scored(body) for c in s["critiques"]]
    best = max(_scored(body), key=lambda s: s["reward"])
    assert body["best"]["reward"] == pytest.approx(best["reward"])
    assert 0 < body["usage"]["revision_tokens"] <= 2 * 2 * TOKENS
    assert body["usage"]["critique_tokens"] > 0


@pytest.mark.parametrize("stop", ["verdict", "no_improvement"])
def test_the_stop_rule_agrees_with_the_trajectory(http: httpx.Client, stop: str) -> None:
    body = http.post("/refine", json={**PAIR, **SMALL, "rounds": 2, "stop": stop}).json()
    rounds, reason = body["rounds"], body["stop_reason"]
    # The best response's own critiques, as scored when it was found.
    best = next(
        s
        for s in _scored(body)
        if s["response"] == body["best"]["response"]
        and s["reward"] == pytest.approx(body["best"]["reward"])
    )
    correct = sum(c["verdict"] == "Correct" for c in best["critiques"]) * 2 > len(best["critiques"])
    if stop == "verdict":
        assert reason in ("verdict", "rounds", "no_revision")
        if reason == "verdict":
            assert correct
        elif reason == "rounds":
            assert len(rounds) == 2
    else:
        assert reason in ("no_improvement", "rounds", "no_revision")
        assert all(r["improved"] for r in rounds[:-1])
        if reason == "no_improvement":
            assert not rounds[-1]["improved"]


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"rounds": 99}, 422, "rounds"),
        ({"candidates": 99}, 422, "candidates"),
        ({"response": ""}, 422, "response"),
        ({"num_critiques": 0}, 422, "num_critiques"),
        ({"policy": {"url": "http://169.254.169.254/v1", "model": "m"}}, 403, "policy.url"),
        ({"policy": {"url": "file:///etc/passwd", "model": "m"}}, 422, "policy.url"),
    ],
)
def test_bad_refine_input_is_refused_naming_the_field(
    http: httpx.Client, change: dict[str, Any], status: int, field: str
) -> None:
    r = http.post("/refine", json={**PAIR, **SMALL, **change})
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field


@pytest.fixture(scope="module")
def external_policy(
    served_version: CheckpointVersion, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`vllm serve` (vLLM's OpenAI-compatible server) of the generator view, on the port the
    shared gateway allow-lists."""
    base = policy_base_url()
    port = int(base.rsplit(":", 1)[1].split("/")[0])
    s = Settings(max_model_len=MAX_MODEL_LEN, kv_cache_gib=0.5)
    configure_cpu_env(s.engine_config())
    cmd = serve_cmd(
        served_version.generator_path, "policy", port, generator_dtype(s.engine_config()), s
    )
    assert cmd[0] == sys.executable
    log = Path(tmp_path_factory.mktemp("policy")) / "vllm-serve.log"
    with server_process(cmd, base.removesuffix("/v1") + "/v1/models", log):
        yield base


def test_a_real_external_policy_writes_the_revisions(
    http: httpx.Client, external_policy: str
) -> None:
    policy = {"url": external_policy, "model": "policy"}
    r = http.post("/refine", json={**PAIR, **SMALL, "rounds": 1, "stop": "never", "policy": policy})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["rounds"]) == 1
    for c in body["rounds"][0]["candidates"]:
        _check_scored(c, 2)
        assert c["response"].strip()
    # The server's completion tokens, at most max_revision_tokens per revision.
    assert 0 < body["usage"]["revision_tokens"] <= TOKENS
    # A model the policy does not serve: its 404 is the policy's failure, a 502.
    wrong = {"url": external_policy, "model": "no-such-model"}
    r = http.post("/refine", json={**PAIR, **SMALL, "rounds": 1, "stop": "never", "policy": wrong})
    assert r.status_code == 502 and r.json()["error"]["field"] == "policy", r.text
