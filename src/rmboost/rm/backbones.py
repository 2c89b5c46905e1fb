"""A reward model on disk: a backbone or a trained model loaded as a one-output classifier.

Which backbones exist and how they are found or converted is `rmboost.models`; this module adds
what is particular to reward models: the scalar head, the pad token the reward is read before,
and the name of the metadata file `train-rm` writes beside the weights.
"""

from __future__ import annotations

import contextlib
from typing import Any

from rmboost.models import ensure_pad_token, quiet_transformers, unmark_quantized

META_FILE = "rmboost_rm.json"  # format (prompt field, max length, template), config and summary


def load_reward_model(
    source: str, tokenizer_source: str | None = None, require_head: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) with one scalar output (num_labels=1), float32, pad token set.

    A causal-LM checkpoint gets a fresh `score` head (expected; the warning is silenced, as TRL
    does); an encoder gets a fresh classifier on its pooled [CLS] output. `require_head=True`
    (scoring) refuses a checkpoint whose reward head would be random.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    # Scoring must see a missing head, so the cross-architecture silencing is for training only.
    head_ok = contextlib.nullcontext() if require_head else suppress_seqcls_warning()
    with quiet_transformers(), head_ok:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source or source)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, dtype=torch.float32, output_loading_info=True
        )
    if require_head and info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"{source}: not a trained reward model (weights missing from the checkpoint: "
            f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        )
    unmark_quantized(model)
    ensure_pad_token(tokenizer, model)
    return model, tokenizer
