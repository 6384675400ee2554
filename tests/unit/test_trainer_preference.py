"""Preference losses by hand, the reference policy as the adapter-disabled model, and DPO on
a tiny random Llama: the loss starts at log 2 (policy = reference) and falls."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer.preference import (
    dpo_loss,
    rco_loss,
    reference_logps,
    sequence_logps,
    train_dpo,
)


def test_dpo_loss_by_hand() -> None:
    # margin = (1.0 - 0.2) - (0.5 - 0.4) = 0.7; -log sigmoid(0.5 * 0.7) = log(1 + e^-0.35)
    loss = dpo_loss(
        torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([0.2]), torch.tensor([0.4]), 0.5
    )
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-0.35)))
    assert float(loss) == pytest.approx(0.53339, abs=1e-5)
    same = dpo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.1)
    assert float(same) == pytest.approx(math.log(2))


def test_rco_loss_by_hand() -> None:
    # log Z = log((e^1 + e^0) / 2) = 0.62011; residuals 0.1 + 0.62011 - 1 and -0.2 + 0.62011
    loss = rco_loss(
        torch.tensor([[0.1, -0.2]]), torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), beta=1.0
    )
    log_z = math.log((math.e + 1) / 2)
    expected = ((0.1 + log_z - 1) ** 2 + (-0.2 + log_z) ** 2) / 2
    assert float(loss) == pytest.approx(expected)
    assert float(loss) == pytest.approx(0.12741, abs=1e-5)
    # At π ∝ π_ref·exp(CU/β) the loss is zero.
    cu = torch.tensor([[1.0, 0.5, 0.0, 0.25]])
    beta = 0.5
    z = torch.logsumexp(cu / beta, -1, keepdim=True) - math.log(4)
    assert float(rco_loss(cu / beta - z, torch.zeros(1, 4), cu, beta)) == pytest.approx(0.0)


def _model_and_pairs(tiny_llama: Path) -> tuple[object, list[tuple[object, object]]]:
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.examples import LmSequence

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = peft.get_peft_model(
        lm, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])
    )
    pairs = []
    for i in range(4):
        prompt = tok.encode(f"Critique: {i} + {i} = {2 * i}.")
        good = tok.encode(" Correct: the sum is right.")
        bad = tok.encode(" Incorrect: it is wrong.")
        pairs.append(
            (LmSequence(prompt + good, len(prompt)), LmSequence(prompt + bad, len(prompt)))
        )
    return model, pairs


def test_the_reference_is_the_base_model_with_the_adapter_off(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, pairs = _model_and_pairs(tiny_llama)
    seqs = [c for c, _ in pairs]
    with torch.no_grad():
        for p in model.parameters():  # move the adapter away from its zero init
            if p.requires_grad:
                p.add_(0.05)
        policy = sequence_logps(model, seqs, pad_id=2)
    reference = reference_logps(model, seqs, pad_id=2)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():
        plain = sequence_logps(base, seqs, pad_id=2)
    torch.testing.assert_close(reference, plain)
    assert not torch.allclose(policy, reference)
    # Σ log p over the critique tokens, by the full softmax.
    with torch.no_grad():
        s = seqs[0]
        logits = base(input_ids=torch.tensor([s.ids])).logits[0].float()
        by_hand = sum(
            float(torch.log_softmax(logits[t - 1], -1)[s.ids[t]])
            for t in range(s.target_from, len(s.ids))
        )
    assert float(plain[0]) == pytest.approx(by_hand, abs=1e-4)


def test_dpo_starts_at_log_two_and_falls(tiny_llama: Path) -> None:
    model, pairs = _model_and_pairs(tiny_llama)
    losses = train_dpo(model, pairs, beta=0.5, lr=5e-3, epochs=6, per_step=2, seed=0, pad_id=2)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # LoRA starts as the identity
    assert sum(losses[-2:]) / 2 < 0.5 * math.log(2)


def test_dpo_runs_after_the_joint_training_on_utility_pairs(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from service.checkpoint.manifest import Templates
    from service.contract.formatting import PromptFormatter
    from trainer.config import ConfigError, LoraConfig, load_config
    from trainer.examples import critique_pairs
    from trainer.model import build_policy
    from trainer.pipeline import digests
    from trainer.preference import after_joint_training
    from trainer.run import Run

    with pytest.raises(ConfigError, match=r"refine\.method=utility"):
        load_config(None, ["train.preference.loss=dpo", "refine.method=ranking"])
    cfg = load_config(
        None,
        [
            f"out_dir={tmp_path}",
            "refine.method=utility",
            "train.preference.loss=dpo",
            "train.preference.lr=0.005",
            "train.preference.epochs=4",
            "train.preference.pairs_per_step=2",
        ],
    )
    fmt = PromptFormatter(
        AutoTokenizer.from_pretrained(tiny_llama), Templates(), "<|endoftext|>", 512
    )
    records = [
        {
            "pair": {"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": "7"},
            "chosen_cu_pair": ["Correct: the sum is right.", "Wrong."],
            "rejected_cu_pair": None,
        }
        for i in range(4)
    ]
    pairs = critique_pairs(fmt, records, max_critique_tokens=32, max_len=512)
    assert len(pairs) == 4
    good, bad = pairs[0]
    assert good.ids[: good.target_from] == bad.ids[: bad.target_from]  # one critique prompt
    assert fmt.tokenizer.decode(good.ids[good.target_from :]).startswith("Correct")
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    policy = build_policy(
        lm,
        torch.zeros(1, lm.config.hidden_size),
        lora=LoraConfig(r=4, alpha=8),
        trainable_layers=None,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    summary = after_joint_training(Run(cfg, digests(cfg)), policy, records, fmt, pad_id=2)
    assert summary["dpo_pairs"] == 4
    assert summary["dpo_loss_first"] == pytest.approx(math.log(2), abs=1e-6)
    assert summary["dpo_loss_last"] < summary["dpo_loss_first"]


def test_rco_runs_after_the_joint_training_and_favours_high_utility_critiques(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from service.checkpoint.manifest import Templates
    from service.contract.formatting import PromptFormatter
    from trainer.config import LoraConfig, load_config
    from trainer.examples import critique_groups
    from trainer.model import build_policy
    from trainer.pipeline import digests
    from trainer.preference import after_joint_training, reference_logps, sequence_logps
    from trainer.run import Run, StageError

    cfg = load_config(
        None,
        [
            f"out_dir={tmp_path}",
            "refine.method=utility",
            "train.preference.loss=rco",
            "train.preference.beta=0.5",
            "train.preference.lr=0.005",
            "train.preference.epochs=6",
            "train.preference.pairs_per_step=2",
        ],
    )
    fmt = PromptFormatter(
        AutoTokenizer.from_pretrained(tiny_llama), Templates(), "<|endoftext|>", 512
    )
    texts = ["Correct: the sum is right.", "Maybe.", "Wrong."]
    records = [
        {
            "pair": {"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": "7"},
            "chosen": [{"text": t} for t in texts],
            "chosen_cu": [1.0, 0.5, 0.0],
            "rejected": [{"text": "Only one."}],  # one critique: no group
            "rejected_cu": [0.5],
        }
        for i in range(4)
    ]
    groups = critique_groups(fmt, records, max_critique_tokens=32, max_len=512)
    assert len(groups) == 4 and groups[0][1] == [1.0, 0.5, 0.0]
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    policy = build_policy(
        lm,
        torch.zeros(1, lm.config.hidden_size),
        lora=LoraConfig(r=4, alpha=8),
        trainable_layers=None,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    run = Run(cfg, digests(cfg))
    summary = after_joint_training(run, policy, records, fmt, pad_id=2)
    assert summary["rco_groups"] == 4
    assert summary["rco_loss_last"] < 0.5 * summary["rco_loss_first"]
    seqs = groups[0][0]
    with torch.no_grad():
        ratio = sequence_logps(policy.model, seqs, 2) - reference_logps(policy.model, seqs, 2)
    assert float(ratio[0]) > float(ratio[1]) > float(ratio[2])  # π ∝ π_ref·exp(CU/β)
    flat = [dict(r, chosen=r["chosen"][:1], chosen_cu=[1.0]) for r in records]
    with pytest.raises(StageError, match="two or more critiques"):
        after_joint_training(run, policy, flat, fmt, pad_id=2)
