"""Prometheus metrics, all named critic_rm_*, with explicit buckets, on one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Geometric buckets: 1 ms .. ~262 s for latencies, powers of two for sizes.
SECONDS = tuple(0.001 * 2**i for i in range(19))
SIZES = tuple(float(2**i) for i in range(13))
REWARDS = tuple(float(x) / 2 for x in range(-20, 21))
# critic_rm_request_failures_total's reasons, exported at 0 from the start.
FAILURE_REASONS = (
    "body_timeout",
    "body_too_large",
    "client_disconnected",
    "deadline",
    "engine_error",
    "queue_full",
)


class Metrics:
    """Every metric the service exports; created per app so tests can build several apps."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_start_time_seconds (restarts), process_resident_memory_bytes (leaks), CPU.
        ProcessCollector(registry=r)
        self.request_seconds = Histogram(
            "critic_rm_request_duration_seconds",
            "HTTP request latency by route and status code.",
            ["route", "status"],
            buckets=SECONDS,
            registry=r,
        )
        self.requests = Counter(
            "critic_rm_requests",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.request_failures = Counter(
            "critic_rm_request_failures",
            "Requests refused or failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.items = Counter(
            "critic_rm_items",
            "Items scored, by whether they came from the cache.",
            ["cached"],
            registry=r,
        )
        self.batch_size = Histogram(
            "critic_rm_batch_size", "Items per engine batch.", buckets=SIZES, registry=r
        )
        self.batch_sequences = Histogram(
            "critic_rm_batch_sequences",
            "Sequences sent to the scorer per batch (items x max(m, 1)).",
            buckets=SIZES,
            registry=r,
        )
        self.queue_depth = Gauge(
            "critic_rm_queue_depth", "Items waiting for the micro-batcher.", registry=r
        )
        self.queue_limit = Gauge(
            "critic_rm_queue_limit",
            "Items allowed to wait for the micro-batcher (CRM_MAX_QUEUE_ITEMS); beyond it, 429.",
            registry=r,
        )
        self.abandoned_items = Counter(
            "critic_rm_abandoned_items",
            "Items of running batches cancelled because every caller had gone.",
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "critic_rm_queue_wait_seconds",
            "Time an item waits before its batch starts.",
            buckets=SECONDS,
            registry=r,
        )
        self.generate_seconds = Histogram(
            "critic_rm_generate_seconds",
            "Critique generation time per batch.",
            buckets=SECONDS,
            registry=r,
        )
        self.score_seconds = Histogram(
            "critic_rm_score_seconds", "Reward scoring time per batch.", buckets=SECONDS, registry=r
        )
        self.stage_seconds = Histogram(
            "critic_rm_stage_seconds",
            "Host-side stages of a request around the engines: tokenize (per request), "
            "score_inputs (building the scorer's sequences, per batch).",
            ["stage"],
            buckets=SECONDS,
            registry=r,
        )
        self.critiques = Counter("critic_rm_critiques", "Critiques generated.", registry=r)
        self.critique_tokens = Counter(
            "critic_rm_critique_tokens", "Critique tokens generated.", registry=r
        )
        self.prompt_tokens = Counter(
            "critic_rm_prompt_tokens",
            "Prompt tokens sent to an engine, and how many the prefix cache served.",
            ["engine", "kind"],
            registry=r,
        )
        self.cache_hits = Counter(
            "critic_rm_cache_hits", "Result cache hits.", ["backend"], registry=r
        )
        self.cache_misses = Counter(
            "critic_rm_cache_misses", "Result cache misses.", ["backend"], registry=r
        )
        self.cache_errors = Counter(
            "critic_rm_cache_errors",
            "Result cache operations that failed (fail-open): get, set, or decode (a stored "
            "entry that is not a valid result: a miss, then overwritten).",
            ["op"],
            registry=r,
        )
        self.reward = Histogram(
            "critic_rm_reward",
            "Rewards returned (mean over critiques).",
            buckets=REWARDS,
            registry=r,
        )
        self.model_info = Gauge(
            "critic_rm_model_info",
            "The model version being served (value 1).",
            ["model_version", "base_model", "reward_head_trained", "engine_layout"],
            registry=r,
        )
        self.reloads = Counter(
            "critic_rm_reloads",
            "Model loads and reloads, by result (ok, failed, unchanged).",
            ["result"],
            registry=r,
        )
        self.engine_errors = Counter(
            "critic_rm_engine_errors", "Engine batches that failed.", ["stage"], registry=r
        )
        # /refine: how far the critique-revision loop goes, and what it gains.
        self.refine_rounds = Counter(
            "critic_rm_refine_rounds", "Critique-revision rounds run by /refine.", registry=r
        )
        self.refine_stops = Counter(
            "critic_rm_refine_stops",
            "Finished /refine calls, by why they stopped (verdict, no_improvement, rounds, "
            "no_revision).",
            ["reason"],
            registry=r,
        )
        self.refine_gain = Histogram(
            "critic_rm_refine_reward_gain",
            "Reward of a /refine's best response minus the original's.",
            buckets=(-1.0, 0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
            registry=r,
        )
        # /compare: verdicts, the trajectories' votes, and pairs whose two orders disagreed.
        self.compare_pairs = Counter(
            "critic_rm_compare_pairs",
            "Pairs judged by /compare, by verdict (A, B, tie, identical: a tie without judging).",
            ["result"],
            registry=r,
        )
        self.compare_votes = Counter(
            "critic_rm_compare_votes",
            "Judgment trajectories of /compare, by the vote each cast (A, B, tie).",
            ["vote"],
            registry=r,
        )
        self.compare_position_disagreements = Counter(
            "critic_rm_compare_position_disagreements",
            "Pairs whose verdict flipped with the presentation order (answered as a tie).",
            registry=r,
        )
        self.policy_failures = Counter(
            "critic_rm_policy_failures",
            "External /refine policy calls that failed (timeout, refused, malformed answer).",
            registry=r,
        )

        # Alerts take increase() of these: a series must exist (at 0) before its first event,
        # or the first failure after a start would not count.
        for result in ("ok", "failed", "unchanged"):
            self.reloads.labels(result)
        for stage in ("generate", "score", "health"):
            self.engine_errors.labels(stage=stage)
        for op in ("get", "set", "decode"):
            self.cache_errors.labels(op=op)
        for reason in FAILURE_REASONS:
            self.request_failures.labels(reason)

    def set_model(self, model_version: str, base_model: str, trained: bool, layout: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model_version, base_model, str(trained).lower(), layout).set(1)
