"""Pull tagged answers out of raw model text, and say precisely why when there is none.

Models wrap answers in chatter, forget closing tags, repeat tags or echo the instruction.
A parse either returns clean text or raises ParseError with a short machine-readable reason
that ends up in failures.jsonl; it never returns an empty string.
"""

from __future__ import annotations

import re


class ParseError(ValueError):
    """The raw text holds no usable answer. `reason` is a short code such as 'no_tag' or 'empty'."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_ANY_OPEN = re.compile(r"<\s*[a-zA-Z_]+\s*>")
_PLACEHOLDERS = {"...", "[response]", "your response here", "response"}


def extract_tag(text: str, tag: str, *, required: bool = True) -> str | None:
    """The content of the last non-empty `<tag>...</tag>` block in `text`.

    - surrounding text is ignored;
    - a missing closing tag takes everything after the last opening tag;
    - of repeated blocks the last non-empty one wins (models often restate the template first);
    - an empty or placeholder block is `empty`; no opening tag at all is `no_tag`.
    Returns None instead of raising `no_tag` when `required` is False.
    """
    if not text or not text.strip():
        raise ParseError("empty", "the model returned no text")
    open_re = re.compile(rf"<\s*{re.escape(tag)}\s*>", re.IGNORECASE)
    # A closing tag the model left without its '>' (at the end, or before a line break) still closes.
    close_re = re.compile(rf"<\s*/\s*{re.escape(tag)}\s*(?:>|$|(?=\n))", re.IGNORECASE)
    opens = list(open_re.finditer(text))
    if not opens:
        if required:
            raise ParseError("no_tag", f"no <{tag}> tag in the answer")
        return None
    candidates: list[str] = []
    for i, m in enumerate(opens):
        end_limit = opens[i + 1].start() if i + 1 < len(opens) else len(text)
        close = close_re.search(text, m.end(), end_limit)
        if close is None:  # unclosed: the block ends where another tag block begins
            other = _ANY_OPEN.search(text, m.end(), end_limit)
            end_limit = other.start() if other else end_limit
        body = text[m.end() : close.start() if close else end_limit]
        candidates.append(_clean(body))
    for body in reversed(candidates):
        if body and body.lower() not in _PLACEHOLDERS:
            return body
    raise ParseError("empty", f"<{tag}> holds no text")


def extract_list(text: str, tag: str) -> list[str]:
    """Comma/newline separated items inside `<tag>`, or [] when the tag is absent or empty."""
    try:
        body = extract_tag(text, tag, required=False)
    except ParseError:
        return []
    if not body:
        return []
    items = re.split(r"[,\n;]+", body)
    return [it.strip(" -*•\t()[]\"'") for it in items if it.strip(" -*•\t()[]\"'")]


def _clean(body: str) -> str:
    # Strip stray closing tags of other blocks and surrounding whitespace/code fences.
    body = body.strip()
    body = re.sub(r"^```[a-zA-Z]*\n?|\n?```$", "", body).strip()
    return body


def normalize_for_compare(text: str) -> str:
    """Lower-cased, whitespace-folded text: two responses equal under this are the same response."""
    return " ".join(text.lower().split())


_REFUSAL = re.compile(
    r"\b(i can(?:not|'t)|i am unable|i'm unable|i won't|as an ai|i'm sorry, but)\b", re.IGNORECASE
)


def looks_like_refusal(text: str) -> bool:
    """An untagged answer that declines the task ("I can't help with that")."""
    return bool(_REFUSAL.search(text[:300]))
