"""The recipe (YAML + --set), stage digests and resume, refinement selection, evaluation maths."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from service.engines.base import Critique, EngineStats, SamplingSpec
from trainer import stages
from trainer.config import ConfigError, RefineConfig, SamplingConfig, load_config
from trainer.critiques import refine, sample_and_judge
from trainer.data.pairs import PreferencePair
from trainer.evaluate import accuracy, markdown, plot, rewards_at
from trainer.pipeline import STAGES, digests, run_pipeline
from trainer.run import StageError
from trainer.stages import PIPELINE, Stage

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- config
def test_default_recipes_validate() -> None:
    cfg = load_config(REPO / "trainer/configs/default.yaml")
    assert cfg.train.mode == "critic" and cfg.train.lora.enabled
    assert cfg.export.delta_dir == "trainer/default"
    assert load_config(REPO / "trainer/configs/bt.yaml").train.mode == "bt"
    teacher = load_config(REPO / "trainer/configs/teacher.yaml")
    assert teacher.sampling.teacher and teacher.eval.on == "validation"
    longer = load_config(REPO / "trainer/configs/teacher_sampled.yaml")
    assert longer.train.reward_inputs == ["plain", "sampled"] and longer.sampling.plain_critiques
    assert longer.eval.on == "validation" and longer.eval.max_pairs == 90
    rco = load_config(REPO / "trainer/configs/rco.yaml")
    assert rco.refine.method == "utility" and rco.train.preference.loss == "rco"
    assert rco.eval.critic and rco.export.checkpoint_root != "checkpoints"
    for recipe in sorted((REPO / "trainer/configs").glob("*.yaml")):
        load_config(recipe)  # every shipped recipe validates


def test_a_recipe_states_only_what_differs_from_its_base(tmp_path: Path) -> None:
    anchored = load_config(REPO / "trainer/configs/anchored.yaml")
    base = load_config(REPO / "trainer/configs/teacher_sampled.yaml")
    assert anchored.train.reward_anchor > 0 and anchored.train.rotate_sampled
    assert anchored.sampling.teacher and anchored.train.lora == base.train.lora
    assert anchored.eval == base.eval and anchored.out_dir != base.out_dir
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntrain: {epochs: 7}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("train: {epochs: 2, lr: 0.5}\neval: {ms: [0, 1]}\n")
    merged = load_config(tmp_path / "a.yaml", ["eval.ms=[0]"])
    assert (merged.train.epochs, merged.train.lr, merged.eval.ms) == (7, 0.5, [0])
    (tmp_path / "a.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config(tmp_path / "a.yaml")


def test_set_overrides_parse_yaml_values(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "train.epochs=3",
            "train.lr=1e-3",
            "eval.ms=[0, 2]",
            "train.constant_lambda=0.5",
            "base_model=null",
            "export.name=x",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.train.lr == 1e-3
    assert cfg.eval.ms == [0, 2] and cfg.train.constant_lambda == 0.5
    assert cfg.base_model is None and cfg.export.name == "x"


@pytest.mark.parametrize(
    ("assignment", "field"),
    [
        ("train.epochz=3", "epochz"),
        ("train.epochs=0", "epochs"),
        ("refine.method=vote", "method"),
        ("train.micro_batch=3", "multiple"),
    ],
)
def test_bad_settings_name_the_field(assignment: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_config(None, [assignment])


def test_set_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


# ---------------------------------------------------------------- stages and resume
def test_digest_chain_reruns_only_what_a_change_affects() -> None:
    a = digests(load_config(None))
    assert list(a) == [s for s in STAGES if s != "judge"]  # a digest chains its mode's stages
    b = digests(load_config(None, ["train.epochs=5"]))
    changed = [s for s in a if a[s] != b[s]]
    assert changed == ["train", "export", "eval", "publish"]
    c = digests(load_config(None, ["sampling.num_critiques=2"]))
    assert next(s for s in a if a[s] != c[s]) == "sample"
    # SyncPL's judge stage: its own settings, and the sampling temperature, rerun it.
    j = digests(load_config(None, ["train.mode=syncpl"]))
    assert list(j) == ["data", "base", "judge", "train", "export", "eval", "publish"]
    k = digests(load_config(None, ["train.mode=syncpl", "syncpl.samples=3"]))
    assert next(s for s in j if j[s] != k[s]) == "judge"
    t = digests(load_config(None, ["train.mode=syncpl", "sampling.temperature=0.5"]))
    assert next(s for s in j if j[s] != t[s]) == "judge"
    n = digests(load_config(None, ["train.mode=syncpl", "sampling.num_critiques=2"]))
    assert next(s for s in j if j[s] != n[s]) == "export"  # the manifest's sampling defaults


def _fake_stages(calls: list[str], fail: str | None = None) -> tuple[Stage, ...]:
    """The real pipeline's names, sections and modes, with stages that only record their call."""

    def fake(name: str) -> Callable[[Any], dict[str, Any]]:
        def stage(run: Any) -> dict[str, Any]:
            if name == fail:
                raise RuntimeError(f"{name} failed")
            calls.append(name)
            return {"ran": name}

        return stage

    return tuple(replace(s, func=fake(s.name)) for s in PIPELINE)


def test_pipeline_lists_the_stage_functions_in_order() -> None:
    assert STAGES == (
        "data", "base", "judge", "sample", "filter", "refine", "train", "export", "eval",
        "publish",
    )  # fmt: skip
    assert [s.func for s in PIPELINE] == [
        stages.stage_data,
        stages.stage_base,
        stages.stage_judge,
        stages.stage_sample,
        stages.stage_filter,
        stages.stage_refine,
        stages.stage_train,
        stages.stage_export,
        stages.stage_eval,
        stages.stage_publish,
    ]
    assert {s.name for s in PIPELINE if s.modes == ("critic",)} == {"sample", "filter", "refine"}
    assert [s.name for s in PIPELINE if "bt" not in s.modes] == [
        "judge", "sample", "filter", "refine"
    ]  # fmt: skip


def test_unknown_from_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="unknown stage 'sampel'"):
        run_pipeline(load_config(None, [f"out_dir={tmp_path}"]), from_stage="sampel")


def test_run_resumes_after_a_failed_stage(tmp_path: Path) -> None:
    cfg = load_config(None, [f"out_dir={tmp_path}"])
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="train failed"):
        run_pipeline(cfg, stages=_fake_stages(calls, fail="train"))
    assert calls == ["data", "base", "sample", "filter", "refine"]
    calls.clear()
    fakes = _fake_stages(calls)
    markers = run_pipeline(cfg, stages=fakes)
    assert calls == ["train", "export", "eval", "publish"]
    assert set(markers) == set(STAGES) - {"judge"}
    calls.clear()
    run_pipeline(cfg, stages=fakes)
    assert calls == []  # everything done
    run_pipeline(load_config(None, [f"out_dir={tmp_path}", "refine.k=3"]), stages=fakes)
    assert calls == ["refine", "train", "export", "eval", "publish"]
    calls.clear()
    run_pipeline(
        load_config(None, [f"out_dir={tmp_path}", "refine.k=3"]), from_stage="eval", stages=fakes
    )
    assert calls == ["eval", "publish"]
    assert json.loads((tmp_path / "stages" / "eval.json").read_text())["ran"] == "eval"


def test_async_stages_are_run_to_completion(tmp_path: Path) -> None:
    async def sample(run: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"awaited": True}

    fakes = tuple(replace(s, func=sample) if s.name == "sample" else s for s in _fake_stages([]))
    markers = run_pipeline(load_config(None, [f"out_dir={tmp_path}"]), until="sample", stages=fakes)
    assert list(markers) == ["data", "base", "sample"] and markers["sample"]["awaited"] is True


def test_bt_mode_skips_critique_stages(tmp_path: Path) -> None:
    calls: list[str] = []
    run_pipeline(
        load_config(None, [f"out_dir={tmp_path}", "train.mode=bt"]),
        until="train",
        stages=_fake_stages(calls),
    )
    assert calls == ["data", "base", "train"]


# ---------------------------------------------------------------- sampling and refinement
class ScriptedGenerator:
    """Returns scripted texts in call order; records the prompts and specs it was given."""

    def __init__(self, replies: Sequence[Sequence[str]]) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[list[list[int]], list[SamplingSpec]]] = []

    async def generate(
        self, prompts: Sequence[list[int]], specs: Sequence[SamplingSpec]
    ) -> tuple[list[list[Critique]], EngineStats]:
        self.calls.append(([list(p) for p in prompts], list(specs)))
        out = []
        for spec in specs:
            texts = self.replies.pop(0)
            assert len(texts) == spec.n
            out.append([Critique(t, 3, "stop") for t in texts])
        return out, EngineStats()

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


class CharFormatter:
    """The slice of PromptFormatter the critique code uses, over one id per character."""

    max_model_len = 10_000

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def chat_ids(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool
    ) -> list[int]:
        return self.encode(
            "|".join(m["content"] for m in messages) + ("|A:" if add_generation_prompt else "")
        )

    def encode_item(self, prompt: Any, response: str, *args: Any, **kwargs: Any) -> Any:
        hint = kwargs.get("hint")

        class Enc:
            critique_prompt = self.encode(
                f"{prompt}|{response}" + (f"|hint:{hint}" if hint else "") + "|A:"
            )

        return Enc()


def _decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


async def test_sample_and_judge_drops_and_counts_unparseable_scores() -> None:
    pair = PreferencePair("q", "good", "bad", "code", "p0")
    gen = ScriptedGenerator(
        [
            ["c1", "c2"],
            ["c3", "c4"],
            ["7"],
            ["oops"],
            ["2"],
            ["10"],
        ]  # 2 critiques x 2 sides, 4 judgements
    )
    records, stats = await sample_and_judge(
        gen,
        CharFormatter(),  # type: ignore[arg-type]
        [pair],
        SamplingConfig(num_critiques=2, max_tokens=8, temperature=0.8, plain_critiques=0),
    )
    assert stats.critiques == 4 and stats.unparseable == 1
    assert stats.per_category == {"code": {"critiques": 4, "unparseable": 1}}
    assert records[0]["chosen"] == [{"text": "c1", "score": 7}]
    assert records[0]["rejected"] == [{"text": "c3", "score": 2}, {"text": "c4", "score": 10}]
    judge_prompts, judge_specs = gen.calls[1]
    assert _decode(judge_prompts[0]).endswith("c1\nScore (1-10): ")
    assert all(s.regex == r"(10|[1-9])" and s.n == 1 and s.temperature == 0.8 for s in judge_specs)


def _record() -> dict[str, Any]:
    return {
        "pair": {"prompt": "q", "chosen": "good", "rejected": "bad", "category": "code"},
        "chosen": [{"text": t, "score": 8} for t in ("a", "b", "c")],
        "rejected": [{"text": t, "score": 3} for t in ("d", "e", "f")],
    }


async def test_ranking_keeps_the_top_k_by_meta_judge_score() -> None:
    gen = ScriptedGenerator([["3"], ["9"], ["x"], ["1"], ["5"], ["6"]])
    out = await refine(
        gen,
        CharFormatter(),  # type: ignore[arg-type]
        [_record()],
        RefineConfig(method="ranking", k=2),
        SamplingConfig(),
        0,
    )
    assert out[0]["chosen_train"] == ["b", "a"]  # 9, 3; the unparseable one last
    assert out[0]["rejected_train"] == ["f", "e"]
    assert out[0]["chosen_meta"] == [3, 9, None]


async def test_summarization_writes_k_meta_critiques_from_permutations() -> None:
    gen = ScriptedGenerator([["s1"], ["s2"], ["s3"], ["s4"]])
    out = await refine(
        gen,
        CharFormatter(),  # type: ignore[arg-type]
        [_record()],
        RefineConfig(method="summarization", k=2),
        SamplingConfig(),
        0,
    )
    assert out[0]["chosen_train"] == ["s1", "s2"] and out[0]["rejected_train"] == ["s3", "s4"]
    prompts = [_decode(p) for p in gen.calls[0][0]]
    for text in prompts[:2]:
        assert all(f". {c}" in text for c in "abc")  # every critique, in some order
    assert all(f". {c}" in prompts[2] for c in "def")


async def test_no_refinement_keeps_the_first_k() -> None:
    out = await refine(
        ScriptedGenerator([]),
        CharFormatter(),  # type: ignore[arg-type]
        [_record()],
        RefineConfig(method="none", k=1),
        SamplingConfig(),
        0,
    )
    assert out[0]["chosen_train"] == ["a"] and out[0]["rejected_train"] == ["d"]


# ---------------------------------------------------------------- evaluation maths
def test_rewards_at_m_average_the_first_m_critiques() -> None:
    per = [(0.5, [1.0, 2.0, 3.0, 6.0]), (-1.0, [0.0, 0.0, 0.0, 0.0])]
    assert rewards_at(per, 0) == [0.5, -1.0]
    assert rewards_at(per, 1) == [1.0, 0.0]
    assert rewards_at(per, 4) == [3.0, 0.0]


def test_accuracy_counts_ties_half_and_splits_categories() -> None:
    acc = accuracy([2.0, 1.0, 0.0, 5.0], [1.0, 1.0, 3.0, 4.0], ["a", "a", "b", "b"])
    assert acc["overall"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert acc["per_category"] == {"a": 0.75, "b": 0.5}
    assert acc["pairs"] == 4


def test_report_table_and_plot(tmp_path: Path) -> None:
    critic = {"by_m": {"0": accuracy([1], [0], ["a"]), "4": accuracy([0], [1], ["a"])}}
    bt = {"by_m": {"0": accuracy([1], [0], ["a"])}}
    md = markdown([critic, bt], ["critic", "bt"])
    assert "| critic | 4 | 1 | 0.000 [0.00, 0.79] | 0.000 (1) |" in md and "| bt | 0 |" in md
    plot([critic, bt], ["critic", "bt"], tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stopped_train_run_leaves_no_engine_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM mid-stage: the run unwinds and its child processes (vLLM engines) are ended."""
    import argparse
    import os
    import signal
    import subprocess
    import sys

    from trainer import cli, pipeline

    children: list[subprocess.Popen[bytes]] = []

    def stage_that_starts_an_engine(*_a: Any, **_k: Any) -> Any:
        children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(pipeline, "run_pipeline", stage_that_starts_an_engine)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            cli._train(argparse.Namespace(config=None, set=[], from_stage=None, until=None))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert children and children[0].wait(timeout=10) is not None
