"""Score responses with a trained reward model: `RewardScorer(path).score(prompts, responses)`.

The scorer formats and truncates exactly as training did (the format is saved in
rmboost_rm.json beside the weights), so a reward at scoring time is the reward the model learned.
Every input gets a score: over-long inputs are truncated, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmboost.data.inputs import get_field
from rmboost.data.messages import prompt_text
from rmboost.models import max_positions
from rmboost.rm.backbones import META_FILE, load_reward_model
from rmboost.rm.data import NO_PROMPT, Encoded, Pair, PairFormatter, prompt_field_names
from rmboost.training import read_meta


class RewardScorer:
    """A reward model in evaluation mode; deterministic for the same inputs."""

    def __init__(
        self,
        path: str | Path,
        device: str | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
    ):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"reward model not found: {path} (expected a folder written by `rmboost train-rm`)")
        self.meta = read_meta(path, META_FILE)
        fmt = self.meta.get("format", {})
        model, tokenizer = load_reward_model(str(path), require_head=True)
        limit = max_positions(model) or 512
        length = max_length or fmt.get("max_length") or min(512, limit)
        if length > limit:
            raise ValueError(f"--max-length {length} is more than the model's {limit} positions")
        self.prompt_field: str = fmt.get("prompt_field", "prompt")
        self._setup(model, tokenizer, PairFormatter(tokenizer, length, fmt.get("template", "auto")), device, batch_size)

    @classmethod
    def from_model(
        cls, model: Any, tokenizer: Any, formatter: PairFormatter, device: str | None = None, batch_size: int = 16
    ) -> RewardScorer:
        """A scorer around a model already in memory (e.g. right after training)."""
        self = cls.__new__(cls)
        self.meta = {}
        self.prompt_field = "prompt"
        self._setup(model, tokenizer, formatter, device, batch_size)
        return self

    def _setup(self, model: Any, tokenizer: Any, formatter: PairFormatter, device: str | None, batch_size: int) -> None:
        import torch

        if device in (None, "auto"):
            device = str(next(model.parameters()).device)
            if device == "cpu" and torch.cuda.is_available():
                device = "cuda"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.formatter = formatter
        self.batch_size = max(1, batch_size)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.truncated = {"prompts": 0, "responses": 0}

    @property
    def max_length(self) -> int:
        return self.formatter.max_length

    def prompt_for(self, row: dict[str, Any], default: str = "") -> str:
        """The prompt text this model was trained on, taken from a data row.

        Uses the model's saved prompt field (e.g. `inputs.question`); a field under `inputs.` is
        also looked for at the top level (prompt rows hold task inputs there). A response-only
        model (`none`) gets "" and `default` is returned when the row has no such field.
        """
        if self.prompt_field == NO_PROMPT:
            return ""
        for name in prompt_field_names(self.prompt_field):
            try:
                return prompt_text(get_field(row, name), "row", name)
            except KeyError:
                continue
        return default

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response), in input order.

        A model trained on responses alone (`--prompt-field none`) ignores the prompts.
        """
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if self.prompt_field == NO_PROMPT:
            prompts = [""] * len(responses)
        all_encoded = self.formatter.encode_many(list(prompts), list(responses))
        self.truncated["prompts"] += sum(e.prompt_cut for e in all_encoded)
        self.truncated["responses"] += sum(e.response_cut for e in all_encoded)
        # Each distinct sequence is scored once: identical inputs get bit-identical rewards (a
        # true tie stays a tie whatever the batching), and pair files repeat responses a lot.
        slot: dict[tuple[int, ...], int] = {}
        encoded: list[Encoded] = []
        where: list[int] = []
        for e in all_encoded:
            key = tuple(e.ids)
            if key not in slot:
                slot[key] = len(encoded)
                encoded.append(e)
            where.append(slot[key])
        # Longest first, so that batches hold similar lengths and padding stays small.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        out = [0.0] * len(encoded)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                width = len(encoded[idx[0]].ids)
                ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    seq = encoded[i].ids
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for i, value in zip(idx, logits.float().view(-1).tolist(), strict=True):
                    out[i] = value
        return [out[k] for k in where]

    def score_pairs(self, pairs: Sequence[Pair]) -> tuple[list[float], list[float]]:
        """(rewards of the chosen responses, rewards of the rejected ones)."""
        prompts = [p.prompt for p in pairs]
        scores = self.score(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        return scores[: len(pairs)], scores[len(pairs) :]
