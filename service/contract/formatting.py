"""Turn (prompt x, response y, critique z) into token ids for the generator and the scorer.

The service and the trainer both build engine inputs here, so a reward computed online is the
reward the trainer optimised. Each segment is tokenised on its own and the ids concatenated:
the (x, y) prefix is byte-identical for the m critiques of one item, which is what lets the
scorer's prefix cache reuse it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.checkpoint.critique_format import HINT_BLOCK
from service.checkpoint.manifest import Templates

Message = dict[str, str]

# The chat roles a prompt may use: every chat template renders these three; any other role
# would be rendered verbatim into the template (a prompt-injection path).
ROLES = ("system", "user", "assistant")
# Put inside a control-token string found in client text, so the tokenizer no longer sees it.
_WORD_JOINER = "\u2060"


class InputTooLongError(ValueError):
    """An item does not fit the model context; `field` names the part to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class EncodedItem:
    """Token ids of one item, ready for both engines."""

    critique_prompt: list[int]
    score_prefix: list[int]
    truncated: bool = False


def normalize_prompt(prompt: str | Sequence[Message]) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def conversation_text(messages: Sequence[Message]) -> str:
    """The prompt as a readable transcript, for the critique instruction."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


@dataclass(frozen=True)
class ChatMarkers:
    """The strings a chat template puts around turns, found by rendering probe conversations.
    `header` holds "{role}" (e.g. "<|im_start|>{role}\n"); `end` closes every turn."""

    header: str
    end: str

    @property
    def generation_prompt(self) -> str:
        return self.header.format(role="assistant")


def find_chat_markers(render: Callable[[list[Message], bool], str]) -> ChatMarkers | None:
    """Derive header/end-of-turn strings from a template; None for templates that do not wrap
    every turn as header + content + end (those prompts are then kept as plain text)."""
    a, b, c = "\x02", "\x03", "\x04"
    text = render(
        [
            {"role": "system", "content": a},
            {"role": "user", "content": b},
            {"role": "assistant", "content": c},
        ],
        False,
    )
    if not all(text.count(x) == 1 for x in (a, b, c)):
        return None
    end = text.split(c, 1)[1]
    user = text.split(a, 1)[1].split(b, 1)[0]
    assistant = text.split(b, 1)[1].split(c, 1)[0]
    system = text.split(a, 1)[0]
    if not end or not user.startswith(end) or not assistant.startswith(end):
        return None
    user, assistant = user[len(end) :], assistant[len(end) :]
    if "user" not in user:
        return None
    header = user.replace("user", "{role}", 1)
    if header.format(role="assistant") != assistant or not system.endswith(
        header.format(role="system")
    ):
        return None
    return ChatMarkers(header=header, end=end)


class PromptFormatter:
    """Templates + tokenizer of one checkpoint version."""

    def __init__(
        self,
        tokenizer: Any,
        templates: Templates,
        reward_token: str,
        max_model_len: int,
        *,
        fused: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.templates = templates
        self.max_model_len = max_model_len
        # Checkpoint format 2 (manifest.FUSED_FORMAT): the reward with a critique is read after
        # the critique's own ids, in the generator's sequence.
        self.fused = fused
        ids = self.encode(reward_token)
        if len(ids) != 1:
            raise ValueError(f"reward token {reward_token!r} is not a single token: {ids}")
        self.reward_ids = ids
        # Special-token strings (e.g. "<|im_start|>") in client text would be tokenised as the
        # real control tokens; longest first, so a token containing another is caught whole.
        self._controls = sorted(_control_strings(tokenizer), key=len, reverse=True)
        self._digit_ids: dict[str, tuple[int, ...] | None] = {}
        # No token covers more characters than its vocabulary string (byte-level BPE strings
        # have one character per byte), so text longer than max_model_len tokens of that size
        # cannot fit: refused (or cut) before it is tokenised at all.
        self.max_chars = max_model_len * max(
            [len(t) for t in tokenizer.get_vocab()] + [len(t) for t in self._controls] + [1]
        )
        self._prefix_ids = self.encode(templates.critique_prefix)
        self._suffix_ids = self.encode(templates.critique_suffix)
        self.markers = find_chat_markers(self._chat)
        probe = self.parse_rendered(self._chat([{"role": "user", "content": "x"}], False))
        # A system message the template adds by itself; dropped when parsing rendered prompts so
        # they become the same messages a /score caller would send.
        self._default_system = (
            probe[0] if len(probe) == 2 and probe[0]["role"] == "system" else None
        )
        # What closes a critique in format 2: the template's end of turn (a critique that runs
        # out of tokens gets it too), then the reward token.
        end = self.encode(self.markers.end) if self.markers is not None else []
        eos = end[0] if end else tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has neither a chat end-of-turn nor an EOS token")
        self.end_of_turn_id: int = eos
        self.fused_tail = [eos, *self.reward_ids]

    # ---- client text
    def neutralise(self, text: str) -> str:
        """Client text with any control-token string broken up, so it stays plain text."""
        for control in self._controls:
            if control in text:
                text = text.replace(control, control[0] + _WORD_JOINER + control[1:])
        return text

    def neutral_messages(self, prompt: str | Sequence[Message]) -> list[Message]:
        """The prompt as chat messages, each message's text neutralised."""
        return [
            {"role": m["role"], "content": self.neutralise(m["content"])}
            for m in normalize_prompt(prompt)
        ]

    def check_length(
        self, prompt: str | Sequence[Message], response: str, truncate_prompt: bool = False
    ) -> None:
        """InputTooLongError, before any tokenising, for text that cannot fit the context."""
        if len(response) > self.max_chars:
            raise InputTooLongError("response", self._chars_message(len(response)))
        chars = len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)
        if chars > self.max_chars and not truncate_prompt:
            raise InputTooLongError("prompt", self._chars_message(chars))
        # Truncation never cuts system messages: those alone must fit.
        system = (
            0
            if isinstance(prompt, str)
            else sum(len(m["content"]) for m in prompt if m["role"] == "system")
        )
        if system > self.max_chars:
            raise InputTooLongError("prompt", self._chars_message(system) + " in system messages")

    def _chars_message(self, chars: int) -> str:
        return (
            f"{chars} characters cannot fit the model context of {self.max_model_len} tokens "
            f"(at most {self.max_chars} characters)"
        )

    # ---- token helpers
    def reward_logit_id(self) -> int:
        """The one-engine layout's reserved token T, whose logit carries the reward: the
        highest-id special token that no prompt uses (not bos, eos, pad, unk, the reward token,
        nor any token of the chat template's rendering). Critiques never sample it."""
        tok = self.tokenizer
        used = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
        used |= set(self.reward_ids)
        probe = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
        used |= set(self.encode(self._chat(probe, True)))
        special = getattr(tok, "added_tokens_decoder", {}) or {}
        spare = [i for i, t in special.items() if getattr(t, "special", False) and i not in used]
        if not spare:
            raise ValueError(
                "the one-engine layout needs a special token no prompt uses, and this tokenizer "
                "has none: serve with CRM_ENGINE_LAYOUT=two"
            )
        return max(spare)

    def digit_ids(self, digits: str) -> tuple[int, ...] | None:
        """The token id of each digit when every one is a single token, else None; tokenised
        once per formatter, since every /compare and every judged pair asks."""
        if digits not in self._digit_ids:
            ids = [self.encode(d) for d in digits]
            one = all(len(i) == 1 for i in ids)
            self._digit_ids[digits] = tuple(i[0] for i in ids) if one else None
        return self._digit_ids[digits]

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _chat(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
            return str(text)
        body = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return body + ("assistant: " if add_generation_prompt else "")

    def chat_ids(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
        """Token ids of `messages` rendered with the checkpoint's chat template."""
        return self.encode(self._chat(messages, add_generation_prompt))

    def count(self, text: str) -> int:
        return len(self.encode(text))

    # ---- rendered conversations (RLHF frameworks send decoded prompt + response text)
    def split_rendered(self, query: str, prompt: str | None = None) -> tuple[list[Message], str]:
        """Split a rendered prompt+response (special tokens included) into chat messages and the
        response. The prompt is `prompt` when the query starts with it, else everything up to the
        last assistant header. Trailing end-of-turn, EOS and pad strings are removed."""
        if prompt is not None and query.startswith(prompt):
            prompt_text, response = prompt, query[len(prompt) :]
        elif self.markers is not None and self.markers.generation_prompt in query:
            cut = query.rindex(self.markers.generation_prompt) + len(self.markers.generation_prompt)
            prompt_text, response = query[:cut], query[cut:]
        else:
            raise ValueError("cannot find where the response starts; send `prompts` as well")
        messages = self.parse_rendered(prompt_text)
        if len(messages) > 1 and messages[0] == self._default_system:
            messages = messages[1:]
        return messages, self._strip_tail(response)

    def _strip_tail(self, response: str) -> str:
        tails = [t for t in (self.tokenizer.eos_token, self.tokenizer.pad_token) if t]
        if self.markers is not None:
            tails.append(self.markers.end.strip())
        changed = True
        while changed:
            changed = False
            response = response.rstrip()
            for tail in tails:
                if tail and response.endswith(tail):
                    response, changed = response[: -len(tail)], True
        return response

    def parse_rendered(self, text: str) -> list[Message]:
        """Messages of a prompt rendered with this tokenizer's chat template (a trailing
        generation prompt is dropped); without known markers, one user message of plain text."""
        bos = self.tokenizer.bos_token
        if (
            bos
            and text.startswith(bos)
            and self.markers
            and not self.markers.header.startswith(bos)
        ):
            text = text[len(bos) :]
        if self.markers is not None:
            head, _, tail = self.markers.header.partition("{role}")
            pattern = re.compile(
                re.escape(head)
                + r"(\w+)"
                + re.escape(tail)
                + r"(.*?)(?:"
                + re.escape(self.markers.end)
                + r"|$)",
                re.S,
            )
            pos, messages = 0, []
            for match in pattern.finditer(text):
                if text[pos : match.start()].strip():
                    break  # text outside turns: not this template
                messages.append({"role": match.group(1), "content": match.group(2)})
                pos = match.end()
            if messages and not text[pos:].strip():
                if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
                    messages.pop()  # the generation prompt
                if messages:
                    return messages
        plain = self.tokenizer.decode(self.encode(text), skip_special_tokens=True).strip()
        return [{"role": "user", "content": plain}]

    # ---- engine inputs
    def critique_prompt_ids(
        self, messages: Sequence[Message], response: str, hint: str | None = None
    ) -> list[int]:
        """The generator's input. `hint` (the trainer's grounded sampling only) is a verifier's
        finding appended to the instruction; inference prompts never carry one."""
        user = self.templates.critique_user.format(
            conversation=conversation_text(messages), response=response
        )
        if hint:
            user += HINT_BLOCK.format(hint=self.neutralise(hint))
        chat = [
            {"role": "system", "content": self.templates.critique_system},
            {"role": "user", "content": user},
        ]
        return self.chat_ids(chat, add_generation_prompt=True)

    def score_prefix_ids(self, messages: Sequence[Message], response: str) -> list[int]:
        chat = [*messages, {"role": "assistant", "content": response}]
        return self.encode(self._chat(chat, add_generation_prompt=False))

    def score_ids(self, prefix: list[int], critique: str | None) -> list[int]:
        """[x; y] (+ critique block) + reward token; the reward is read at the last position."""
        if critique is None:
            return prefix + self.reward_ids
        body = self.encode(self.neutralise(critique))
        room = self.max_model_len - len(prefix) - len(self._prefix_ids) - len(self._suffix_ids) - 1
        # A re-tokenised critique can be a few tokens longer than generated; keep the tail fixed.
        body = body[: max(room, 0)]
        return prefix + self._prefix_ids + body + self._suffix_ids + self.reward_ids

    def critique_score_ids(
        self, item: EncodedItem, critique: str | Sequence[int] | None
    ) -> list[int]:
        """The scorer sequence of `item` with `critique` (text, or the generated token ids) as
        this checkpoint's format reads it: format 1, score_ids; format 2, the generator input +
        the critique's ids + end of turn + reward token, the sequence a fused engine has just
        generated. Without a critique, [x; y] + reward token in both."""
        if not self.fused or critique is None:
            if critique is None or isinstance(critique, str):
                return self.score_ids(item.score_prefix, critique)
            text = str(self.tokenizer.decode(list(critique), skip_special_tokens=True))
            return self.score_ids(item.score_prefix, text)
        if not item.critique_prompt:
            raise ValueError("a format-2 reward with a critique needs the item's critique prompt")
        body = (
            self.encode(self.neutralise(critique)) if isinstance(critique, str) else list(critique)
        )
        room = self.max_model_len - len(item.critique_prompt) - len(self.fused_tail)
        return item.critique_prompt + body[: max(room, 0)] + self.fused_tail

    def overhead(self, max_critique_tokens: int) -> int:
        """Tokens the scorer adds to [x; y] besides the critique itself, plus a safety margin."""
        return len(self._prefix_ids) + len(self._suffix_ids) + 1 + max_critique_tokens + 8

    def encode_item(
        self,
        prompt: str | Sequence[Message],
        response: str,
        max_critique_tokens: int,
        num_critiques: int,
        truncate_prompt: bool = False,
        hint: str | None = None,
    ) -> EncodedItem:
        """Encode one item, checking it fits the context; left-truncate the prompt if asked.
        Control-token strings in the prompt and response are neutralised first."""
        self.check_length(prompt, response, truncate_prompt)
        messages = self.neutral_messages(prompt)
        response = self.neutralise(response)
        truncated = False
        if sum(len(m["content"]) for m in messages) > self.max_chars:
            messages, truncated = _trim_chars(messages, self.max_chars), True
        budget = self.max_model_len
        gen_extra = max_critique_tokens if num_critiques > 0 else 0
        if self.fused and num_critiques > 0:
            gen_extra += len(self.fused_tail)  # the generator writes the tail, too
        score_extra = self.overhead(max_critique_tokens) if num_critiques > 0 else 1
        while True:
            crit = self.critique_prompt_ids(messages, response, hint) if num_critiques > 0 else []
            prefix = self.score_prefix_ids(messages, response)
            gen_len, score_len = len(crit) + gen_extra, len(prefix) + score_extra
            if gen_len <= budget and score_len <= budget:
                return EncodedItem(crit, prefix, truncated)
            excess = max(gen_len, score_len) - budget
            if not truncate_prompt:
                raise InputTooLongError(
                    "prompt",
                    f"input needs {max(gen_len, score_len)} tokens with "
                    f"max_critique_tokens={max_critique_tokens}; the model context is {budget} "
                    "(shorten it, or set truncate_prompt=true to drop the prompt's oldest tokens)",
                )
            shorter = self._drop_oldest(messages, excess)
            if shorter is None:
                raise InputTooLongError(
                    "response",
                    f"the response alone does not fit the model context of {budget} tokens",
                )
            messages, truncated = shorter, True

    def _drop_oldest(self, messages: list[Message], excess: int) -> list[Message] | None:
        """Remove at least `excess` tokens from the start of the prompt, oldest turn first;
        system messages stay. None when nothing is left to remove."""
        keep_head = [m for m in messages if m["role"] == "system"]
        rest = [m for m in messages if m["role"] != "system"]
        if not rest:
            return None
        first, later = rest[0], rest[1:]
        ids = self.encode(first["content"])
        if len(ids) <= excess:
            if not later:
                return None if len(ids) == 0 else [*keep_head, {**first, "content": ""}]
            return [*keep_head, *later]
        # Cut a little extra: re-tokenising the cut text can merge into more tokens.
        cut = self.tokenizer.decode(ids[excess + 4 :])
        return [*keep_head, {**first, "content": cut}, *later]


def _control_strings(tokenizer: Any) -> set[str]:
    """The tokenizer's special-token strings (added special tokens included)."""
    out = {t for t in getattr(tokenizer, "all_special_tokens", []) if isinstance(t, str)}
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            out.add(str(added.content))
    return {t for t in out if len(t) > 1}


def _trim_chars(messages: list[Message], budget: int) -> list[Message]:
    """Drop the oldest non-system characters until the contents total at most `budget`
    characters (a cheap first cut; tokens are then cut exactly by encode_item)."""
    excess = sum(len(m["content"]) for m in messages) - budget
    out: list[Message] = []
    for m in messages:
        if excess > 0 and m["role"] != "system":
            cut = min(excess, len(m["content"]))
            excess -= cut
            m = {**m, "content": m["content"][cut:]}
            if not m["content"]:
                continue
        out.append(m)
    return out
