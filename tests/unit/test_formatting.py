"""Engine inputs built from templates with the default model's tokenizer."""

from __future__ import annotations

import pytest

from service.checkpoint.store import CheckpointVersion
from service.contract.formatting import InputTooLongError, PromptFormatter, conversation_text
from service.engines.config import EngineConfig
from service.engines.factory import load_formatter


@pytest.fixture(scope="module")
def fmt(default_version: CheckpointVersion) -> PromptFormatter:
    return load_formatter(default_version, EngineConfig(max_model_len=256))


def test_scorer_input_ends_with_the_reward_token_and_shares_the_item_prefix(
    fmt: PromptFormatter,
) -> None:
    prefix = fmt.score_prefix_ids([{"role": "user", "content": "2+2?"}], "4")
    a = fmt.score_ids(prefix, "Correct.")
    b = fmt.score_ids(prefix, "Wrong, it is five.")
    direct = fmt.score_ids(prefix, None)
    for seq in (a, b, direct):
        assert seq[: len(prefix)] == prefix
        assert seq[-1:] == fmt.reward_ids
    assert direct == prefix + fmt.reward_ids
    text = fmt.tokenizer.decode(a)
    assert "Critique:\nCorrect.\n<|endoftext|>" in text
    assert "<|im_start|>assistant\n4<|im_end|>" in text


def test_critique_prompt_holds_prompt_response_and_ends_with_generation_prompt(
    fmt: PromptFormatter,
) -> None:
    ids = fmt.critique_prompt_ids([{"role": "user", "content": "Capital of Peru?"}], "Lima")
    text = fmt.tokenizer.decode(ids)
    assert "Capital of Peru?" in text and "[Response]\nLima" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_multi_turn_prompts_become_a_transcript() -> None:
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
    ]
    assert conversation_text(msgs) == "User: hi\n\nAssistant: hello\n\nUser: 2+2?"
    assert conversation_text([{"role": "user", "content": "only"}]) == "only"


def test_long_critique_is_cut_to_fit_the_context(fmt: PromptFormatter) -> None:
    prefix = fmt.score_prefix_ids([{"role": "user", "content": "q"}], "a")
    seq = fmt.score_ids(prefix, "word " * 1000)
    assert len(seq) <= fmt.max_model_len and seq[-1:] == fmt.reward_ids


def test_too_long_prompt_names_the_prompt(fmt: PromptFormatter) -> None:
    with pytest.raises(InputTooLongError) as err:
        fmt.encode_item("word " * 400, "ok", max_critique_tokens=16, num_critiques=2)
    assert err.value.field == "prompt"


def test_left_truncation_keeps_the_system_message_and_the_latest_turns(
    fmt: PromptFormatter,
) -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "old " * 150},
        {"role": "assistant", "content": "older answer"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    enc = fmt.encode_item(msgs, "4", max_critique_tokens=16, num_critiques=2, truncate_prompt=True)
    assert enc.truncated
    text = fmt.tokenizer.decode(enc.score_prefix)
    assert "Be brief." in text and "What is 2+2?" in text
    assert len(enc.critique_prompt) + 16 <= fmt.max_model_len
    assert len(enc.score_prefix) + fmt.overhead(16) <= fmt.max_model_len


def test_a_single_long_prompt_is_cut_from_the_left(fmt: PromptFormatter) -> None:
    words = " ".join(f"w{i}" for i in range(400))
    enc = fmt.encode_item(words, "ok", max_critique_tokens=8, num_critiques=0, truncate_prompt=True)
    text = fmt.tokenizer.decode(enc.score_prefix)
    assert enc.truncated and "w399" in text and "w0 " not in text


def test_response_that_cannot_fit_names_the_response(fmt: PromptFormatter) -> None:
    with pytest.raises(InputTooLongError) as err:
        fmt.encode_item(
            "q", "word " * 400, max_critique_tokens=8, num_critiques=1, truncate_prompt=True
        )
    assert err.value.field == "response"


def test_fitting_input_is_not_marked_truncated(fmt: PromptFormatter) -> None:
    enc = fmt.encode_item("q", "a", max_critique_tokens=8, num_critiques=1, truncate_prompt=True)
    assert not enc.truncated and enc.critique_prompt
    assert fmt.encode_item("q", "a", max_critique_tokens=8, num_critiques=0).critique_prompt == []


def test_chat_markers_come_from_the_template(fmt: PromptFormatter) -> None:
    assert fmt.markers is not None
    assert fmt.markers.header == "<|im_start|>{role}\n" and fmt.markers.end == "<|im_end|>\n"


def test_rendered_conversations_parse_back_to_their_messages(fmt: PromptFormatter) -> None:
    msgs = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi\nthere"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "2+2?"},
    ]
    prompt = fmt._chat(msgs, True)
    assert fmt.split_rendered(prompt + "4<|im_end|>\n") == (msgs, "4")
    assert fmt.split_rendered(prompt + "4" + "<|im_end|>" * 3, prompt) == (msgs, "4")
    # The system message the template adds by itself is not part of the caller's prompt.
    only_user = [{"role": "user", "content": "q"}]
    assert fmt.split_rendered(fmt._chat(only_user, True) + "a") == (only_user, "a")


def test_text_outside_the_template_stays_plain(fmt: PromptFormatter) -> None:
    assert fmt.parse_rendered("Question: what is 2+2?") == [
        {"role": "user", "content": "Question: what is 2+2?"}
    ]
    with pytest.raises(ValueError, match="prompts"):
        fmt.split_rendered("no assistant header here")


def test_templates_that_do_not_wrap_turns_have_no_markers() -> None:
    from service.contract.formatting import find_chat_markers

    def plain(messages: list[dict[str, str]], gen: bool) -> str:
        return " ".join(m["content"] for m in messages)

    assert find_chat_markers(plain) is None


def test_a_hint_reaches_the_training_critique_prompt_only(fmt: PromptFormatter) -> None:
    plain = fmt.encode_item("What is 2 + 2?", "5", 32, 1)
    hinted = fmt.encode_item("What is 2 + 2?", "5", 32, 1, hint="the answer is 4, not 5")
    text = fmt.tokenizer.decode(hinted.critique_prompt)
    assert "Reference check" in text and "the answer is 4, not 5" in text
    assert "Reference check" not in fmt.tokenizer.decode(plain.critique_prompt)
    assert hinted.score_prefix == plain.score_prefix  # the reward never sees a hint


def test_the_score_digits_are_single_tokens_of_the_default_tokenizer(fmt: PromptFormatter) -> None:
    ids = fmt.digit_ids("12345")
    assert ids is not None and len(set(ids)) == 5
    assert [fmt.tokenizer.decode([i]) for i in ids] == list("12345")
