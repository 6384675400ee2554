"""The revision prompt, defined once: /refine asks the policy for a revision with it, and the
trainer's critique-utility stage (issue 12) is to reuse this same one.

As in CTRL, a revision is a multi-turn exchange: the user's prompt, the assistant's response,
then a user turn carrying the critique and an instruction to finalise the answer in the same
format, so the policy answers as the assistant of the same conversation."""

from __future__ import annotations

from collections.abc import Sequence

from service.contract.formatting import Message

REVISION_USER = (
    "Here is a review of your response:\n\n{critique}\n\n"
    "Using this review, write your final answer to my original request. Fix what the review "
    "found wrong and keep what is right. Reply with the complete answer only, in the same "
    "format as your first response, without mentioning the review."
)


def revision_messages(messages: Sequence[Message], response: str, critique: str) -> list[Message]:
    """The conversation the policy continues: prompt, response, then the critique turn."""
    return [
        *messages,
        {"role": "assistant", "content": response},
        {"role": "user", "content": REVISION_USER.format(critique=critique.strip())},
    ]
