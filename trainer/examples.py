"""Token-level training examples, built with the service's PromptFormatter so the trainer
optimises exactly the sequences the service will score and the prompts it will critique."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import torch

from service.contract.formatting import PromptFormatter


@dataclass(frozen=True)
class LmSequence:
    """Critique prompt + critique (+ end of turn); `target_from` is where the critique starts."""

    ids: list[int]
    target_from: int


@dataclass(frozen=True)
class PairExample:
    """One chosen/rejected pair's reward inputs and/or critique targets. Either part may be
    absent: a record can carry more reward inputs than training critiques, or fewer."""

    category: str
    chosen_score: list[int] | None  # [x; y+ (; z+)] + reward token
    rejected_score: list[int] | None
    chosen_lm: LmSequence | None = None
    rejected_lm: LmSequence | None = None
    # [x; y] of the same two responses, beside a critique-conditioned pair (train.reward_anchor):
    # a Bradley-Terry pair of its own and the anchor that pair's rewards are pulled towards.
    chosen_plain: list[int] | None = None
    rejected_plain: list[int] | None = None
    # Trained in the epochs e with e % variants == variant (train.rotate_sampled): one of a
    # response pair's sampled critiques per epoch.
    variant: int = 0
    variants: int = 1

    def active(self, epoch: int) -> bool:
        return epoch % self.variants == self.variant


def predict_mask(seqs: Sequence[LmSequence], width: int) -> torch.Tensor:
    """[len(seqs), width - 1]: the positions whose next token is a critique token (position i
    predicts token i + 1), over sequences right-padded to `width`."""
    target = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, s in enumerate(seqs):
        target[row, s.target_from : len(s.ids)] = True
    return target[:, 1:]


def end_of_turn_ids(fmt: PromptFormatter) -> list[int]:
    """What closes an assistant turn, so the critique head learns to stop."""
    if fmt.markers is not None and fmt.markers.end.strip():
        return fmt.encode(fmt.markers.end.strip())
    eos = fmt.tokenizer.eos_token_id
    return [int(eos)] if eos is not None else []


def lm_sequence(
    fmt: PromptFormatter, prompt_ids: list[int], critique: str, max_len: int
) -> LmSequence:
    """A generated text after its prompt, as a training sequence (the end of turn appended)."""
    body = fmt.encode(critique) + end_of_turn_ids(fmt)
    body = body[: max(max_len - len(prompt_ids), 1)]
    return LmSequence(prompt_ids + body, len(prompt_ids))


def critique_pairs(
    fmt: PromptFormatter,
    records: Sequence[dict[str, Any]],
    *,
    max_critique_tokens: int,
    max_len: int,
) -> list[tuple[LmSequence, LmSequence]]:
    """(preferred, dispreferred) critiques of one response, as critique sequences on the
    service's critique prompt: the "<side>_cu_pair" of utility refinement."""
    out = []
    for rec in records:
        pair = rec.get("pair", rec)
        for side in ("chosen", "rejected"):
            texts = rec.get(f"{side}_cu_pair")
            if not texts:
                continue
            prompt = fmt.encode_item(
                pair["prompt"], pair[side], max_critique_tokens, 1, truncate_prompt=True
            ).critique_prompt
            out.append(tuple(lm_sequence(fmt, prompt, t, max_len) for t in texts[:2]))
    return [(a, b) for a, b in out]


def critique_groups(
    fmt: PromptFormatter,
    records: Sequence[dict[str, Any]],
    *,
    max_critique_tokens: int,
    max_len: int,
) -> list[tuple[list[LmSequence], list[float]]]:
    """Every critique of one response with its utility ("<side>" critiques and "<side>_cu" of
    utility refinement), as critique sequences on the service's critique prompt: RCO's N
    samples of one response. Responses with fewer than two critiques are left out: with one,
    the loss only pulls the policy back to the reference."""
    out = []
    for rec in records:
        pair = rec.get("pair", rec)
        for side in ("chosen", "rejected"):
            texts = [c["text"] for c in rec.get(side) or []]
            utilities = rec.get(f"{side}_cu") or []
            if len(texts) < 2 or len(utilities) != len(texts):
                continue
            prompt = fmt.encode_item(
                pair["prompt"], pair[side], max_critique_tokens, 1, truncate_prompt=True
            ).critique_prompt
            out.append(
                (
                    [lm_sequence(fmt, prompt, t, max_len) for t in texts],
                    [float(u) for u in utilities],
                )
            )
    return out


def build_examples(
    fmt: PromptFormatter,
    records: Sequence[dict[str, Any]],
    *,
    with_critiques: bool,
    max_critique_tokens: int,
    max_len: int,
    reward_inputs: Sequence[str] = ("train",),
    anchored: bool = False,
    rotate_sampled: bool = False,
) -> list[PairExample]:
    """BT mode: one example per pair, no critiques. Critic mode: the critique head learns each
    record's K training critiques (chosen and rejected, paired), and the reward head reads,
    per `reward_inputs`: plain, the pair without critique (the m = 0 reward); sampled, the
    pair with each of the critiques sampled as the service samples them; train, the pair with
    each training critique (the paper). Reward pairs and critique pairs are zipped into
    examples, so a step sees both.

    `anchored`: each sampled pair carries the plain pair beside it (not an example of its own),
    so one micro-batch holds both rewards of a response. `rotate_sampled`: the sampled pairs of
    a record are variants of one example, one trained per epoch, so that a fresh [x; y; z] is
    read each epoch instead of the same one again."""
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

        def score(side: str, critique: str | None) -> list[int]:
            return fmt.critique_score_ids(enc[side], critique)  # noqa: B023 (used at once)

        if not with_critiques:
            examples.append(PairExample(category, score("chosen", None), score("rejected", None)))
            continue
        plain = (score("chosen", None), score("rejected", None))
        sampled = (
            [
                (score("chosen", zc), score("rejected", zr))
                for zc, zr in zip(rec["chosen_plain"], rec["rejected_plain"], strict=False)
            ]
            if "sampled" in reward_inputs
            else []
        )
        # The `train` reward input needs a critique on both sides (the paper's instance filter).
        trained = [
            (score("chosen", zc), score("rejected", zr))
            for zc, zr in zip(rec["chosen_train"], rec["rejected_train"], strict=False)
        ]
        carry = anchored and "plain" in reward_inputs and "sampled" in reward_inputs and sampled
        # A slot is one example per epoch: its variants take turns.
        slots: list[list[_Reward]] = []
        for source in reward_inputs:
            if source == "plain" and not carry:
                slots.append([_Reward(*plain)])
            elif source == "sampled":
                with_plain = [
                    _Reward(c, r, *(plain if carry else (None, None))) for c, r in sampled
                ]
                slots += (
                    [with_plain] if rotate_sampled and with_plain else [[x] for x in with_plain]
                )
            elif source == "train":
                slots += [[_Reward(c, r)] for c, r in trained]
        # Each side's grounded critiques are targets on their own: a side may have none.
        lm = [
            (
                lm_sequence(fmt, enc["chosen"].critique_prompt, zc, max_len)
                if zc is not None
                else None,
                lm_sequence(fmt, enc["rejected"].critique_prompt, zr, max_len)
                if zr is not None
                else None,
            )
            for zc, zr in zip_longest(rec["chosen_train"], rec["rejected_train"])
        ]
        for j in range(max(len(slots), len(lm))):
            c = lm[j] if j < len(lm) else (None, None)
            for v, r in enumerate(slots[j] if j < len(slots) else [_Reward(None, None)]):
                n = len(slots[j]) if j < len(slots) else 1
                examples.append(
                    PairExample(
                        category,
                        r.chosen,
                        r.rejected,
                        c[0],
                        c[1],
                        r.chosen_plain,
                        r.rejected_plain,
                        variant=v,
                        variants=n,
                    )
                )
    return examples


@dataclass(frozen=True)
class _Reward:
    chosen: list[int] | None
    rejected: list[int] | None
    chosen_plain: list[int] | None = None
    rejected_plain: list[int] | None = None
