"""A trained reward model that plain `transformers` loads and scores exactly as rmboost does.

rmboost feeds the model `input_ids` and `attention_mask` only, so a BERT-style encoder is trained
and scored with every token in segment 0. `tokenizer(prompt, response)` in plain transformers
(and `pipeline("text-classification")` given a text pair) marks the response as segment 1, whose
embedding the model never learned from. Before saving we therefore copy the segment-0 embedding
into the other segment rows: the model was never fed them, so nothing rmboost computes changes,
and any segment ids give the same reward.

The config also names the single output `reward` and sets `problem_type: regression`, so that
`pipeline("text-classification")` returns the raw reward instead of a sigmoid of it. (The reward
trainer never passes labels to the model, so the problem type does not touch training.)
"""

from __future__ import annotations

from typing import Any

LABEL = "reward"


def make_portable(model: Any) -> None:
    """Make segment ids irrelevant and label the output; in place, before `save_pretrained`."""
    import torch

    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    token_types = getattr(embeddings, "token_type_embeddings", None)
    if token_types is not None and token_types.weight.shape[0] > 1:
        with torch.no_grad():
            token_types.weight[1:] = token_types.weight[0]
    model.config.id2label = {0: LABEL}
    model.config.label2id = {LABEL: 0}
    model.config.problem_type = "regression"
