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
    losses = train_dpo(
        model, pairs, beta=0.5, lr=5e-3, epochs=6, pairs_per_step=2, seed=0, pad_id=2
    )
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # LoRA starts as the identity
    assert sum(losses[-2:]) / 2 < 0.5 * math.log(2)
