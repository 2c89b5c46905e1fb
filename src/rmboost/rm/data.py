"""Preference pairs for reward-model training: reading, checking, mixing, formatting, truncation.

A pair file has one row per comparison: `prompt`, `chosen`, `rejected` (plain strings, or TRL's
conversational lists of {role, content} messages), and optionally `id`, `group`, `inputs`,
`margin`. Every problem a user can fix names the file, the line (or row) and the field.

Formatting turns (prompt, response) into token ids the same way for training, evaluation and
scoring. Truncation never drops an example: it cuts the PROMPT from its end (its beginning, e.g.
the question, is kept) so that the response fits whole; only a response that is itself longer
than the budget is cut (from its end), and then the prompt is left out entirely.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmboost.data.inputs import InputError, get_field, read_located_rows
from rmboost.data.messages import (
    assistant_turn,
    prompt_text,
    response_text,
    split_implicit_prompt,
    user_turn,
)
from rmboost.models import has_chat_template, quiet_transformers, token_ids

# `--prompt-field none`: score the response alone.
NO_PROMPT = "none"
# `eval-rm --format`: rmboost's pair files, RewardBench (v1) rows, RewardBench 2 rows (rm.rewardbench).
# Here, not in rm.rewardbench, so that declaring the option does not import numpy at CLI start.
TEST_FORMATS = ("pairs", "rewardbench", "rewardbench2")


@dataclass
class Pair:
    """One comparison, already reduced to text: r(prompt, chosen) should beat r(prompt, rejected)."""

    prompt: str
    chosen: str
    rejected: str
    id: str
    group: str | None = None
    margin: float | None = None
    source: str = ""  # "file, line N": where the row came from, for messages


# ---------------------------------------------------------------------------------------------
# Reading


def read_pairs(
    path: str | Path,
    prompt_field: str = "prompt",
    margin_field: str | None = None,
) -> list[Pair]:
    """Every row of a pair file as a `Pair`; a row that cannot be used raises, naming the row."""
    path = Path(path)
    pairs: list[Pair] = []
    for index, (where, row) in enumerate(read_located_rows(path)):
        for name in ("chosen", "rejected"):
            if name not in row or row[name] is None:
                raise InputError(f"{where}: missing field {name!r}")
        chosen = response_text(row["chosen"], where, "chosen")
        rejected = response_text(row["rejected"], where, "rejected")
        prompt = _prompt_of(row, prompt_field, where)
        if prompt is None:  # implicit prompt in conversational rows
            implicit = split_implicit_prompt(row["chosen"], row["rejected"])
            if implicit is None:
                raise InputError(f"{where}: missing field {prompt_field!r}")
            prompt = prompt_text(implicit[0], where, "chosen")
            chosen = response_text(implicit[1], where, "chosen")
            rejected = response_text(implicit[2], where, "rejected")
        margin = None
        if margin_field:
            try:
                margin = float(get_field(row, margin_field))
            except KeyError:
                raise InputError(f"{where}: missing field {margin_field!r} (the margin column)") from None
            except (TypeError, ValueError):
                raise InputError(f"{where}: field {margin_field!r} must be a number, got {row.get(margin_field)!r}") from None
            if not math.isfinite(margin):
                raise InputError(f"{where}: field {margin_field!r} must be finite, got {margin}")
        rid = row.get("id")
        group = row.get("group")
        pairs.append(
            Pair(
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                id=str(rid) if rid not in (None, "") else f"{path.name}:{index}",
                group=str(group) if group not in (None, "") else None,
                margin=margin,
                source=where,
            )
        )
    if not pairs:
        raise InputError(f"{path}: no pairs in the file")
    return pairs


def prompt_field_names(prompt_field: str) -> tuple[str, ...]:
    """Where a row may hold the prompt field: the field, and for `inputs.X` also a top-level X
    (pair files keep task inputs under `inputs`, prompt files at the top level)."""
    short = prompt_field.removeprefix("inputs.")
    return (prompt_field,) if short == prompt_field else (prompt_field, short)


def _prompt_of(row: dict[str, Any], prompt_field: str, where: str) -> str | None:
    if prompt_field == NO_PROMPT:
        return ""
    for name in prompt_field_names(prompt_field):
        try:
            value = get_field(row, name)
        except KeyError:
            continue
        if value is None:
            raise InputError(f"{where}: field {name!r} is null")
        return prompt_text(value, where, name)
    if prompt_field == "prompt":
        return None  # maybe implicit; the caller decides
    also = "".join(f"; no {n!r} either" for n in prompt_field_names(prompt_field)[1:])
    raise InputError(f"{where}: missing field {prompt_field!r} (the prompt field{also})")


@dataclass
class ScoreRow:
    """A row for `rmboost score`: either one response, or a pair to score on both sides."""

    row: dict[str, Any]
    prompt: str
    responses: dict[str, str]  # output column -> response text


def read_score_rows(path: str | Path, prompt_field: str = "prompt") -> list[ScoreRow]:
    """Rows with `prompt` + `response` (-> `reward`) or pair rows (-> `reward_chosen`/`reward_rejected`)."""
    out = []
    for where, row in read_located_rows(path, "input file"):
        prompt = _prompt_of(row, prompt_field, where)
        if "response" in row:
            responses = {"reward": response_text(row["response"], where, "response")}
        elif "chosen" in row and "rejected" in row:
            responses = {
                "reward_chosen": response_text(row["chosen"], where, "chosen"),
                "reward_rejected": response_text(row["rejected"], where, "rejected"),
            }
            if prompt is None and (implicit := split_implicit_prompt(row["chosen"], row["rejected"])) is not None:
                prompt = prompt_text(implicit[0], where, "chosen")
                responses = {
                    "reward_chosen": response_text(implicit[1], where, "chosen"),
                    "reward_rejected": response_text(implicit[2], where, "rejected"),
                }
        else:
            raise InputError(f"{where}: missing field 'response' (or 'chosen' and 'rejected')")
        if prompt is None:
            raise InputError(f"{where}: missing field {prompt_field!r}")
        out.append(ScoreRow(row=row, prompt=prompt, responses=responses))
    return out


# ---------------------------------------------------------------------------------------------
# Mixtures


def parse_train_spec(spec: str) -> tuple[Path, float | None]:
    """'real.jsonl:1' -> (real.jsonl, 1.0); 'real.jsonl' -> (real.jsonl, None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return Path(spec), None  # a colon inside the path, no weight
        if not math.isfinite(weight) or weight <= 0:
            raise InputError(f"--train {spec!r}: the mixture weight must be a positive number")
        return Path(head), weight
    return Path(spec), None


@dataclass
class MixturePart:
    path: Path
    weight: float | None
    available: int
    used: int = 0


@dataclass
class Mixture:
    pairs: list[Pair]
    parts: list[MixturePart] = field(default_factory=list)

    def describe(self) -> str:
        total = max(1, len(self.pairs))
        return ", ".join(
            f"{p.path.name}: {p.available} rows -> {p.used} ({p.used / total:.0%})" for p in self.parts
        )


def mix(sources: Sequence[tuple[Path, float | None, list[Pair]]], seed: int = 0) -> Mixture:
    """Combine pair files in the asked proportions without discarding any row.

    With no weights the files are simply concatenated. With weights w_i, file i gets the share
    w_i / sum(w): the file with the most rows for its share is used exactly once, every other
    file is repeated (whole copies plus a seeded sample of the rest) up to its share. Nothing is
    downsampled, so real data is never thrown away to make room for synthetic data.
    """
    weights = [w for _, w, _ in sources]
    if any(w is None for w in weights) and any(w is not None for w in weights):
        raise InputError("--train: give a mixture weight to every file (FILE:WEIGHT) or to none")
    parts = [MixturePart(path=p, weight=w, available=len(rows)) for p, w, rows in sources]
    if all(w is None for w in weights) or len(sources) == 1:
        out = [pair for _, _, rows in sources for pair in rows]
        for part in parts:
            part.used = part.available
        return Mixture(out, parts)
    total_w = sum(w for w in weights if w is not None)
    shares = [w / total_w for w in weights if w is not None]
    # The total such that every file fills its share without dropping rows of any file.
    total = max(len(rows) / share for (_, _, rows), share in zip(sources, shares, strict=True))
    rng = random.Random(seed)
    out = []
    for part, (_, _, rows), share in zip(parts, sources, shares, strict=True):
        want = max(len(rows), round(total * share))
        copies, rest = divmod(want, len(rows))
        chosen = rows * copies + rng.sample(rows, rest)
        part.used = len(chosen)
        out.extend(chosen)
    return Mixture(out, parts)


# ---------------------------------------------------------------------------------------------
# Formatting and truncation


@dataclass
class Encoded:
    ids: list[int]
    prompt_cut: bool = False  # prompt shortened (or left out) to fit
    response_cut: bool = False  # the response itself was longer than the budget


class PairFormatter:
    """(prompt, response) -> token ids, identically for training and scoring.

    Templates, by tokenizer:
    - `chat`: the tokenizer's chat template with one user turn (prompt) and one assistant turn
      (response), ending at the end-of-turn token (decoder instruct models, e.g. SmolLM2);
    - `pair`: the tokenizer's own sentence-pair form, e.g. [CLS] prompt [SEP] response [SEP] for
      BERT-style encoders (which have no EOS token: [SEP] ends the sequence); for a decoder with
      no pair form, prompt + a blank line + response + EOS, so the reward reads a fixed last token.
    """

    _P, _R = "\x1eRMBOOST_PROMPT\x1e", "\x1eRMBOOST_RESPONSE\x1e"

    def __init__(self, tokenizer: Any, max_length: int, template: str = "auto"):
        self.tok = tokenizer
        self.max_length = max_length
        if template == "auto":
            template = "chat" if has_chat_template(tokenizer) else "pair"
        if template not in ("chat", "pair"):
            raise ValueError(f"unknown template {template!r} (use auto, chat or pair)")
        self.template = template
        self.prefix, self.middle, self.suffix = self._chat() if template == "chat" else self._pair()
        fixed = len(self.prefix) + len(self.middle) + len(self.suffix)
        if max_length < fixed + 8:
            raise ValueError(f"--max-length {max_length} is too small: the template alone takes {fixed} tokens")
        self._cache: dict[str, list[int]] = {}

    def _chat(self) -> tuple[list[int], list[int], list[int]]:
        messages = [*user_turn(self._P), *assistant_turn(self._R)]
        text = self.tok.apply_chat_template(messages, tokenize=False)
        if text.count(self._P) != 1 or text.count(self._R) != 1 or text.index(self._P) > text.index(self._R):
            raise ValueError("the tokenizer's chat template does not keep message contents verbatim; use --template pair")
        before, rest = text.split(self._P)
        middle, after = rest.split(self._R)
        return token_ids(self.tok, before), token_ids(self.tok, middle), token_ids(self.tok, after.rstrip())

    def _pair(self) -> tuple[list[int], list[int], list[int]]:
        a, b = "alpha", "omega"
        ia, ib = token_ids(self.tok, a), token_ids(self.tok, b)
        full = self.tok(a, b)["input_ids"]
        i = _find(full, ia, 0)
        j = _find(full, ib, i + len(ia)) if i >= 0 else -1
        if i < 0 or j < 0:
            prefix, middle, suffix = [], [], []
        else:
            prefix, middle, suffix = full[:i], full[i + len(ia) : j], full[j + len(ib) :]
        if not middle:
            middle = token_ids(self.tok, "\n\n")
        eos = getattr(self.tok, "eos_token_id", None)
        if not suffix and eos is not None:
            suffix = [eos]
        return prefix, middle, suffix

    def token_ids(self, text: str) -> list[int]:
        """`text`'s ids (no special tokens), tokenized once per formatter."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = token_ids(self.tok, text)
        return ids

    def encode_many(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Encoded]:
        """Batch form of `encode`: tokenizes the distinct texts once (prompts repeat a lot)."""
        todo = list(dict.fromkeys(t for t in (*prompts, *responses) if t and t not in self._cache))
        with quiet_transformers():  # "sequence longer than the model maximum": we cut it in `encode`
            for start in range(0, len(todo), 512):
                chunk = todo[start : start + 512]
                for text, ids in zip(chunk, self.tok(chunk, add_special_tokens=False)["input_ids"], strict=True):
                    self._cache[text] = ids
        return [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]

    def encode(self, prompt: str, response: str) -> Encoded:
        p, r = self.token_ids(prompt), self.token_ids(response)
        budget = self.max_length - len(self.prefix) - len(self.middle) - len(self.suffix)
        enc = Encoded(ids=[])
        if len(r) > budget:
            r, p = r[:budget], []
            enc.response_cut = True
            enc.prompt_cut = bool(prompt)
        elif len(p) > budget - len(r):
            p = p[: budget - len(r)]
            enc.prompt_cut = True
        enc.ids = [*self.prefix, *p, *self.middle, *r, *self.suffix]
        return enc


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1


@dataclass
class TokenizedPairs:
    """Pairs as TRL's processed columns (`chosen_ids`, `rejected_ids`[, `margin`]) plus counts."""

    rows: list[dict[str, Any]]
    prompt_cut: int = 0
    response_cut: int = 0
    mean_tokens: float = 0.0


def tokenize_pairs(pairs: Sequence[Pair], formatter: PairFormatter, with_margin: bool = False) -> TokenizedPairs:
    chosen = formatter.encode_many([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = formatter.encode_many([p.prompt for p in pairs], [p.rejected for p in pairs])
    rows = []
    for pair, c, r in zip(pairs, chosen, rejected, strict=True):
        row: dict[str, Any] = {"chosen_ids": c.ids, "rejected_ids": r.ids}
        if with_margin:
            row["margin"] = float(pair.margin or 0.0)
        rows.append(row)
    encs = chosen + rejected
    return TokenizedPairs(
        rows=rows,
        prompt_cut=sum(e.prompt_cut for e in encs),
        response_cut=sum(e.response_cut for e in encs),
        mean_tokens=sum(len(e.ids) for e in encs) / max(1, len(encs)),
    )
