"""The benchmark's own arithmetic: percentiles, ratios, Prometheus counter deltas, the workload."""

from __future__ import annotations

import math

import pytest

from loadtests.bench.measure import Meter, PathRun, percentile
from loadtests.bench.procs import delta
from loadtests.bench.report import ratio_table, ratios, table
from loadtests.bench.workload import make_pairs
from loadtests.bench_paths import m0_check
from service.checkpoint.store import CheckpointVersion


def run(path: str, pairs: int, wall: float, rewards: list[float] | None = None) -> PathRun:
    return PathRun(
        path=path,
        label=path,
        pairs=pairs,
        wall_s=wall,
        cpu_s=2 * wall,
        latencies_s=[1.0, 2.0, 3.0, 10.0],
        prompt_tokens=pairs * 300,
        computed_tokens=pairs * 100,
        rewards=rewards or [0.0] * pairs,
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_ratios_are_row_over_column() -> None:
    runs = [run("a", 128, 100.0), run("d", 128, 80.0)]
    r = ratios(runs)
    assert r["a"]["d"] == pytest.approx(0.8)
    assert r["d"]["a"] == pytest.approx(1.25)
    assert r["a"]["a"] == 1.0
    assert "| a | 1.00 | 0.80 |" in ratio_table(runs)


def test_summary_and_table_report_per_pair_figures() -> None:
    r = run("a", 128, 64.0)
    s = r.summary()
    assert s["pairs_per_s"] == 2.0
    assert s["cpu_s_per_pair"] == 1.0
    assert s["prompt_tokens_per_pair"] == 300.0 and s["computed_tokens_per_pair"] == 100.0
    assert s["p50_s"] == 2.0 and s["p99_s"] == 10.0
    assert "| a | a | 128 | 2.000 | 2.00 | 10.00 | 1.00 | 300 | 100 |" in table([r])


def test_m0_check_compares_with_the_first_path() -> None:
    runs = [run("x", 2, 1.0, [1.0, 2.0]), run("y", 2, 1.0, [1.0, 2.5])]
    assert m0_check(runs) == {"x": 0.0, "y": 0.5}


def test_counter_delta_treats_missing_as_zero() -> None:
    assert delta({"a": 5.0}, {"a": 2.0}, "a") == 3.0
    assert delta({"a": 5.0}, {}, "a") == 5.0
    assert delta({}, {}, "b") == 0.0


def test_meter_counts_wall_and_cpu_time() -> None:
    with Meter() as m:
        sum(i * i for i in range(200_000))
    assert m.wall_s > 0 and m.cpu_s >= 0


def test_workload_pairs_are_distinct_and_about_200_tokens(
    default_version: CheckpointVersion,
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_version.generator_path)
    pairs = make_pairs(16)
    assert len({p.prompt for p in pairs}) == 16
    lengths = [len(tok(p.prompt + " " + p.response)["input_ids"]) for p in pairs]
    assert all(150 <= n <= 250 for n in lengths), lengths


def test_the_refine_curve_reads_best_and_latest_from_one_trajectory() -> None:
    from loadtests.bench_refine import best_after, latest_after, wilson

    def scored(text: str, reward: float) -> dict[str, object]:
        return {"response": text, "reward": reward}

    body = {
        "original": scored("y0", 1.0),
        "rounds": [
            {"candidates": [scored("y1", 0.5)]},
            {"candidates": [scored("y2", 2.0), scored("y2b", 3.0)]},
            {"candidates": []},
            {"candidates": [scored("y4", 2.5)]},
        ],
    }
    assert [best_after(body, k)["response"] for k in (0, 1, 2, 3, 4)] == [
        "y0",
        "y0",
        "y2b",
        "y2b",
        "y2b",
    ]
    # The latest revision: the first candidate of round k; a round without one keeps the last.
    assert [latest_after(body, k)["response"] for k in (0, 1, 2, 3, 4)] == [
        "y0",
        "y1",
        "y2",
        "y2",
        "y4",
    ]
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi and wilson(0, 10)[0] == 0.0


def test_the_dtype_bench_counts_drift_accuracy_and_order_flips() -> None:
    """Two pairs, m = 2 critiques for the first: hand-worked drift, accuracy and flips."""
    from argparse import Namespace

    from loadtests.bench_dtype import summarise

    ref = {"plain": [2.0, 1.0, 1.0, 1.5], "with_z": [3.0, 3.0, 1.0, 1.0]}
    # bf16-like: pair 2 at m = 0 now ranks chosen first; the critique rewards drift by 0.5.
    low = {"plain": [2.0, 1.0, 1.6, 1.5], "with_z": [3.0, 2.5, 1.0, 1.5]}
    raw = {
        "critique_pairs": 1,
        "runs": [{"dtype": "float32"}, {"dtype": "bfloat16"}],
        "float32": ref,
        "bfloat16": low,
        "reference": ref,
    }
    out = summarise(Namespace(m=2), raw)
    assert (
        out["reference_accuracy_m0"]["correct"] == 1 and out["reference_accuracy_m0"]["pairs"] == 2
    )
    assert out["reference_median_abs_margin_m0"] == pytest.approx(0.75)
    f32, bf16 = out["rows"]
    assert f32["drift_m0"]["max"] == 0 and f32["order_flips_vs_reference_m0"] == 0
    assert bf16["drift_m0"]["max"] == pytest.approx(0.6)
    assert bf16["drift_m0"]["mean"] == pytest.approx(0.15)
    assert bf16["drift_critique"]["max"] == pytest.approx(0.5)
    assert bf16["accuracy_m0"]["correct"] == 2 and bf16["order_flips_vs_reference_m0"] == 1
    # m = 2: chosen 3.0 vs rejected 1.0 (reference), 2.75 vs 1.25 (bf16): same order.
    assert bf16["accuracy_m2"]["correct"] == 1 and bf16["order_flips_vs_reference_m2"] == 0
