"""Pair rows, chat messages and text: the one place that converts between them.

A pair row holds `prompt`, `chosen` and `rejected` as plain strings or in TRL's conversational
form (lists of `{role, content}` messages). In TRL's implicit-prompt form there is no `prompt`:
the leading messages that `chosen` and `rejected` share are the prompt. The rules, everywhere:

- plain -> chat: a prompt becomes one user turn, a response one assistant turn;
- one format per row: if any of prompt/chosen/rejected is chat, all three become chat
  (TRL wants a chat prompt with chat responses);
- chat -> text, for a prompt: the content of a single message as is; several messages as
  "role: content" blocks separated by a blank line (the roles carry meaning: system vs user);
- chat -> text, for a response: the contents of its assistant messages joined by a blank line,
  or of all its messages when none is from the assistant. This is the text a reward model is
  trained on and scored on, the judge is shown and the analyses measure.

Malformed values raise `InputError` naming the row and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmboost.data.inputs import InputError, read_located_rows, row_id

Chat = list[dict[str, Any]]
Text = str | Chat  # a prompt or a response, plain or chat


def check_messages(value: Any, where: str, field_name: str) -> Chat:
    """`value` if it is a non-empty list of {role, content} messages with string content."""
    if not isinstance(value, list) or not value:
        raise InputError(
            f"{where}: field {field_name!r} must be a string or a non-empty list of "
            f"{{role, content}} messages, got {type(value).__name__}"
        )
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise InputError(f"{where}: field {field_name!r}, message {i}: expected {{role, content}} with string content")
    return value


def user_turn(text: str) -> Chat:
    return [{"role": "user", "content": text}]


def assistant_turn(text: str) -> Chat:
    return [{"role": "assistant", "content": text}]


def chat_prompt(prompt: Text) -> Chat:
    """A plain prompt as one user turn; a conversation as is."""
    return user_turn(prompt) if isinstance(prompt, str) else prompt


def chat_response(response: Text) -> Chat:
    """A plain response as one assistant turn; messages as they are."""
    return assistant_turn(response) if isinstance(response, str) else response


def to_conversational(row: dict[str, Any]) -> dict[str, Any]:
    """A pair row with prompt, chosen and rejected in TRL's conversational form; other columns kept."""
    return {
        **row,
        "prompt": chat_prompt(row["prompt"]),
        "chosen": chat_response(row["chosen"]),
        "rejected": chat_response(row["rejected"]),
    }


def last_user_turn(messages: Chat) -> int | None:
    """Index of the last user message (the turn a response answers), None if there is none."""
    return max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)


def split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Chat, Chat, Chat] | None:
    """TRL's implicit prompt: (shared leading messages, chosen's rest, rejected's rest), or None."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return None
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        return None
    return chosen[:n], chosen[n:], rejected[n:]


def prompt_text(value: Any, where: str = "row", field_name: str = "prompt") -> str:
    """A prompt as text: a string as is; one message as its content; several as 'role: content' blocks."""
    if isinstance(value, str):
        return value
    msgs = check_messages(value, where, field_name)
    if len(msgs) == 1:
        return msgs[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def response_text(value: Any, where: str = "row", field_name: str = "response") -> str:
    """A response as text: a string as is; messages as their assistant contents (all if none), blank-line joined."""
    if isinstance(value, str):
        return value
    msgs = check_messages(value, where, field_name)
    assistant = [m["content"] for m in msgs if m["role"] == "assistant"] or [m["content"] for m in msgs]
    return "\n\n".join(assistant)


def inputs_row(pair: dict[str, Any], index: int, where: str) -> dict[str, Any]:
    """The task's input row of a pair ({id, **inputs}): what a judge is shown beside the responses.

    `where` locates the pair for an error ("FILE, line N"); `index` is its position (its id if it has none).
    """
    inputs = pair.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise InputError(
            f"{where} (id {pair.get('id')}): no 'inputs' column, which the judge needs to "
            "see the task's inputs (pairs from rmboost generate and the QA-Feedback loader have it)"
        )
    return {"id": row_id(pair, index), **inputs}


@dataclass
class SourcePair:
    """One pair row with its prompt and responses in their original format (all plain or all chat)."""

    where: str  # "file, line N"
    index: int
    row: dict[str, Any]
    prompt: Text
    chosen: Text
    rejected: Text

    @property
    def id(self) -> str:
        return row_id(self.row, self.index)


def split_pair(row: dict[str, Any], where: str, index: int) -> SourcePair:
    """prompt/chosen/rejected of a row, validated, in one format; an implicit prompt is split off."""
    for name in ("chosen", "rejected"):
        if name not in row or row[name] is None:
            raise InputError(f"{where}: missing field {name!r}")
        if not isinstance(row[name], str):
            check_messages(row[name], where, name)
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if prompt is None:
        implicit = split_implicit_prompt(chosen, rejected)
        if implicit is None:
            raise InputError(f"{where}: missing field 'prompt'")
        prompt, chosen, rejected = implicit
    elif not isinstance(prompt, str):
        check_messages(prompt, where, "prompt")
    if not all(isinstance(v, str) for v in (prompt, chosen, rejected)):
        prompt, chosen, rejected = chat_prompt(prompt), chat_response(chosen), chat_response(rejected)
    return SourcePair(where, index, row, prompt, chosen, rejected)


def read_source_pairs(path: str | Path) -> list[SourcePair]:
    """Every row of a pair file as a `SourcePair`; an empty file is an error."""
    pairs = [split_pair(row, where, i) for i, (where, row) in enumerate(read_located_rows(path))]
    if not pairs:
        raise InputError(f"{path}: no pairs in the file")
    return pairs
