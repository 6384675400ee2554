"""The fused layout's own logic without an engine: checkpoint format 2's sequences, the tail
rule the logits processor applies, reading a critique and its reward off a completion, the
batch runner skipping the scoring pass for those critiques, and the layout a format-1
checkpoint falls back to (the engine itself: tests/integration/test_one_engine_http.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from service.checkpoint.store import CheckpointRoot, CheckpointVersion, load_version
from service.checkpoint.variant import publish_head_variant
from service.contract.formatting import PromptFormatter
from service.engines.base import Critique, EngineStats, SamplingSpec
from service.engines.config import EngineConfig
from service.engines.factory import load_formatter, served_layout
from service.engines.fused_tail import FusedTailProcessor, _TailRule, forced_token
from service.engines.vllm_engines import FusedTail, VllmCritiqueGenerator, engine_args
from service.engines.vllm_plugin import TAIL_KEY, TAIL_PROCESSOR
from service.model.runtime import ModelRuntime
from service.observability.metrics import Metrics
from service.scoring.runner import BatchRunner, WorkItem
from tests.fakes import FakeGenerator, FakeScorer

E, R, T = 2, 0, 49151
TAIL = (E, R, T)


@pytest.fixture(scope="module")
def fused_fmt(default_version: CheckpointVersion) -> PromptFormatter:
    return load_formatter(default_version, EngineConfig(max_model_len=512), fused=True)


def test_format_2_reads_the_reward_after_the_critique_ids_in_the_generator_sequence(
    fused_fmt: PromptFormatter, default_version: CheckpointVersion
) -> None:
    tok = fused_fmt.tokenizer
    assert tok.convert_ids_to_tokens(fused_fmt.fused_tail) == ["<|im_end|>", "<|endoftext|>"]
    item = fused_fmt.encode_item("What is 2+2?", "4", 16, 1)
    z = fused_fmt.encode("It is right.")
    # From ids, and from text that tokenises to them: the same sequence.
    assert fused_fmt.critique_score_ids(item, z) == item.critique_prompt + z + [E, R]
    assert fused_fmt.critique_score_ids(item, "It is right.") == item.critique_prompt + z + [E, R]
    # The critique-free reward is format 1's: [x; y] + reward token.
    assert fused_fmt.critique_score_ids(item, None) == [*item.score_prefix, R]
    one = load_formatter(default_version, EngineConfig(max_model_len=512))
    assert one.critique_score_ids(item, "It is right.") == one.score_ids(
        item.score_prefix, "It is right."
    )


def test_format_2_leaves_room_for_the_tail_the_generator_writes(
    fused_fmt: PromptFormatter, default_version: CheckpointVersion
) -> None:
    one = load_formatter(default_version, EngineConfig(max_model_len=512), fused=False)
    prompt = "word " * 400
    longest = [
        len(f.encode_item(prompt, "y", 64, 1, truncate_prompt=True).critique_prompt)
        for f in (one, fused_fmt)
    ]
    assert longest[0] + 64 <= 512 and longest[1] + 64 + 2 <= 512 and longest[1] < longest[0]


def test_the_tail_starts_at_the_end_of_turn_or_at_the_budget() -> None:
    assert forced_token([], 3, TAIL) is None
    assert forced_token([7, 8], 3, TAIL) is None
    assert forced_token([7, 8, 9], 3, TAIL) == E  # the budget is spent: end it
    assert forced_token([7, 8, 9, E], 3, TAIL) == R
    assert forced_token([7, 8, 9, E, R], 3, TAIL) == T
    assert forced_token([7, E], 3, TAIL) == R  # it ended by itself
    assert forced_token([7, E, R], 3, TAIL) == T
    assert forced_token([7, E, R, T], 3, TAIL) is None
    assert forced_token([], 0, TAIL) == E


def test_the_tail_rule_forces_one_token_and_bans_the_tail_in_free_text() -> None:
    rule = _TailRule(2, TAIL, banned=(R, T))
    free = rule([5], torch.zeros(T + 1))
    assert torch.isinf(free[[R, T]]).all() and int(torch.isinf(free).sum()) == 2
    forced = rule([5, 6], torch.randn(T + 1))
    assert int(torch.isfinite(forced).sum()) == 1 and forced[E] == 0.0
    with pytest.raises(ValueError, match=TAIL_KEY):
        FusedTailProcessor.validate_params(SimpleNamespace(extra_args={TAIL_KEY: {"tail": [1]}}))
    FusedTailProcessor.validate_params(SimpleNamespace(extra_args=None))


def _tail(decoded: list[list[int]]) -> FusedTail:
    def decode(ids: list[int]) -> str:
        decoded.append(ids)
        return " ".join(map(str, ids)) + " "

    return FusedTail(tail=TAIL, decode=decode)


def test_a_completion_gives_its_critique_text_and_the_reward_read_at_t() -> None:
    decoded: list[list[int]] = []
    tail = _tail(decoded)
    steps = [{T: SimpleNamespace(logprob=-1.0)}] * 4 + [{T: SimpleNamespace(logprob=0.375)}]
    c = tail.critique([7, 8, E, R, T], steps, budget=4)
    assert c == Critique("7 8", 2, "stop", reward=0.375, token_ids=(7, 8))
    c = tail.critique([7, 8, 9, 10, E, R, T], steps, budget=4)
    assert (c.num_tokens, c.finish_reason, c.reward) == (4, "length", 0.375)
    # Cut off by the context before its tail was written: no reward; the scorer scores it.
    c = tail.critique([7, 8, 9, E], steps, budget=4)
    assert (c.text, c.reward) == ("7 8 9", None)
    assert decoded[-1] == [7, 8, 9]


def test_unconstrained_critiques_ask_for_the_tail_and_constrained_ones_do_not() -> None:
    seen: list[Any] = []

    class Engine:
        async def generate(self, prompt: Any, params: Any, request_id: str) -> Any:
            seen.append(params)
            steps = [{T: SimpleNamespace(logprob=0.5)}] * 4
            yield SimpleNamespace(
                num_cached_tokens=0,
                outputs=[
                    SimpleNamespace(
                        text="ok", token_ids=[5, E, R, T], logprobs=steps, finish_reason="stop"
                    )
                ],
            )

    gen = VllmCritiqueGenerator(Engine(), banned_token=T, fused=_tail([]))
    plain = SamplingSpec(1, 0.8, 0.95, 8)
    (out,), _ = asyncio.run(gen.generate([[1, 2]], [plain]))
    assert out[0].reward == 0.5 and out[0].num_tokens == 1
    p = seen[0]
    assert p.ignore_eos and p.stop_token_ids == [T] and p.max_tokens == 8 + 3
    assert p.extra_args == {TAIL_KEY: {"budget": 8, "tail": list(TAIL), "banned": [R, T]}}
    assert p.logprob_token_ids == [T] and p.logit_bias == {T: -100.0}
    judged = SamplingSpec(1, 0.8, 0.95, 8, regex="Correct|Incorrect")
    (out,), _ = asyncio.run(gen.generate([[1, 2]], [judged]))
    assert out[0].reward is None and not seen[1].extra_args and not seen[1].ignore_eos


def test_the_fused_engine_loads_the_tail_processor(tmp_path: Path) -> None:
    config = EngineConfig(engine_layout="fused", max_model_len=512)
    args = engine_args(tmp_path, config, pooling=False, reward_logit_id=T, fused=True)
    assert args.logits_processors == [TAIL_PROCESSOR] and args.logprobs_mode == "raw_logits"
    one = engine_args(tmp_path, config, pooling=False, reward_logit_id=T)
    assert not one.logits_processors


class _FusedGenerator(FakeGenerator):
    """Critiques whose reward the engine read while writing them, but for the last one."""

    async def generate(self, prompts: Any, specs: Any) -> tuple[list[list[Critique]], EngineStats]:
        outs, stats = await super().generate(prompts, specs)
        read = [[Critique(c.text, c.num_tokens, "stop", reward=1.5) for c in cs] for cs in outs]
        read[-1][-1] = outs[-1][-1]
        return read, stats


def test_the_runner_scores_only_critiques_without_a_reward(
    fused_fmt: PromptFormatter, default_version: CheckpointVersion
) -> None:
    scorer = FakeScorer()
    runtime = ModelRuntime(default_version, fused_fmt, _FusedGenerator(), scorer, "fused")
    spec = SamplingSpec(2, 0.8, 0.95, 8)
    items = [WorkItem(runtime, fused_fmt.encode_item(p, "y", 8, 2), spec) for p in ("a", "b", "c")]
    plain = WorkItem(runtime, fused_fmt.encode_item("d", "y", 8, 0), SamplingSpec(0, 1, 1, 8))
    results = asyncio.run(BatchRunner(Metrics()).run(runtime, [*items, plain]))
    assert scorer.calls == [2]  # the last item's second critique, and the m = 0 item
    assert results[0].critique_rewards == [1.5, 1.5] and results[0].reward == 1.5
    assert results[2].critique_rewards[0] == 1.5 and results[2].critique_rewards[1] != 1.5
    assert results[3].critique_rewards == [] and results[3].reward != 1.5


def test_fused_needs_a_format_2_checkpoint(
    default_version: CheckpointVersion, tmp_path: Path
) -> None:
    fused = EngineConfig(engine_layout="fused")
    assert served_layout(default_version, fused) == "one"
    assert served_layout(default_version, EngineConfig(engine_layout="two")) == "two"
    root = CheckpointRoot(tmp_path)
    name = publish_head_variant(root, default_version, None, format_version=2)
    v2 = load_version(root.version_path(name))
    assert v2.manifest.fused and served_layout(v2, fused) == "fused"
    assert load_formatter(v2, fused).fused
    # Same weights, another format: another version.
    assert name != publish_head_variant(root, default_version, None)


def test_the_trainer_reads_a_format_2_reward_where_the_fused_engine_does(
    fused_fmt: PromptFormatter,
) -> None:
    from trainer.examples import build_examples

    pair = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "category": "reasoning"}
    record = {
        "pair": pair,
        "chosen_plain": ["It is right."],
        "rejected_plain": ["It is wrong."],
        "chosen_train": ["It is right."],
        "rejected_train": ["It is wrong."],
    }
    examples = build_examples(
        fused_fmt,
        [record],
        with_critiques=True,
        max_critique_tokens=16,
        max_len=512,
        reward_inputs=["plain", "sampled"],
    )
    item = fused_fmt.encode_item(pair["prompt"], pair["chosen"], 16, 1)
    plain, sampled = examples[0], examples[1]
    assert plain.chosen_score == [*item.score_prefix, R]
    z = fused_fmt.encode("It is right.")
    assert sampled.chosen_score == item.critique_prompt + z + [E, R]
    # The critique head learns the very sequence the reward is then read after.
    assert plain.chosen_lm is not None
    assert sampled.chosen_score[: len(plain.chosen_lm.ids)] == plain.chosen_lm.ids
