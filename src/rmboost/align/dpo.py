"""DPO on plain or relabelled preference pairs, with TRL's DPOTrainer.

The default policy is SmolLM2-135M-Instruct, converted once from the GGUF file embedded in the
install to a float32 Hugging Face checkpoint (the same cached conversion as the reward-model
backbone, `rmboost.rm.backbones`). Any causal-LM folder, `.gguf` file or Hub id works too.

Two things are done before TRL sees the data:
- plain rows become chat rows when the policy has a chat template (an instruct policy is trained
  on the format it is sampled with; relabelled `system` rows are chat rows already);
- the PROMPT is cut to `max_prompt_length` tokens from the end of its last user turn. TRL 1.16
  has no prompt limit: it truncates prompt+response at `max_length` keeping the start, and drops
  rows whose prompt alone fills `max_length`. Cutting the prompt's end keeps the goal (a system
  message or the start of the user turn) and the start of the user text (e.g. the question),
  and leaves room for the responses; only a response longer than what remains is cut, by TRL.

Device settings are the reward model's (`rmboost.rm.train.device_settings`): float32 and no
gradient checkpointing on CPU, bf16 on CUDA where supported. Multi-GPU is the Trainer's:
`accelerate launch -m rmboost.cli dpo ...`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rmboost.align.relabel import GoalSpec, SourcePair, split_pair
from rmboost.data.inputs import InputError
from rmboost.rm.data import _numbered_rows

META_FILE = "rmboost_dpo.json"
LOSSES_WITH_SMOOTHING = ("robust", "exo_pair", "aot", "aot_unpaired")


@dataclass
class DPOTrainConfig:
    """Everything `train_dpo` needs; the CLI fills it from flags (defaults: see docs/alignment.md)."""

    train: Path
    output: Path
    policy: str = "smollm2"  # smollm2 (embedded), a causal-LM folder, a .gguf file or a Hub id
    eval: Path | None = None  # DPO loss/reward accuracy on these pairs after training
    beta: float = 0.1
    learning_rate: float = 5e-6
    loss: str = "sigmoid"  # any TRL loss_type
    label_smoothing: float = 0.0  # only for losses that use it (robust, exo_pair, aot)
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    lr_scheduler: str = "cosine"
    max_length: int = 512  # prompt + response tokens
    max_prompt_length: int = 256
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    seed: int = 0
    max_steps: int | None = None
    device: str = "auto"
    bf16: bool | None = None
    gradient_checkpointing: bool | None = None
    logging_steps: int = 10
    show_progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # passed to DPOConfig as is


# ---------------------------------------------------------------------------------------------
# Policy and data


def load_policy(source: str, log: Any = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved path) for a causal LM, float32, never marked quantized."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rmboost.rm.backbones import quiet_transformers, resolve_backbone, unmark_quantized

    if source == "minilm":
        raise ValueError("--policy minilm is an encoder, not a causal LM: use smollm2 or a causal-LM checkpoint")
    folder = Path(source).expanduser()
    # A LoRA policy saved by `rmboost dpo --lora` is an adapter folder (no config.json of its own).
    path = str(folder) if (folder / "adapter_config.json").is_file() else resolve_backbone(source, log=log)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        if (Path(path) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    unmark_quantized(model)
    return model, tokenizer, path


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def prompt_tokens(tokenizer: Any, prompt: str | list[dict[str, Any]]) -> int:
    """Tokens the prompt takes as the policy sees it (chat: rendered, with the assistant header)."""
    if isinstance(prompt, str):
        return len(_ids(tokenizer, prompt))
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return len(_ids(tokenizer, text))


def fit_prompt(
    tokenizer: Any, prompt: str | list[dict[str, Any]], limit: int, where: str = "prompt", protect: str = ""
) -> tuple[str | list[dict[str, Any]], bool]:
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
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=len(msgs) - 1)
    content = msgs[last]["content"]
    if protect and not content.startswith(protect):
        protect = ""
    rest_ids = _ids(tokenizer, content[len(protect) :])
    keep = len(rest_ids) - (total - limit)

    def render(n: int) -> str | list[dict[str, Any]]:
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


def goal_prefix(row: dict[str, Any]) -> str:
    """The goal text a `user`-variant relabelled row starts its user turn with ("" otherwise)."""
    spec = GoalSpec.from_row(row)
    if spec is None or spec.variant != "user" or "goal_score" not in row:
        return ""
    return spec.text(float(row["goal_score"])) + "\n\n"


@dataclass
class PreparedData:
    rows: list[dict[str, Any]]
    prompts_cut: int = 0
    responses_cut: int = 0  # about: responses longer than max_length minus their prompt
    no_signal: int = 0  # about: rows whose chosen and rejected are the same once cut (no DPO gradient)
    chat: bool = True
    goals: list[dict[str, Any]] = field(default_factory=list)  # distinct goal specs in the file
    plain_rows: int = 0  # rows without a goal


def prepare_rows(path: Path, tokenizer: Any, max_prompt_length: int, max_length: int) -> PreparedData:
    """Pair rows -> TRL rows ({prompt, chosen, rejected}), chat-formatted for a chat policy, prompts fitted."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    data = PreparedData(rows=[], chat=chat)
    specs: dict[str, dict[str, Any]] = {}
    for index, (where, row) in enumerate(_numbered_rows(Path(path))):
        pair: SourcePair = split_pair(row, where, index)
        prompt, chosen, rejected = pair.prompt, pair.chosen, pair.rejected
        if isinstance(prompt, str) and chat:
            prompt = [{"role": "user", "content": prompt}]
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        elif not isinstance(prompt, str) and not chat:
            raise InputError(f"{where}: a chat-format row, but the policy's tokenizer has no chat template")
        try:
            protect = goal_prefix(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed goal columns ({exc})") from None
        prompt, cut = fit_prompt(tokenizer, prompt, max_prompt_length, where, protect)
        data.prompts_cut += cut
        budget = max_length - prompt_tokens(tokenizer, prompt) - 2  # - end-of-turn tokens
        kept = []
        for response in (chosen, rejected):
            text = response if isinstance(response, str) else "".join(m["content"] for m in response)
            ids = _ids(tokenizer, text)
            data.responses_cut += len(ids) > budget
            kept.append(ids[:budget])
        # Sampled responses often share a long opening: cut to the same tokens, a pair teaches nothing.
        data.no_signal += kept[0] == kept[1]
        data.rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        try:
            spec = GoalSpec.from_row(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed goal columns ({exc})") from None
        if spec is None:
            data.plain_rows += 1
        else:
            specs.setdefault(json.dumps(spec.as_dict(), sort_keys=True), spec.as_dict())
    if not data.rows:
        raise InputError(f"{path}: no pairs in the file")
    data.goals = list(specs.values())
    return data


# ---------------------------------------------------------------------------------------------
# Training


def _check(cfg: DPOTrainConfig) -> None:
    for name, value in (("--epochs", cfg.epochs), ("--learning-rate", cfg.learning_rate), ("--beta", cfg.beta)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be positive, got {value}")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ValueError("--batch-size and --grad-accum must be at least 1")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.max_prompt_length < 8 or cfg.max_prompt_length > cfg.max_length - 16:
        raise ValueError(
            f"--max-prompt-length {cfg.max_prompt_length} must be at least 8 and leave 16 or more of "
            f"--max-length {cfg.max_length} for the response"
        )
    if not 0 <= cfg.label_smoothing < 0.5:
        raise ValueError(f"--label-smoothing must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.label_smoothing and cfg.loss not in LOSSES_WITH_SMOOTHING:
        # TRL 1.16's sigmoid loss has no label smoothing (older TRL had the conservative variant);
        # passing it would be silently ignored.
        raise ValueError(
            f"--label-smoothing has no effect with --loss {cfg.loss} in TRL; use it with --loss "
            f"{' or '.join(LOSSES_WITH_SMOOTHING[:2])} (robust DPO / EXO)"
        )
    if cfg.output.exists() and not cfg.output.is_dir():
        raise ValueError(f"--output {cfg.output} exists and is not a folder")


def _log_callback(console: Any) -> Any:
    from transformers import TrainerCallback

    class DPOLog(TrainerCallback):
        """One line per logging event on the main process: loss, reward accuracy and margin."""

        def on_log(self, args, state, control, logs=None, **kw):
            if console is None or not (state.is_world_process_zero and logs) or "loss" not in logs:
                return
            console.print(
                f"step {state.global_step}/{state.max_steps} · epoch {state.epoch or 0:.2f} · "
                f"loss {logs['loss']:.4f} · reward acc {logs.get('rewards/accuracies', float('nan')):.3f} · "
                f"margin {logs.get('rewards/margins', float('nan')):.4f} · lr {logs.get('learning_rate', 0):.2e}",
                highlight=False,
            )

    return DPOLog()


def _peft_config(cfg: DPOTrainConfig) -> Any:
    if not cfg.lora:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ValueError("--lora needs the peft package: pip install 'rmboost[lora]'") from None
    targets: Any = cfg.lora_targets if cfg.lora_targets == "all-linear" else cfg.lora_targets.split(",")
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        task_type="CAUSAL_LM",
    )


def train_dpo(cfg: DPOTrainConfig, console: Any = None) -> dict[str, Any]:
    """Train a policy with DPO and save it (weights or LoRA adapter, tokenizer, rmboost_dpo.json)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _check(cfg)
    started = time.perf_counter()

    import datasets
    from accelerate import PartialState
    from transformers import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    from rmboost.rm.backbones import quiet_transformers
    from rmboost.rm.train import device_settings, schedule_arguments

    settings = device_settings(cfg.device, cfg.bf16, cfg.gradient_checkpointing)
    state = PartialState(cpu=settings["use_cpu"])
    main = state.is_main_process

    def say(message: str) -> None:
        if main and console is not None:
            console.print(message, highlight=False)

    peft_config = _peft_config(cfg)
    with state.main_process_first():  # one process converts/caches the GGUF policy, the others wait
        model, tokenizer, policy_path = load_policy(cfg.policy, log=say)
    train = prepare_rows(cfg.train, tokenizer, cfg.max_prompt_length, cfg.max_length)
    evald = prepare_rows(cfg.eval, tokenizer, cfg.max_prompt_length, cfg.max_length) if cfg.eval else None
    goal = train.goals[0] if len(train.goals) == 1 and not train.plain_rows else None
    say(
        f"policy: {cfg.policy} ({type(model).__name__}, {'chat' if train.chat else 'plain'} format); "
        f"training rows: {len(train.rows)}"
        + (f" relabelled (goal {train.goals[0]['variant']}, scale {train.goals[0]['low']:g}-{train.goals[0]['high']:g})" if goal else
           " plain" if not train.goals else f" ({len(train.goals)} goal formats, {train.plain_rows} plain rows)")
        + f"; prompts cut to {cfg.max_prompt_length} tokens: {train.prompts_cut}; responses cut at "
        f"{cfg.max_length}: about {train.responses_cut} of {2 * len(train.rows)}"
        + (f"; rows whose responses are the same once cut (no signal): {train.no_signal}" if train.no_signal else "")
    )

    checkpoints = cfg.output / "checkpoints"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
        args = DPOConfig(
            **schedule_arguments(cfg, checkpoints),
            save_strategy="no",
            eval_strategy="no",
            disable_tqdm=not cfg.show_progress,
            beta=cfg.beta,
            loss_type=[cfg.loss],
            label_smoothing=cfg.label_smoothing,
            max_length=cfg.max_length,
            **settings,
            **cfg.extra,
        )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train.rows),
        eval_dataset=datasets.Dataset.from_list(evald.rows) if evald else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.remove_callback(PrinterCallback)
    if not cfg.show_progress:
        trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_log_callback(console if main else None))
    with quiet_transformers():
        result = trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    summary: dict[str, Any] = {
        "output": str(cfg.output),
        "policy": cfg.policy,
        "policy_path": policy_path,
        "lora": cfg.lora,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device": str(args.device),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "gradient_checkpointing": args.gradient_checkpointing,
        "rows": len(train.rows),
        "relabelled": goal is not None,
        "goal": goal,
        "prompts_cut": train.prompts_cut,
        "responses_cut_about": train.responses_cut,
        "no_signal_rows_about": train.no_signal,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 3),
        "train_loss": result.training_loss,
        "loss_history": [{"step": h["step"], "loss": h["loss"], "reward_accuracy": h.get("rewards/accuracies"),
                          "reward_margin": h.get("rewards/margins")} for h in logs],
        "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2),
        "train_rows_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 3),
    }
    if evald is not None:
        with quiet_transformers():
            metrics = trainer.evaluate()
        summary["eval"] = {k.removeprefix("eval_"): v for k, v in metrics.items()
                           if k in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")}
        summary["eval"]["rows"] = len(evald.rows)
    summary["main_process"] = main  # the CLI prints on the main process only
    summary["processes"] = state.num_processes
    summary["per_device_batch"] = args.per_device_train_batch_size
    if main:
        cfg.output.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        trainer.save_model(str(cfg.output))
    if main:
        tokenizer.save_pretrained(str(cfg.output))
        summary["wall_seconds"] = round(time.perf_counter() - started, 1)
        meta = {
            "goal": goal,  # what `rmboost sample` conditions on by default (None: a plain policy)
            "format": {"chat": train.chat, "max_prompt_length": cfg.max_prompt_length, "max_length": cfg.max_length},
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "summary": summary,
        }
        (cfg.output / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
        if checkpoints.exists():
            shutil.rmtree(checkpoints, ignore_errors=True)
        (cfg.output / "training_args.bin").unlink(missing_ok=True)
    return summary


def read_dpo_meta(model_dir: str | Path) -> dict[str, Any]:
    """rmboost_dpo.json beside a policy trained by `rmboost dpo` ({} for any other model)."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from exc
