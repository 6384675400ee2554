"""RLHF-rollout-shaped load for critic-rm's POST /score.

Two kinds of client, as a PPO/GRPO trainer produces them:

* RolloutUser: an OpenRLHF-style remote reward model call. Each rollout worker sends one
  (prompt, response) sample per request, back to back, and there are many workers at once:
  high concurrency, single-item requests that the gateway's micro-batcher must coalesce.
* BatchUser: a trainer that scores a whole rollout batch in one call, 64-512 items per request
  (several responses per prompt, as GRPO samples them, so prompts share prefixes).

Headless runs go through loadtests/run.py (throughput, p50/p95/p99, error counts, JSON). The file
also works with plain locust, e.g. `locust -f loadtests/locustfile.py --host http://127.0.0.1:8000`.

Knobs (environment variables; run.py sets them from its flags):
  CRM_LOAD_NUM_CRITIQUES       m, critiques per item (default: the server's default)
  CRM_LOAD_MAX_CRITIQUE_TOKENS critique length cap (default: the server's default)
  CRM_LOAD_BATCH_MIN/MAX       items per BatchUser request (default 64 / 512)
  CRM_LOAD_GROUP_SIZE          responses per prompt in a batch (default 8)
  CRM_LOAD_TIMEOUT_S           per-request timeout (default 300)
  CRM_LOAD_SEED                RNG seed (default: random)
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, task

# Plain `locust -f loadtests/locustfile.py` puts only this folder on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtests import rollouts

SCORE_PATH = "/score"
SINGLE_NAME = "/score [1 item]"
BATCH_NAME = "/score [batch]"


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


NUM_CRITIQUES = _env_int("CRM_LOAD_NUM_CRITIQUES", None)
MAX_CRITIQUE_TOKENS = _env_int("CRM_LOAD_MAX_CRITIQUE_TOKENS", None)
BATCH_MIN = _env_int("CRM_LOAD_BATCH_MIN", 64) or 64
BATCH_MAX = _env_int("CRM_LOAD_BATCH_MAX", 512) or 512
GROUP_SIZE = max(_env_int("CRM_LOAD_GROUP_SIZE", 8) or 8, 1)
TIMEOUT_S = float(os.environ.get("CRM_LOAD_TIMEOUT_S", "300"))
_seed = _env_int("CRM_LOAD_SEED", None)
RNG = random.Random(_seed)


def make_body(items: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {"items": items}
    if NUM_CRITIQUES is not None:
        body["num_critiques"] = NUM_CRITIQUES
    if MAX_CRITIQUE_TOKENS is not None:
        body["max_critique_tokens"] = MAX_CRITIQUE_TOKENS
    return body


class _ScoreUser(FastHttpUser):
    abstract = True
    network_timeout = TIMEOUT_S
    connection_timeout = 10.0

    def score(self, items: list[dict[str, str]], name: str) -> None:
        """POST /score; a 200 must carry one result per item. The request event's context
        carries the item count (run.py reports items/s from it)."""
        with self.client.post(
            SCORE_PATH,
            json=make_body(items),
            name=name,
            context={"items": len(items)},
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                detail = (response.text or "")[:200]
                response.failure(f"HTTP {response.status_code}: {detail}")
                return
            try:
                results = response.json()["results"]
            except Exception as exc:  # malformed body: count it as a failure
                response.failure(f"bad response body: {type(exc).__name__}: {exc}")
                return
            if len(results) != len(items):
                response.failure(f"{len(results)} results for {len(items)} items")
                return
            response.success()


class RolloutUser(_ScoreUser):
    """One rollout worker of an OpenRLHF-style trainer: single-sample requests, back to back."""

    weight = 16
    wait_time = constant(0)

    @task
    def score_one(self) -> None:
        self.score(rollouts.make_items(RNG, 1, GROUP_SIZE), SINGLE_NAME)


class BatchUser(_ScoreUser):
    """A trainer scoring a whole rollout batch (64-512 items) in one request."""

    weight = 1
    wait_time = constant(0)

    @task
    def score_batch(self) -> None:
        n = RNG.randint(min(BATCH_MIN, BATCH_MAX), max(BATCH_MIN, BATCH_MAX))
        self.score(rollouts.make_items(RNG, n, GROUP_SIZE), BATCH_NAME)
