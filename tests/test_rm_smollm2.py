"""The decoder backbone: SmolLM2-135M-Instruct from the embedded GGUF, converted once and trained.

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
