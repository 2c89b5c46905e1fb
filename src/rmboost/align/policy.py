"""The policy: a causal LM loaded for DPO or sampling, and its prompts cut to a token budget.

`rmboost dpo` trains it and `rmboost sample` generates from it; both load it the same way and
cut prompts the same way, so a policy is sampled in the format it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmboost.data.inputs import InputError
from rmboost.data.messages import Text, chat_prompt, last_user_turn
from rmboost.models import (
    has_chat_template,
    quiet_transformers,
    resolve_model,
    token_ids,
    unmark_quantized,
)


def load_policy(source: str, log: Any = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved path) for a causal LM, float32, never marked quantized.

    `source`: smollm2 (embedded), a causal-LM folder (also a LoRA adapter saved by
    `rmboost dpo --lora`, merged on load), a `.gguf` file or a Hub id.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source == "minilm":
        raise ValueError("--policy minilm is an encoder, not a causal LM: use smollm2 or a causal-LM checkpoint")
    folder = Path(source).expanduser()
    # A LoRA policy saved by `rmboost dpo --lora` is an adapter folder (no config.json of its own).
    path = str(folder) if (folder / "adapter_config.json").is_file() else resolve_model(source, log=log)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        if (Path(path) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    unmark_quantized(model)
    return model, tokenizer, path


def policy_prompt(tokenizer: Any, prompt: Text, where: str = "prompt") -> Text:
    """The prompt in the policy's format: a plain prompt becomes a user turn for a chat policy;
    a chat prompt for a policy without a chat template is an error."""
    if has_chat_template(tokenizer):
        return chat_prompt(prompt)
    if not isinstance(prompt, str):
        raise InputError(f"{where}: a chat-format prompt, but the policy's tokenizer has no chat template")
    return prompt


def prompt_tokens(tokenizer: Any, prompt: Text) -> int:
    """Tokens the prompt takes as the policy sees it (chat: rendered, with the assistant header)."""
    if isinstance(prompt, str):
        return len(token_ids(tokenizer, prompt))
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return len(token_ids(tokenizer, text))


def fit_prompt(tokenizer: Any, prompt: Text, limit: int, where: str = "prompt", protect: str = "") -> tuple[Text, bool]:
    """The prompt cut to `limit` tokens from the end of its last user turn; (prompt, was it cut).

    `protect` is a prefix of that turn that must survive whole (the goal of the `user` variant):
    if it does not fit, that is an error, never a silently cut goal.
    """
    total = prompt_tokens(tokenizer, prompt)
    if total <= limit:
        return prompt, False
    if isinstance(prompt, str):
        msgs: list[dict[str, Any]] = [{"content": prompt}]
        last = 0
    else:
        msgs = [dict(m) for m in prompt]
        last = last_user_turn(msgs)
        last = len(msgs) - 1 if last is None else last
    content = msgs[last]["content"]
    if protect and not content.startswith(protect):
        protect = ""
    rest_ids = token_ids(tokenizer, content[len(protect) :])
    keep = len(rest_ids) - (total - limit)

    def render(n: int) -> Text:
        msgs[last]["content"] = protect + tokenizer.decode(rest_ids[:n])
        return msgs[0]["content"] if isinstance(prompt, str) else [dict(m) for m in msgs]

    for _ in range(8):  # token merges at the cut can shift the count by a few; converge on it
        if keep < 1:
            what = "the goal and the rest of the prompt" if protect else "the prompt without its last user turn"
            raise InputError(
                f"{where}: {what} already take(s) more than --max-prompt-length {limit} tokens; raise it"
            )
        fitted = render(keep)
        now = prompt_tokens(tokenizer, fitted)
        if now <= limit:
            return fitted, True
        keep -= now - limit
    raise InputError(f"{where}: could not fit the prompt into --max-prompt-length {limit}")
