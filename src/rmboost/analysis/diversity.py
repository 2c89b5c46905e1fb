"""Diversity of a set of pairs: distinct-n over words and spread in an embedding space.

distinct-n depends on how much text there is (more text, more repeated n-grams), so the run
analysis compares groups on samples of the same number of pairs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# texts -> (len(texts), dim) array; rows are L2-normalised (they are normalised again anyway).
Encoder = Callable[[Sequence[str]], np.ndarray]

_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation, so "Paris." and "paris" are one word."""
    return _WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int) -> dict[str, Any]:
    """Unique n-grams / total n-grams, counted within each text (no n-gram spans two texts)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        toks = words(text)
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i : i + n]))
            total += 1
    return {"n": n, "unique": len(seen), "total": total, "distinct": len(seen) / total if total else None}


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1.0, norms)


def mean_pairwise_cosine_distance(vectors: np.ndarray) -> float | None:
    """Mean of 1 - cos(v_i, v_j) over all i < j.

    With unit vectors, |sum v|^2 = N + 2 * sum_{i<j} v_i.v_j, which gives the mean in O(N d)
    instead of building the N x N matrix.
    """
    v = _unit(vectors)
    n = len(v)
    if n < 2:
        return None
    s = v.sum(axis=0)
    pair_dot_sum = (float(s @ s) - n) / 2
    return 1.0 - pair_dot_sum / (n * (n - 1) / 2)


def mean_paired_cosine_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean of 1 - cos(a_i, b_i): how far each rejected response is from its chosen one."""
    if len(a) == 0:
        return None
    return float(np.mean(1.0 - np.sum(_unit(a) * _unit(b), axis=1)))


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (sentence-transformers recipe: mean pooling + L2).

    Loaded from the embedded checkpoint through transformers, offline. Texts are batched in
    length order so padding stays small; 256 tokens is the model's own training length.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, path: str | Path | None = None, batch_size: int = 64, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        from rmboost.models import minilm_path, quiet_transformers

        path = str(path or minilm_path())
        with quiet_transformers():  # no weight-loading progress bar in the middle of a run's log
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        dim = self.model.config.hidden_size
        out = np.zeros((len(texts), dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.numpy()
        return out


@functools.cache
def default_encoder() -> MiniLMEncoder:
    """The embedded MiniLM, loaded once per process."""
    return MiniLMEncoder()


def diversity_analysis(
    pairs: Sequence[tuple[str, str]], encoder: Encoder | None, embed_pairs: int | None = None
) -> dict[str, Any]:
    """distinct-1/2/3 over the unique responses of `pairs`, and embedding spread when an encoder is given.

    Responses are de-duplicated first: human data reuses one response in several pairs of the
    same prompt, which would otherwise read as low diversity. Only the first `embed_pairs` pairs
    are embedded: a mean distance, unlike distinct-n, does not drift with the sample size, and
    embedding is the slow part on a CPU.
    """
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    result: dict[str, Any] = {
        "pairs": len(pairs),
        "responses": len(texts),
        "distinct": {str(n): distinct_n(texts, n) for n in (1, 2, 3)},
        "embedded_pairs": 0,
        "pairwise_cosine_distance": None,
        "chosen_rejected_cosine_distance": None,
    }
    if encoder is not None and texts:
        sub = list(pairs[:embed_pairs]) if embed_pairs is not None else list(pairs)
        sub_texts = list(dict.fromkeys(t for pair in sub for t in pair))
        emb = np.asarray(encoder(sub_texts))
        row = {t: i for i, t in enumerate(sub_texts)}
        result["embedded_pairs"] = len(sub)
        result["pairwise_cosine_distance"] = mean_pairwise_cosine_distance(emb)
        result["chosen_rejected_cosine_distance"] = mean_paired_cosine_distance(
            emb[[row[c] for c, _ in sub]], emb[[row[r] for _, r in sub]]
        )
    return result
