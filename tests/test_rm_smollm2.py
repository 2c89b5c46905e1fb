"""The decoder backbone: SmolLM2-135M-Instruct from the embedded GGUF, converted once, trained, and
loaded back with plain transformers.

The conversion (about a minute on 2 cores) is cached under $RMBOOST_HOME or ~/.cache/rmboost, so
only the first run pays for it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rmboost.models import CONVERTED_MARKER, resolve_model
from rmboost.rm.backbones import load_reward_model
from rmboost.rm.data import PairFormatter
from rmboost.rm.score import RewardScorer
from rmboost.rm.train import TrainRMConfig, train_rm

pytestmark = [pytest.mark.train, pytest.mark.slow]  # the SmolLM2 conversion (cached) and training


def test_smollm2_converts_unmarked_and_trains(tmp_path: Path, qa_feedback_dir: Path) -> None:
    from rmboost.data.qa_feedback import load_human_pairs

    path = Path(resolve_model("smollm2"))
    assert (path / CONVERTED_MARKER).is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # saved as a plain float checkpoint
    assert config["model_type"] == "llama"

    model, tok = load_reward_model(str(path))
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    # The reward is read at the last non-pad token: padding must not be the end-of-turn token.
    assert tok.pad_token_id != tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.pad_token_id == tok.pad_token_id
    fmt = PairFormatter(tok, 48)
    assert fmt.template == "chat"
    enc = fmt.encode("Who wrote Hamlet? " * 20, "Shakespeare wrote it.")
    assert len(enc.ids) == 48 and enc.prompt_cut and enc.ids[-1] == tok.eos_token_id
    assert tok.decode(enc.ids).endswith("<|im_start|>assistant\nShakespeare wrote it.<|im_end|>")

    pairs = load_human_pairs(qa_feedback_dir)[:4]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "smol-rm"
    s = train_rm(
        TrainRMConfig(
            train=[str(train)],
            output=out,
            backbone="smollm2",
            prompt_field="inputs.question",
            max_length=64,
            batch_size=2,
            max_steps=2,
            show_progress=False,
        )
    )
    assert s["model_class"] == "LlamaForSequenceClassification" and s["steps"] == 2
    assert math.isfinite(s["train_loss"])
    scorer = RewardScorer(out, device="cpu", batch_size=2)
    prompts = [p["inputs"]["question"] for p in pairs]
    rewards = scorer.score(prompts, [p["chosen"] for p in pairs])
    assert all(math.isfinite(r) for r in rewards) and len(set(rewards)) > 1
    assert rewards == scorer.score(prompts, [p["chosen"] for p in pairs])
    # Plain transformers take the whole input; a window wide enough that rmboost cuts nothing either.
    wide = RewardScorer(out, device="cpu", batch_size=2, max_length=256)
    _plain_transformers_give_rmboost_scores(out, prompts, [p["chosen"][:120] for p in pairs], wide)


def _plain_transformers_give_rmboost_scores(folder: Path, prompts: list[str], responses: list[str],
                                            scorer: RewardScorer) -> None:
    """The decoder input documented in docs/reward-models.md: the chat template with one user and
    one assistant turn, trailing whitespace stripped, tokenized without added special tokens; fed
    to AutoModelForSequenceClassification and to pipeline("text-classification")."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    ours = scorer.score(prompts, responses)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                     tokenize=False).rstrip() for p, r in zip(prompts, responses, strict=True)]
    encoded = [tok(t, add_special_tokens=False, return_tensors="pt") for t in texts]
    # The same tokens as rmboost's formatter, and short enough that nothing was cut.
    for enc, p, r in zip(encoded, prompts, responses, strict=True):
        assert enc["input_ids"][0].tolist() == scorer.formatter.encode(p, r).ids
    assert max(e["input_ids"].shape[1] for e in encoded) < scorer.max_length
    with torch.no_grad():
        plain = [model(**enc).logits[0, 0].item() for enc in encoded]
        # Padded together in one batch: the reward is read at the last non-pad token (<|im_end|>).
        batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        padded = model(**batch).logits[:, 0].tolist()
    pipe = pipeline("text-classification", model=str(folder), device="cpu")
    piped = [o["score"] for o in pipe(texts, add_special_tokens=False)]
    assert len({e["input_ids"].shape[1] for e in encoded}) > 1  # the batch really needed padding
    assert np.allclose(plain, ours, atol=1e-4), (plain, ours)
    assert np.allclose(padded, ours, atol=1e-4), (padded, ours)
    assert np.allclose(piped, ours, atol=1e-4), (piped, ours)
    assert model.config.problem_type == "regression" and model.config.id2label == {0: "reward"}
