"""Token-level training examples, built with the service's PromptFormatter so the trainer
optimises exactly the sequences the service will score and the prompts it will critique."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.core.formatting import PromptFormatter


@dataclass(frozen=True)
class LmSequence:
    """Critique prompt + critique (+ end of turn); `target_from` is where the critique starts."""

    ids: list[int]
    target_from: int


@dataclass(frozen=True)
class PairExample:
    """One chosen/rejected pair with one critique each (critic mode) or none (bt mode)."""

    category: str
    chosen_score: list[int]  # [x; y+ (; z+)] + reward token
    rejected_score: list[int]
    chosen_lm: LmSequence | None = None
    rejected_lm: LmSequence | None = None


def end_of_turn_ids(fmt: PromptFormatter) -> list[int]:
    """What closes an assistant turn, so the critique head learns to stop."""
    if fmt.markers is not None and fmt.markers.end.strip():
        return fmt.encode(fmt.markers.end.strip())
    eos = fmt.tokenizer.eos_token_id
    return [int(eos)] if eos is not None else []


def _lm(fmt: PromptFormatter, prompt_ids: list[int], critique: str, max_len: int) -> LmSequence:
    body = fmt.encode(critique) + end_of_turn_ids(fmt)
    body = body[: max(max_len - len(prompt_ids), 1)]
    return LmSequence(prompt_ids + body, len(prompt_ids))


def build_examples(
    fmt: PromptFormatter,
    records: Sequence[dict[str, Any]],
    *,
    with_critiques: bool,
    max_critique_tokens: int,
    max_len: int,
) -> list[PairExample]:
    """Critic mode: one example per (chosen, rejected) critique pair of each record's K
    training critiques. BT mode: one example per pair, no critiques."""
    examples = []
    for rec in records:
        pair = rec.get("pair", rec)
        enc = {
            side: fmt.encode_item(
                pair["prompt"], pair[side], max_critique_tokens, 1, truncate_prompt=True
            )
            for side in ("chosen", "rejected")
        }
        category = str(pair.get("category", "general"))
        if not with_critiques:
            examples.append(
                PairExample(
                    category,
                    fmt.score_ids(enc["chosen"].score_prefix, None),
                    fmt.score_ids(enc["rejected"].score_prefix, None),
                )
            )
            continue
        for zc, zr in zip(rec["chosen_train"], rec["rejected_train"], strict=False):
            examples.append(
                PairExample(
                    category,
                    fmt.score_ids(enc["chosen"].score_prefix, zc),
                    fmt.score_ids(enc["rejected"].score_prefix, zr),
                    _lm(fmt, enc["chosen"].critique_prompt, zc, max_len),
                    _lm(fmt, enc["rejected"].critique_prompt, zr, max_len),
                )
            )
    return examples
