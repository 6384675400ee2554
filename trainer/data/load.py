"""Read preference pairs from JSONL or a dataset saved with HF `datasets.save_to_disk`.

Accepted field names: prompt / chosen / rejected with an optional category (ours); RewardBench's
`subset`; OpenRLHF's `prompt`/`input`, `chosen`/`chosen_response`, `rejected`/`rejected_response`.
A prompt may be a string or a chat message list; a chosen/rejected given as a message list (the
whole conversation, as in HH-RLHF style data) contributes its last assistant turn, and its
earlier turns become the prompt when no prompt field is given."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trainer.data.pairs import Message, PreferencePair

PROMPT_KEYS = ("prompt", "input", "question")
CHOSEN_KEYS = ("chosen", "chosen_response", "response_chosen")
REJECTED_KEYS = ("rejected", "rejected_response", "response_rejected")
CATEGORY_KEYS = ("category", "subset", "source")


class DataError(ValueError):
    """A record that cannot be read as a preference pair; names the record and the field."""


def _first(record: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in record and record[k] is not None:
            return record[k]
    return None


def _messages(value: Any, where: str) -> list[Message]:
    if not isinstance(value, list) or not all(
        isinstance(m, Mapping)
        and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str)
        for m in value
    ):
        raise DataError(f"{where}: expected a string or a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _reply(value: Any, where: str) -> tuple[str, list[Message] | None]:
    """The reply text, and the conversation before it when given as a message list."""
    if isinstance(value, str):
        return value, None
    msgs = _messages(value, where)
    if not msgs or msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: a message list must end with an assistant turn")
    return msgs[-1]["content"], msgs[:-1]


def to_pair(record: Mapping[str, Any], where: str) -> PreferencePair:
    chosen_raw, rejected_raw = _first(record, CHOSEN_KEYS), _first(record, REJECTED_KEYS)
    if chosen_raw is None:
        raise DataError(f"{where}: missing field 'chosen'")
    if rejected_raw is None:
        raise DataError(f"{where}: missing field 'rejected'")
    chosen, chosen_ctx = _reply(chosen_raw, f"{where}.chosen")
    rejected, _ = _reply(rejected_raw, f"{where}.rejected")
    raw_prompt = _first(record, PROMPT_KEYS)
    prompt: str | list[Message]
    if raw_prompt is None:
        if not chosen_ctx:
            raise DataError(f"{where}: missing field 'prompt'")
        prompt = chosen_ctx
    elif isinstance(raw_prompt, str):
        prompt = raw_prompt
    else:
        prompt = _messages(raw_prompt, f"{where}.prompt")
    category = _first(record, CATEGORY_KEYS)
    return PreferencePair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        category=str(category) if category is not None else "general",
        id=str(record.get("id", where)),
        family=str(record.get("family") or ""),
        check=record["check"] if isinstance(record.get("check"), dict) else None,
    )


def read_jsonl(path: Path) -> list[PreferencePair]:
    pairs = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{n}: expected a JSON object")
            pairs.append(to_pair(record, f"{path.name}:{n}"))
    return pairs


def read_records(records: Iterable[Mapping[str, Any]], name: str) -> list[PreferencePair]:
    return [to_pair(r, f"{name}[{i}]") for i, r in enumerate(records)]


def load_pairs(path: Path) -> list[PreferencePair]:
    """A .jsonl file, or a directory written by `datasets.Dataset.save_to_disk`."""
    if path.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # a DatasetDict: take its train split
            ds = ds["train"]
        return read_records(ds, path.name)
    return read_jsonl(path)


def write_json_lines(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    """One JSON object per line, written to a temporary file and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(pairs: Iterable[PreferencePair], path: Path) -> None:
    write_json_lines((p.to_json() for p in pairs), path)
