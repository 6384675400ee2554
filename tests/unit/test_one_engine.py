"""The one-engine layout's own logic without an engine: the reserved token, the engine's
arguments, its dtype, and the setting as /info and the metrics report it (the engine itself is
tested over HTTP in tests/integration/test_one_engine_http.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.checkpoint.store import CheckpointVersion
from service.contract.formatting import PromptFormatter
from service.engines.config import EngineConfig
from service.engines.dtype import generator_dtype
from service.engines.factory import load_formatter
from service.engines.vllm_engines import VllmCritiqueGenerator, engine_args
from service.engines.vllm_plugin import ARCHITECTURE, TOKEN_KEY
from service.settings import Settings
from tests.fakes import loader_for, wait_ready
from tests.unit.test_gateway import make_settings


@pytest.fixture(scope="module")
def formatter(default_version: CheckpointVersion) -> PromptFormatter:
    return load_formatter(default_version, EngineConfig(max_model_len=512))


def test_the_reserved_token_is_a_special_token_no_prompt_uses(formatter: PromptFormatter) -> None:
    token = formatter.reward_logit_id()
    tok = formatter.tokenizer
    assert tok.convert_ids_to_tokens(token) == "<empty_output>"  # SmolLM2's highest spare one
    rendered = formatter.encode_item("What is 2+2?", "4", 16, 1)
    assert token not in rendered.critique_prompt
    assert token not in formatter.score_ids(rendered.score_prefix, "A critique.")
    assert token not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert token not in formatter.reward_ids


def test_a_tokenizer_without_a_spare_special_token_is_refused(
    formatter: PromptFormatter, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = {i: t for i, t in formatter.tokenizer.added_tokens_decoder.items() if i <= 2}
    monkeypatch.setattr(type(formatter.tokenizer), "added_tokens_decoder", property(lambda s: used))
    with pytest.raises(ValueError, match="CRM_ENGINE_LAYOUT=two"):
        formatter.reward_logit_id()


def test_the_one_engine_is_a_generate_engine_reading_raw_logits(tmp_path: Path) -> None:
    config = EngineConfig(engine_layout="one", max_model_len=512, scorer_dtype="float32")
    args = engine_args(tmp_path, config, pooling=False, reward_logit_id=16)
    assert args.runner == "generate" and args.logprobs_mode == "raw_logits"
    assert args.hf_overrides == {"architectures": [ARCHITECTURE], TOKEN_KEY: 16}
    # Room for the one token a scoring request samples after a full-length sequence.
    assert args.max_model_len == 513
    assert args.dtype == "float32"
    two = engine_args(tmp_path, EngineConfig(max_model_len=512), pooling=False)
    assert two.max_model_len == 512 and not two.hf_overrides


def test_one_engine_one_dtype() -> None:
    one = EngineConfig(engine_layout="one", generator_dtype="bfloat16", scorer_dtype="float32")
    assert generator_dtype(one) == "float32"
    assert generator_dtype(EngineConfig(generator_dtype="bfloat16")) == "bfloat16"


def test_the_auto_layout_is_the_fastest_measured_one_engine_where_rewards_stay_float32(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service.engines.dtype import resolve_layout

    avx2, bf16 = frozenset({"avx2"}), frozenset({"avx2", "avx512_bf16"})
    # CPU without native bf16: both engines would run float32, so one engine; fused where the
    # checkpoint is format 2, one where it is format 1.
    assert resolve_layout("auto", "auto", "float32", "vllm", True, avx2) == ("fused", "one")
    # CPU with native bf16: fused (float32) for format 2, two (bf16 critiques) for format 1.
    assert resolve_layout("auto", "auto", "float32", "vllm", True, bf16) == ("fused", "two")
    # GPU with the default dtypes: two; both dtypes set alike (the 70B example): one engine.
    assert resolve_layout("auto", "auto", "float32", "vllm", False, avx2) == ("two", "one")
    assert resolve_layout("auto", "bfloat16", "bfloat16", "vllm", False, avx2) == ("fused", "one")
    # The torch reference scorer has no one-engine form; an explicit layout is kept.
    assert resolve_layout("auto", "auto", "float32", "torch", True, avx2)[0] == "two"
    assert resolve_layout("two", "auto", "float32", "vllm", True, avx2)[0] == "two"
    assert resolve_layout("one", "auto", "float32", "vllm", True, bf16)[0] == "one"
    assert resolve_layout("fused", "auto", "float32", "vllm", True, bf16) == ("fused", "one")

    monkeypatch.setattr("service.settings.cpu_flags", lambda: avx2)
    monkeypatch.setattr("service.settings.cuda_available", lambda: False)
    settings = Settings(checkpoint_root=tmp_path)
    assert settings.engine_layout == "auto"
    config = settings.engine_config()
    assert settings.layout() == "fused" and (config.engine_layout, config.fallback_layout) == (
        "fused",
        "one",
    )
    monkeypatch.setattr("service.settings.cpu_flags", lambda: bf16)
    assert Settings(checkpoint_root=tmp_path).engine_config().fallback_layout == "two"
    assert Settings(
        checkpoint_root=tmp_path, engine_layout="two"
    ).engine_config().engine_layout == ("two")


def test_a_format_1_checkpoint_runs_fused_as_the_fallback_in_its_dtypes(
    default_version: CheckpointVersion,
) -> None:
    from service.engines.factory import for_version, served_layout

    auto_bf16 = EngineConfig(
        engine_layout="fused", fallback_layout="two", generator_dtype="bfloat16"
    )
    served = for_version(default_version, auto_bf16)
    assert served.engine_layout == served_layout(default_version, auto_bf16) == "two"
    assert generator_dtype(served) == "bfloat16"  # two's critiques keep their own dtype
    assert generator_dtype(auto_bf16) == "float32"  # the one engine's: the scorer's
    assert for_version(default_version, EngineConfig(engine_layout="one")).engine_layout == "one"


def test_critique_requests_never_sample_the_reserved_token() -> None:
    seen: list[Any] = []

    class Engine:
        async def generate(self, prompt: Any, params: Any, request_id: str) -> Any:
            seen.append(params)
            yield SimpleNamespace(
                num_cached_tokens=0,
                outputs=[SimpleNamespace(text="ok", token_ids=[5], finish_reason="stop")],
            )

    import asyncio

    from service.engines.base import SamplingSpec

    spec = SamplingSpec(1, 0.8, 0.95, 8)
    asyncio.run(VllmCritiqueGenerator(Engine(), banned_token=16).generate([[1, 2]], [spec]))
    asyncio.run(VllmCritiqueGenerator(Engine()).generate([[1, 2]], [spec]))
    assert seen[0].logit_bias == {16: -100.0} and not seen[1].logit_bias


def test_info_and_the_model_metric_name_the_layout(checkpoint_root: Path) -> None:
    app = create_app(
        make_settings(checkpoint_root, engine_layout="one"), loader_for(checkpoint_root)
    )
    with TestClient(app) as c:
        wait_ready(c)
        assert c.get("/info").json()["engines"]["layout"] == "one"
        assert 'engine_layout="one"' in c.get("/metrics").text


class _Engine:
    def __init__(self) -> None:
        self.shut = 0

    def shutdown(self) -> None:
        self.shut += 1


def test_alone_the_generator_or_the_scorer_owns_the_one_engine(
    default_version: CheckpointVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's sampling stage (generator alone) and an m = 0 evaluation (scorer alone) on
    layout one start the one engine, and shutting down what they got stops it exactly once."""
    from service.engines import factory, vllm_engines

    started: list[tuple[Path, int]] = []

    def fake_load_one(model: Path, config: EngineConfig, token: int, fused: Any = None) -> Any:
        started.append((model, token))
        engine = _Engine()
        return (
            vllm_engines.VllmCritiqueGenerator(engine, banned_token=token),
            vllm_engines.VllmLogitScorer(engine, token),
        )

    monkeypatch.setattr(vllm_engines, "load_one_engine", fake_load_one)
    one = EngineConfig(engine_layout="one")
    token = load_formatter(default_version, one).reward_logit_id()

    generator = factory.load_generator(default_version, one)
    assert isinstance(generator, vllm_engines.VllmCritiqueGenerator)
    assert generator.logit_bias == {token: -100.0}
    generator.shutdown()
    assert generator.engine.shut == 1

    scorer = factory.load_scorer(default_version, one)
    assert isinstance(scorer, vllm_engines.VllmLogitScorer) and scorer.token == token
    scorer.shutdown()
    assert scorer.engine.shut == 1
    # Both over the scorer view: the weights the reward head belongs to.
    assert started == [(default_version.scorer_path, token)] * 2

    with pytest.raises(ValueError, match="scorer backend vllm"):
        factory.load_scorer(
            default_version, EngineConfig(engine_layout="one", scorer_backend="torch")
        )


def test_the_trainer_samples_on_the_layout_its_recipe_names(tmp_path: Path) -> None:
    from trainer.config import load_config
    from trainer.pipeline import digests
    from trainer.run import Run, engine_config

    sampled = set()
    for layout in ("two", "one"):
        cfg = load_config(None, [f"out_dir={tmp_path / layout}", f"engine.layout={layout}"])
        assert engine_config(Run(cfg, digests(cfg))).engine_layout == layout
        sampled.add(digests(cfg)["sample"])
    assert len(sampled) == 2  # a run resumed on the other layout samples again
    with pytest.raises(ValueError, match="layout"):
        load_config(None, ["engine.layout=three"])


def test_a_backbone_the_one_engine_cannot_run_is_refused_before_any_engine_starts(
    tmp_path: Path,
) -> None:
    from service.engines.vllm_plugin import check_backbone

    for arch in ("LlamaForCausalLM", "MistralForCausalLM"):
        (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
        check_backbone(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    with pytest.raises(
        ValueError, match="Gemma3ForCausalLM: serve this checkpoint on layout 'two'"
    ):
        check_backbone(tmp_path)
