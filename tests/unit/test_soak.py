"""The soak's and the image check's own bookkeeping: which answers are stale, lost or a leak;
and the private deployment that the soak and the attack share."""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from loadtests import image_check, soak
from loadtests.attack import deploy
from service.checkpoint.bootstrap import bootstrap
from service.checkpoint.store import CheckpointRoot


def _run(**over: Any) -> soak.Run:
    args = soak.parse_args([])
    for k, v in over.items():
        setattr(args, k, v)
    return soak.Run(
        args,
        gateway=None,  # type: ignore[arg-type]
        redis=None,  # type: ignore[arg-type]
        key="k",
        admin_key="a",
        versions=("v1", "v2"),
        current="v1",
        initial="v1",
    )


def test_a_version_is_stale_only_outside_the_reload_call_that_changed_it() -> None:
    run = _run()
    run.reloads = [(100.0, 110.0, "v1", "v2"), (300.0, 305.0, "v2", "v1")]
    cases = {
        (50.0, "v1"): False,
        (50.0, "v2"): True,  # v2 was not loaded yet
        (105.0, "v1"): False,  # during the call either version is current
        (105.0, "v2"): False,
        (200.0, "v1"): True,  # after the swap: the old version is stale
        (200.0, "v2"): False,
        (400.0, "v1"): False,
        (400.0, "v2"): True,
    }
    for (start, version), want in cases.items():
        assert soak.stale(run, soak.Req("single", "steady", start, version=version)) is want


def test_a_failed_reload_keeps_the_old_version_current() -> None:
    run = _run()
    run.reloads = [(100.0, 110.0, "v1", "v1")]
    assert not soak.stale(run, soak.Req("single", "steady", 200.0, version="v1"))
    assert soak.stale(run, soak.Req("single", "steady", 200.0, version="v2"))


def test_growth_while_serving_is_read_between_reloads_in_mib_per_hour() -> None:
    run = _run()
    run.reloads = [(1200.0, 1210.0, "v1", "v2")]
    # Flat, then 1 MiB per 36 s (100 MiB/h) from 600 s on, and a 50 MiB step at the reload.
    run.samples = [
        {"t": float(t), "rss": 1000.0 + max(t - 600, 0) / 36.0 + (50.0 if t >= 1200 else 0.0)}
        for t in range(0, 1800, 10)
    ]
    assert soak.serving_slope_mib_per_h(run, "rss") == 100.0
    run.samples = run.samples[:1]
    assert soak.serving_slope_mib_per_h(run, "rss") is None
    assert soak.reload_steps([900.0, 960.0, 975.5]) == [60.0, 15.5]


def test_the_summary_counts_5xx_lost_and_stale_only_outside_the_faults() -> None:
    run = _run()
    run.reloads = [(100.0, 110.0, "v1", "v2")]
    run.samples = [{"t": 1.0, "queue_depth": 0.0, "gateway_rss_mib": 1.0, "total_rss_mib": 2.0}]
    run.reqs = [
        soak.Req("single", "steady", 10.0, 1.0, 200, version="v1"),
        soak.Req("batch", "steady", 200.0, 9.0, 200, version="v1"),  # stale
        soak.Req("single", "redis_down", 50.0, 1.0, 503),  # a 5xx outside a fault's requests
        soak.Req("single", "steady", 60.0, 1.0, None, error="ReadError"),  # lost
        soak.Req("overload", "overload", 70.0, 0.1, 429, fault=True),
        soak.Req("disconnect", "disconnect", 80.0, 1.0, None, fault=True),  # hung up on purpose
    ]
    s = soak.summarise(run, {})
    assert (s["server_errors_5xx"], s["lost"], s["stale_version"]) == (1, 1, 1)
    assert s["fault_requests"] == {"overload:429": 1, "disconnect:None": 1}
    assert not s["passed"] and len(s["problems"]) == 3
    run.reqs = run.reqs[:1] + run.reqs[4:]
    assert soak.summarise(run, {})["passed"]


def test_the_leak_check_reads_only_samples_with_one_version_loaded() -> None:
    """A reload holds two versions until the old one retires: its bump is no leak, but what
    stays after it is, when it does not shrink; a zombie engine holds nothing."""
    run = _run(max_leak_mib_h=100.0, max_reload_step_mib=32.0)
    run.reloads = [(t, t + 80.0, "v1", "v2") for t in (600.0, 1200.0, 1800.0, 2400.0, 3000.0)]

    def loading(t: float) -> bool:
        return any(0 <= t - r < 100 for r, *_ in run.reloads)

    run.samples = [
        {
            "t": float(t),
            "queue_depth": 0.0,
            # The new version's tokenizers come first, its engine cores 20 s later.
            "engine_procs": 4 if any(20 <= t - r < 100 for r, *_ in run.reloads) else 2,
            "gateway_rss_mib": 900.0 + (120.0 if loading(t) else 0.0),
            "total_rss_mib": 7000.0,
        }
        for t in range(0, 3600, 10)
    ]
    s = soak.summarise(run, {})
    assert s["gateway_rss_slope_mib_per_h"] == 0.0 and s["passed"], s["problems"]
    assert s["gateway_rss_settled_mib"] == [900.0] * 6
    assert s["gateway_rss_reload_steps_mib"] == [0.0] * 5
    # Fragmentation: each reload leaves half of what the one before it did.
    for x in run.samples:
        x["gateway_rss_mib"] += sum(
            64.0 / 2**i for i, (r, *_) in enumerate(run.reloads) if x["t"] >= r + 100
        )
    s = soak.summarise(run, {})
    assert s["gateway_rss_reload_steps_mib"] == [64.0, 32.0, 16.0, 8.0, 4.0] and s["passed"]
    # A leak: each reload keeps 60 MiB more.
    for x in run.samples:
        x["gateway_rss_mib"] += 60.0 * sum(x["t"] >= r + 100 for r, *_ in run.reloads)
    s = soak.summarise(run, {})
    assert s["gateway_rss_reload_steps_mib"][-1] == 64.0
    assert not s["passed"] and any("the last reload left" in p for p in s["problems"])


def test_the_items_follow_the_locustfile_groups_of_eight_per_prompt() -> None:
    items = soak.make_items(random.Random(0), 20)
    assert len(items) == 20
    assert len({it["prompt"] for it in items[:8]}) == 1
    assert len({it["response"] for it in items}) == 20


def test_the_image_check_passes_only_a_start_that_served_and_refused_as_it_should() -> None:
    good = {
        "ready": True,
        "healthcheck_exit": 0,
        "score_status": 200,
        "score_status_without_key": 401,
        "score_status_wrong_key": 403,
        "metrics_status": 200,
        "metrics_missing": [],
        "exit_code": 0,
    }
    assert image_check.passed(good)
    for key, bad in [
        ("ready", False),
        ("score_status_without_key", 200),
        ("metrics_missing", ["x"]),
        ("exit_code", 143),
        ("healthcheck_exit", 1),
        ("healthcheck_exit", None),  # the image's HEALTHCHECK never ran
    ]:
        assert not image_check.passed({**good, key: bad}), key
    text = image_check.markdown(
        {
            "image": "i",
            "size_gib": 1.5,
            "user": "10001:10001",
            "entrypoint": ["tini"],
            "cmd": ["serve"],
            "machine": "cpu",
            "date": "d",
            "starts": [{**good, "passed": True}],
        }
    )
    assert "| 1 |" in text and "True" in text


def test_the_soak_defaults_exceed_twenty_minutes() -> None:
    args: argparse.Namespace = soak.parse_args([])
    assert args.minutes >= 20 and args.m == 4


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_deployment_is_private_and_undone_with_its_stack(
    tiny_llama: Path, tmp_path: Path
) -> None:
    source = tmp_path / "root"
    version = bootstrap(source, tiny_llama, seed=0).manifest.model_version
    with contextlib.ExitStack() as stack:
        d = deploy(source, stack, tmp_path / "logs", "crm-test", {"CRM_MAX_QUEUE_ITEMS": "7"})
        assert d.base.manifest.model_version == version
        assert d.root.root != source and CheckpointRoot(d.root.root).current_version() == version
        assert d.keys_file.read_text().split() == [d.key] and d.key != d.admin_key
        env = d.gateway.env
        assert env["CRM_MAX_QUEUE_ITEMS"] == "7" and env["CRM_CHECKPOINT_ROOT"] == str(d.root.root)
        assert env["CRM_API_KEYS_FILE"] == str(d.keys_file)
        assert redis.Redis.from_url(d.redis_server.url).ping()
        assert d.gateway.proc is None  # started by the caller, after its own set-up
    assert not d.root.root.exists() and not d.keys_file.exists()
    assert d.redis_server.proc is not None and d.redis_server.proc.poll() is not None
