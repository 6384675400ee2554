"""Joint training on a tiny random Llama: losses fall, every trainable weight moves, runs are
deterministic, λ follows the schedule, and the saved delta reproduces the trained rewards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from service.checkpoint.manifest import Templates
from service.contract.formatting import PromptFormatter
from trainer.config import LoraConfig, TrainConfig
from trainer.examples import build_examples
from trainer.losses import anchor_loss, critique_nll
from trainer.model import apply_delta, build_policy, save_delta
from trainer.train import (
    MicroBatch,
    micro_batch,
    micro_losses,
    rewards,
    selected_nll,
    set_seed,
    train,
)


@pytest.fixture(scope="module")
def fmt(tiny_llama: Path) -> PromptFormatter:
    from transformers import AutoTokenizer

    return PromptFormatter(
        AutoTokenizer.from_pretrained(tiny_llama), Templates(), "<|endoftext|>", 512
    )


def _records() -> list[dict[str, Any]]:
    out = []
    for i in range(6):
        pair = {
            "prompt": f"What is {i} + {i}?",
            "chosen": f"{i} + {i} = {2 * i}.",
            "rejected": f"{i} + {i} = {2 * i + 1}.",
            "category": "reasoning",
        }
        out.append(
            {
                "pair": pair,
                "chosen_train": ["The sum is right. Good."],
                "rejected_train": ["The sum is wrong by one. Bad."],
            }
        )
    return out


def _policy(tiny_llama: Path, lora: bool, layers: int | None = None) -> Any:
    from transformers import AutoModelForCausalLM

    set_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    head = torch.randn(1, lm.config.hidden_size) * 0.02
    return build_policy(
        lm,
        head,
        lora=LoraConfig(r=4, alpha=8) if lora else None,
        trainable_layers=layers,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )


CFG = TrainConfig(epochs=3, pairs_per_step=2, micro_batch=1, lr=1e-2, head_lr=5e-2, beta=0.5)


def _run(
    tiny_llama: Path, fmt: PromptFormatter, lora: bool = True, **kw: Any
) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    cfg = CFG.model_copy(update=kw)
    examples = build_examples(
        fmt, _records(), with_critiques=cfg.mode == "critic", max_critique_tokens=32, max_len=512
    )
    policy = _policy(tiny_llama, lora)
    before = {n: p.detach().clone() for n, p in policy.trainable_named().items()}
    result = train(policy, examples, cfg, seed=0, pad_id=2, progress=False)
    return policy, result, before


def test_critic_training_lowers_both_losses_and_moves_every_weight(
    tiny_llama: Path, fmt: PromptFormatter
) -> None:
    policy, result, before = _run(tiny_llama, fmt)
    lams = [r["lambda"] for r in result.log]
    assert lams[:6] == [1.0] * 6  # 3 steps per epoch; λ = 1 for the first K - 1 = 2 epochs
    assert lams[6] == 1.0 and lams[-1] == pytest.approx(1 - 0.5 * 2 / 3)
    assert all(r["loss_r"] is None for r in result.log[:6])  # no reward loss while λ = 1
    first_c, last_c = result.log[0]["loss_c"], result.log[5]["loss_c"]
    assert last_c < first_c
    for name, p in policy.trainable_named().items():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not change"
    assert any("lora_A" in n for n in before) and "reward_head" in before


def test_bt_training_lowers_the_pairwise_loss(tiny_llama: Path, fmt: PromptFormatter) -> None:
    _, result, _ = _run(tiny_llama, fmt, mode="bt", epochs=4)
    assert all(r["lambda"] == 0.0 and r["loss_c"] is None for r in result.log)
    assert result.mean("loss_r", first=False, n=3) < result.mean("loss_r", first=True, n=3)


def test_training_is_deterministic_under_a_seed(tiny_llama: Path, fmt: PromptFormatter) -> None:
    _, a, _ = _run(tiny_llama, fmt, epochs=2)
    _, b, _ = _run(tiny_llama, fmt, epochs=2)
    assert [(r["loss_c"], r["loss_r"]) for r in a.log] == [
        (r["loss_c"], r["loss_r"]) for r in b.log
    ]


def test_bf16_training_runs_and_keeps_a_float32_head(
    tiny_llama: Path, fmt: PromptFormatter
) -> None:
    from transformers import AutoModelForCausalLM

    set_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    policy = build_policy(
        lm,
        torch.randn(1, lm.config.hidden_size) * 0.02,
        lora=LoraConfig(r=4, alpha=8),
        trainable_layers=None,
        dtype=torch.bfloat16,
        device=torch.device("cpu"),
    )
    assert policy.head.weight.dtype == torch.float32
    examples = build_examples(
        fmt, _records(), with_critiques=True, max_critique_tokens=32, max_len=512
    )
    cfg = CFG.model_copy(update={"epochs": 2, "dtype": "bfloat16", "constant_lambda": 0.5})
    result = train(policy, examples, cfg, seed=0, pad_id=2, progress=False)
    assert all(
        r["loss_c"] is not None
        and r["loss_r"] is not None
        and torch.isfinite(torch.tensor(r["loss_c"]))
        for r in result.log
    )


def test_partial_training_freezes_lower_layers(tiny_llama: Path) -> None:
    policy = _policy(tiny_llama, lora=False, layers=1)
    names = set(policy.trainable_named())
    assert any(".layers.1." in n for n in names) and not any(".layers.0." in n for n in names)
    assert "model.norm.weight" in names and "model.embed_tokens.weight" not in names


def test_lora_delta_merges_into_the_same_rewards(
    tiny_llama: Path, fmt: PromptFormatter, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    policy, _, _ = _run(tiny_llama, fmt, epochs=2)
    save_delta(policy, tmp_path, {"name": "t"})
    assert (tmp_path / "adapter.safetensors").stat().st_size < 200_000
    seqs = [
        e.chosen_score
        for e in build_examples(
            fmt, _records()[:2], with_critiques=True, max_critique_tokens=32, max_len=512
        )
    ]
    with torch.no_grad():
        trained = rewards(policy, seqs, pad_id=2)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    merged, head = apply_delta(base, tmp_path)
    assert type(merged).__name__ == "LlamaForCausalLM"  # plain weights, no adapter left
    plain = build_policy(
        merged, head, lora=None, trainable_layers=0, dtype=torch.float32, device=torch.device("cpu")
    )
    with torch.no_grad():
        again = rewards(plain, seqs, pad_id=2)
    torch.testing.assert_close(again, trained, atol=1e-5, rtol=1e-5)


def test_selected_nll_matches_the_masked_full_logits_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    keep = mask[:, 1:].bool()
    sel = selected_nll(logits[:, :-1][keep], ids[:, 1:][keep])
    torch.testing.assert_close(sel, critique_nll(logits, ids, mask))


def test_assemble_publishes_the_delta_once_with_its_metadata(
    tiny_llama: Path, fmt: PromptFormatter, tmp_path: Path
) -> None:
    from critic_rm.cli import main
    from service.checkpoint.manifest import SamplingDefaults
    from service.checkpoint.store import CheckpointRoot
    from trainer.export import assemble, find_assembled

    policy, _, _ = _run(tiny_llama, fmt, epochs=2)
    delta = tmp_path / "delta"
    save_delta(
        policy,
        delta,
        {
            "name": "tiny",
            "base_model": str(tiny_llama),
            "templates": Templates().model_dump(),
            "reward_token": "<|endoftext|>",
            "sampling": SamplingDefaults(num_critiques=2).model_dump(),
            "metrics": {"trainer": {"mode": "critic"}},
            "reward_stats": {"mean": 0.5, "std": 2.0},
        },
    )
    root = tmp_path / "root"
    assert find_assembled(root, delta) is None
    version = assemble(delta, root)
    m = CheckpointRoot(root).resolve().manifest  # verifies hashes and READY
    assert m.model_version == version.manifest.model_version
    assert m.reward_head_trained and m.sampling.num_critiques == 2
    assert m.reward_stats is not None and m.reward_stats.std == 2.0
    assert (
        m.metrics["trainer"] == {"mode": "critic"}
        and find_assembled(root, delta) == m.model_version
    )
    assert (
        main(["assemble", "--if-missing", "--delta", str(delta), "--checkpoint-root", str(root)])
        == 0
    )
    assert CheckpointRoot(root).list_versions() == [m.model_version]


def test_reward_inputs_pair_plain_and_sampled_rewards_with_the_training_critiques(
    fmt: PromptFormatter,
) -> None:
    rec = dict(
        _records()[0],
        chosen_plain=["plain critique A", "plain critique B"],
        rejected_plain=["plain critique C", "plain critique D"],
    )
    examples = build_examples(
        fmt,
        [rec],
        with_critiques=True,
        max_critique_tokens=32,
        max_len=512,
        reward_inputs=["plain", "sampled"],
    )
    assert len(examples) == 3  # 1 plain + 2 sampled reward pairs; 1 training critique pair
    plain, first, second = examples
    enc = fmt.encode_item(rec["pair"]["prompt"], rec["pair"]["chosen"], 32, 1)
    assert plain.chosen_score == fmt.score_ids(enc.score_prefix, None)
    assert first.chosen_score == fmt.score_ids(enc.score_prefix, "plain critique A")
    assert second.rejected_score is not None and fmt.tokenizer.decode(second.rejected_score).count(
        "plain critique D"
    )
    # The critique head learns the training critique, once, beside the first reward pair.
    assert plain.chosen_lm is not None and second.chosen_lm is None
    target = plain.chosen_lm.ids[plain.chosen_lm.target_from :]
    assert fmt.tokenizer.decode(target).startswith("The sum is right.")


def test_reward_only_examples_train_the_head_while_lambda_is_one(
    fmt: PromptFormatter, tiny_llama: Path
) -> None:
    records = [dict(r, chosen_plain=["ok"], rejected_plain=["not ok"]) for r in _records()]
    examples = build_examples(
        fmt,
        records,
        with_critiques=True,
        max_critique_tokens=32,
        max_len=512,
        reward_inputs=["plain", "sampled"],
    )
    cfg = CFG.model_copy(update={"epochs": 1, "constant_lambda": 0.5})
    result = train(_policy(tiny_llama, True), examples, cfg, seed=0, pad_id=2, progress=False)
    assert all(r["loss_r"] is not None for r in result.log)
    assert any(r["loss_c"] is not None for r in result.log)


def test_a_side_without_grounded_critiques_still_gives_reward_pairs_and_its_own_targets(
    fmt: PromptFormatter,
) -> None:
    rec = dict(
        _records()[0],
        chosen_train=["Right. Overall judgment: Correct", "Fine."],
        rejected_train=[],
        chosen_plain=["p"],
        rejected_plain=["q"],
    )
    kw: dict[str, Any] = {"with_critiques": True, "max_critique_tokens": 32, "max_len": 512}
    examples = build_examples(fmt, [rec], reward_inputs=["plain", "sampled"], **kw)
    assert [e.chosen_score is not None for e in examples] == [True, True]
    assert all(e.chosen_lm is not None and e.rejected_lm is None for e in examples)
    # The paper's input needs a critique on both sides: none here.
    only_train = build_examples(fmt, [rec], reward_inputs=["train"], **kw)
    assert all(e.chosen_score is None for e in only_train) and len(only_train) == 2


def _sampled(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        dict(r, chosen_plain=["looks right", "fine"], rejected_plain=["off by one", "wrong"])
        for r in records
    ]


def test_anchored_rotating_examples_carry_the_plain_pair_and_take_turns(
    fmt: PromptFormatter,
) -> None:
    rec = _sampled(_records())[0]
    kw: dict[str, Any] = {"with_critiques": True, "max_critique_tokens": 32, "max_len": 512}
    examples = build_examples(
        fmt, [rec], reward_inputs=["plain", "sampled"], anchored=True, rotate_sampled=True, **kw
    )
    # One slot: the two sampled pairs take turns, each with the plain pair beside it and the
    # training critique, so every epoch trains the plain pair and the critique head once.
    assert [(e.variant, e.variants) for e in examples] == [(0, 2), (1, 2)]
    enc = fmt.encode_item(rec["pair"]["prompt"], rec["pair"]["chosen"], 32, 1)
    plain = fmt.score_ids(enc.score_prefix, None)
    assert all(e.chosen_plain == plain and e.chosen_lm is not None for e in examples)
    assert examples[1].chosen_score == fmt.score_ids(enc.score_prefix, "fine")
    assert [e.active(3) for e in examples] == [False, True]
    # Neither option: the plain pair is an example of its own, every sampled pair every epoch.
    flat = build_examples(fmt, [rec], reward_inputs=["plain", "sampled"], **kw)
    assert [(e.variants, e.chosen_plain) for e in flat] == [(1, None)] * 3
    # Without sampled critiques the plain pair is kept as its own example, not lost.
    bare = dict(rec, chosen_plain=[], rejected_plain=[])
    alone = build_examples(fmt, [bare], reward_inputs=["plain", "sampled"], anchored=True, **kw)
    assert len(alone) == 1 and alone[0].chosen_score == plain and alone[0].chosen_plain is None


def test_the_anchor_pulls_critique_rewards_to_the_plain_reward_and_not_back() -> None:
    plain = torch.tensor([1.0, -2.0], requires_grad=True)
    conditioned = torch.tensor([3.0, -2.5], requires_grad=True)
    loss = anchor_loss(conditioned, plain)
    assert float(loss.detach()) == pytest.approx((2.0**2 + 0.5**2) / 2)
    loss.backward()
    assert plain.grad is None or not plain.grad.any()  # the plain reward is held fixed
    assert conditioned.grad is not None
    assert conditioned.grad.tolist() == pytest.approx([2.0, -0.5])


def test_anchored_rotating_training_reads_one_sampled_critique_per_epoch(
    tiny_llama: Path, fmt: PromptFormatter
) -> None:
    examples = build_examples(
        fmt,
        _sampled(_records()),
        with_critiques=True,
        max_critique_tokens=32,
        max_len=512,
        reward_inputs=["plain", "sampled"],
        anchored=True,
        rotate_sampled=True,
    )
    cfg = CFG.model_copy(
        update={"epochs": 4, "constant_lambda": 0.5, "reward_anchor": 1.0, "rotate_sampled": True}
    )
    mb = micro_batch(examples[:2], 0.5, pad_id=2)
    # Two examples: each a sampled pair and its plain pair; the anchor links them.
    assert mb.pairs == 4 and mb.anchors == [(0, 1), (2, 3)]
    result = train(_policy(tiny_llama, True), examples, cfg, seed=0, pad_id=2, progress=False)
    assert len(examples) == 12 and result.steps == 4 * 3  # 6 pairs a epoch, 2 a step
    assert all(r["loss_a"] is not None and r["loss_r"] is not None for r in result.log)
    assert result.mean("loss_r", first=False, n=3) < result.mean("loss_r", first=True, n=3)


def test_the_margin_anchor_holds_a_pairs_margin_and_lets_its_level_move() -> None:
    class Rewards(torch.nn.Module):
        """Stands in for the model: returns fixed rewards, so the loss is checked by hand."""

        def __init__(self, values: list[float]) -> None:
            super().__init__()
            self.values = torch.nn.Parameter(torch.tensor(values))

        def forward(self, *_: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.zeros(0, 4), self.values

    ids = torch.zeros((4, 3), dtype=torch.long)
    mb = MicroBatch(ids, torch.ones_like(ids), torch.zeros((0, 2), dtype=torch.bool),
                    torch.zeros(0, dtype=torch.long), 2, [(0, 1)])  # fmt: skip
    # Rewards: chosen (critique, plain) = (3, 1); rejected (critique, plain) = (2, 0).
    # Both critique rewards are 2 above the plain ones: the margin (1) is unchanged.
    values = [3.0, 1.0, 2.0, 0.0]
    _, _, _, by_margin = micro_losses(Rewards(values), mb, 0.0, torch.device("cpu"), 1.0, "margins")
    _, _, _, by_reward = micro_losses(Rewards(values), mb, 0.0, torch.device("cpu"), 1.0)
    assert by_margin == pytest.approx(0.0) and by_reward == pytest.approx(4.0)


def test_an_anchor_without_plain_or_sampled_inputs_is_refused() -> None:
    with pytest.raises(ValueError, match="reward_anchor needs"):
        TrainConfig(reward_anchor=0.5, reward_inputs=["sampled"])


def test_every_process_gets_the_same_number_of_micro_batches_and_each_pair_once() -> None:
    from trainer.train import micro_steps, shares

    batch: list[Any] = list(range(7))  # a short last step of an epoch: 7 of 8 pairs
    cfg = CFG.model_copy(update={"pairs_per_step": 8, "micro_batch": 2})
    count = micro_steps(cfg, 2)
    assert count == 2
    parts = [shares(batch, 2, rank, 2, count) for rank in range(2)]
    assert parts == [[[0, 2], [4, 6]], [[1, 3], [5]]]
    assert sorted(p for rank in parts for chunk in rank for p in chunk) == batch
    assert micro_steps(cfg, 1) == 4 and micro_steps(cfg, 8) == 1


def test_a_step_checkpoint_of_other_settings_is_not_resumed(
    tiny_llama: Path, fmt: PromptFormatter, tmp_path: Path
) -> None:
    from trainer.train import Checkpointing

    examples = build_examples(
        fmt, _records(), with_critiques=True, max_critique_tokens=32, max_len=512
    )
    cfg = CFG.model_copy(update={"epochs": 1})
    state = tmp_path / "train_state"

    def run(digest: str, every: int) -> Any:
        return train(
            _policy(tiny_llama, True),
            examples,
            cfg,
            seed=0,
            pad_id=2,
            progress=False,
            checkpoints=Checkpointing(state, digest, every=every),
        )

    first = run("digest-a", 1)
    assert json.loads((state / "loop.json").read_text())["step"] == first.steps
    again = run("digest-b", 0)
    assert again.resumed_from == 0 and len(again.log) == first.steps
    same = run("digest-a", 0)
    assert same.resumed_from == first.steps and same.log == []  # nothing left to train


def test_sampling_shards_deal_and_merge_back_in_order() -> None:
    from trainer.sampling import deal, merge, merge_stats

    items = list(range(11))
    shards = deal(items, 3)
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert merge(shards) == items
    stats = merge_stats(
        [
            {
                "critiques": 4,
                "unparseable": 1,
                "grounded_pairs": 2,
                "hint_echoes": 0,
                "teacher": 0,
                "per_category": {"code": {"critiques": 4, "unparseable": 1}},
            },
            {
                "critiques": 2,
                "unparseable": 0,
                "grounded_pairs": 1,
                "hint_echoes": 1,
                "teacher": 0,
                "per_category": {"code": {"critiques": 2, "unparseable": 0}},
            },
        ]
    )
    assert (stats.critiques, stats.unparseable, stats.grounded_pairs, stats.hint_echoes) == (
        6,
        1,
        3,
        1,
    )
    assert stats.per_category == {"code": {"critiques": 6, "unparseable": 1}}


def test_eval_accuracies_go_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainer.config import load_config
    from trainer.pipeline import digests
    from trainer.run import Run
    from trainer.tracking import eval_scalars, log_eval

    results = [
        {"splits": {"test": {"0": {"overall": 0.5}, "4": {"overall": 0.75}}}},
        {"splits": {"test": {"0": {"overall": 0.625}}, "empty": {"0": {"overall": None}}}},
    ]  # an empty split has no accuracy, and no scalar
    labels = ["critic-rm (critic)", "standard RM (bt)"]
    scalars = eval_scalars(results, labels)
    assert scalars == {
        "eval/critic-rm_(critic)/test/m0": 0.5,
        "eval/critic-rm_(critic)/test/m4": 0.75,
        "eval/standard_RM_(bt)/test/m0": 0.625,
    }
    cfg = load_config(None, [f"out_dir={tmp_path}"])
    log_eval(Run(cfg, digests(cfg)), results, labels)
    (events,) = (tmp_path / "tb" / "critic-rm" / "eval").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(scalars)
    assert acc.Scalars("eval/critic-rm_(critic)/test/m4")[0].value == pytest.approx(0.75)
