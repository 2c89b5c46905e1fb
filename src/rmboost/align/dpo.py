"""DPO on plain or relabelled preference pairs, with TRL's DPOTrainer.

The default policy is SmolLM2-135M-Instruct, converted once from the GGUF file embedded in the
install to a float32 Hugging Face checkpoint (the same cached conversion as the reward-model
backbone, `rmboost.models`). Any causal-LM folder, `.gguf` file or Hub id works too
(`rmboost.align.policy`).

The pair files (--train, --eval) are read and checked before the policy is loaded: a missing
file or a malformed row (fields, messages, goal columns) is one line naming it, at no model load.
What needs the policy's tokenizer is checked after it (a chat prompt for a policy without a chat
template, a goal longer than --max-prompt-length).

Two things are done before TRL sees the data:
- plain rows become chat rows when the policy has a chat template (an instruct policy is trained
  on the format it is sampled with; relabelled `system` rows are chat rows already);
- the PROMPT is cut to `max_prompt_length` tokens from the end of its last user turn. TRL 1.16
  has no prompt limit: it truncates prompt+response at `max_length` keeping the start, and drops
  rows whose prompt alone fills `max_length`. Cutting the prompt's end keeps the goal (a system
  message or the start of the user turn) and the start of the user text (e.g. the question),
  and leaves room for the responses; only a response longer than what remains is cut, by TRL.

Device policy, schedule, progress, metadata and clean-up are the training harness's, shared
with the reward model (`rmboost.training`): float32 and no gradient checkpointing on CPU, bf16
on CUDA where supported. Multi-GPU is the Trainer's: `accelerate launch -m rmboost.cli dpo ...`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmboost import options
from rmboost.align.goals import GoalSpec
from rmboost.align.policy import fit_prompt, load_policy, policy_prompt, prompt_tokens
from rmboost.data.inputs import InputError
from rmboost.data.messages import SourcePair, chat_response, read_source_pairs, response_text
from rmboost.models import has_chat_template, quiet_transformers, token_ids
from rmboost.options import at_least, option
from rmboost.training import check_schedule, hardware, logged, loop_totals, start_run, throughput

META_FILE = "rmboost_dpo.json"  # the goal format (read by `rmboost sample`), format, config, summary
LOSSES_WITH_SMOOTHING = ("robust", "exo_pair", "aot", "aot_unpaired")


@dataclass
class DPOTrainConfig:
    """Everything `train_dpo` needs: `rmboost dpo`'s flags (defaults: see docs/alignment.md)."""

    train: Path = option(flags=("--train", "-t"), help="Pairs: plain, or relabelled by `rmboost relabel`.")
    output: Path = option(flags=("--output", "-o"), help="Folder for the trained policy (or LoRA adapter) and rmboost_dpo.json.")
    policy: str = option("smollm2", help="smollm2 (embedded SmolLM2-135M-Instruct, converted once), a causal-LM folder, a .gguf file or a Hub id.")
    eval: Path | None = option(None, flags=("--eval",), help="Pairs to report DPO loss and reward accuracy on after training.")
    beta: float = option(0.1, help="DPO beta: how far the policy may move from the reference.")
    learning_rate: float = option(5e-6, flags=("--learning-rate", "--lr"))
    loss: str = option("sigmoid", help="TRL loss type: sigmoid (DPO), robust, ipo, hinge, exo_pair, ...")
    label_smoothing: float = option(0.0, help="Label noise for --loss robust / exo_pair (TRL's sigmoid loss has none).")
    epochs: float = option(1.0)
    batch_size: int = option(8, help="Pairs per step over all processes (the global batch; each of N processes takes 1/N).")
    grad_accum: int = option(1, help="Gradient accumulation steps.")
    warmup_ratio: float = option(0.1)
    lr_scheduler: str = option("cosine", flags=("--scheduler",), help="Learning-rate schedule (transformers name).")
    max_length: int = option(512, help="Tokens of prompt + response; a longer response is cut at its end.")
    max_prompt_length: int = option(256, help="Prompt tokens; a longer prompt is cut from the end of its last user turn (the goal and the start stay).")
    lora: bool = option(False, help="Train a LoRA adapter instead of all weights (needs peft: rmboost[lora]).")
    lora_r: int = option(16, check=at_least(1))
    lora_alpha: int = option(32, check=at_least(1))
    lora_dropout: float = option(0.05)
    lora_targets: str = option("all-linear", help="all-linear or comma-separated module names.")
    seed: int = option(0)
    max_steps: int | None = option(None, check=at_least(1), help="Stop after N optimizer steps.")
    device: str = option("auto", help="auto, cpu or cuda.")
    bf16: bool | None = option(None, flags=("--bf16/--no-bf16",), help="Default: on for CUDA with bf16, off on CPU.")
    gradient_checkpointing: bool | None = option(
        None, flags=("--gradient-checkpointing/--no-gradient-checkpointing",), help="Default: off.")
    logging_steps: int = option(10, check=at_least(1), help="Print loss / reward accuracy every N steps.")
    show_progress: bool = option(True, flags=("--progress/--no-progress",), help="Show a progress bar.")
    extra: dict[str, Any] = option(default_factory=dict, cli=False)  # passed to DPOConfig as is


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class DPOPair:
    """A pair row checked without the policy's tokenizer: its text and its goal (None: plain)."""

    pair: SourcePair
    goal: GoalSpec | None
    protect: str  # a `user`-variant goal that starts the user turn: cutting the prompt keeps it whole


def read_dpo_pairs(path: Path) -> list[DPOPair]:
    """Every row of a pair file, checked (fields, messages, goal columns) before any model is loaded."""
    out = []
    for pair in read_source_pairs(path):
        row = pair.row
        try:
            spec = GoalSpec.from_row(row)
            protect = spec.user_prefix(float(row["goal_score"])) if spec is not None and "goal_score" in row else ""
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{pair.where}: malformed goal columns ({exc})") from None
        out.append(DPOPair(pair, spec, protect))
    return out


def read_data(cfg: DPOTrainConfig) -> tuple[list[DPOPair], list[DPOPair] | None]:
    """The training pairs and the --eval pairs (None without it), read and checked."""
    return read_dpo_pairs(cfg.train), read_dpo_pairs(cfg.eval) if cfg.eval else None


@dataclass
class PreparedData:
    rows: list[dict[str, Any]]
    prompts_cut: int = 0
    responses_cut: int = 0  # about: responses longer than max_length minus their prompt
    no_signal: int = 0  # about: rows whose chosen and rejected are the same once cut (no DPO gradient)
    chat: bool = True
    goals: list[dict[str, Any]] = field(default_factory=list)  # distinct goal specs in the file
    plain_rows: int = 0  # rows without a goal


def prepare_rows(pairs: list[DPOPair], tokenizer: Any, max_prompt_length: int, max_length: int) -> PreparedData:
    """Checked pairs -> TRL rows ({prompt, chosen, rejected}), chat-formatted for a chat policy, prompts fitted."""
    data = PreparedData(rows=[], chat=has_chat_template(tokenizer))
    specs: dict[str, dict[str, Any]] = {}
    for item in pairs:
        pair, spec = item.pair, item.goal
        where = pair.where
        prompt = policy_prompt(tokenizer, pair.prompt, where)
        chosen, rejected = pair.chosen, pair.rejected
        if data.chat:
            chosen, rejected = chat_response(chosen), chat_response(rejected)
        prompt, cut = fit_prompt(tokenizer, prompt, max_prompt_length, where, item.protect)
        data.prompts_cut += cut
        budget = max_length - prompt_tokens(tokenizer, prompt) - 2  # - end-of-turn tokens
        kept = []
        for response in (chosen, rejected):
            ids = token_ids(tokenizer, response_text(response, where))
            data.responses_cut += len(ids) > budget
            kept.append(ids[:budget])
        # Sampled responses often share a long opening: cut to the same tokens, a pair teaches nothing.
        data.no_signal += kept[0] == kept[1]
        data.rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        if spec is None:
            data.plain_rows += 1
        else:
            specs.setdefault(json.dumps(spec.as_dict(), sort_keys=True), spec.as_dict())
    data.goals = list(specs.values())
    return data


# ---------------------------------------------------------------------------------------------
# Training


def _check(cfg: DPOTrainConfig) -> None:
    options.validate(cfg)  # the declared checks, for configs built in code (the command line has run them)
    check_schedule(cfg, positive=[("--beta", cfg.beta)], model_file=META_FILE, models=[("--policy", cfg.policy)])
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


def _log_line(logs: dict[str, Any], where: str) -> str | None:
    """Loss, reward accuracy and margin of a logging step."""
    if "loss" not in logs:
        return None
    return (
        f"{where} · loss {logs['loss']:.4f} · reward acc {logs.get('rewards/accuracies', float('nan')):.3f} · "
        f"margin {logs.get('rewards/margins', float('nan')):.4f} · lr {logs.get('learning_rate', 0):.2e}"
    )


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


def _describe(cfg: DPOTrainConfig, model: Any, train: PreparedData, goal: dict[str, Any] | None) -> str:
    if goal:
        kind = f" relabelled (goal {goal['variant']}, scale {goal['low']:g}-{goal['high']:g})"
    elif not train.goals:
        kind = " plain"
    else:
        kind = f" ({len(train.goals)} goal formats, {train.plain_rows} plain rows)"
    return (
        f"policy: {cfg.policy} ({type(model).__name__}, {'chat' if train.chat else 'plain'} format); "
        f"training rows: {len(train.rows)}{kind}; prompts cut to {cfg.max_prompt_length} tokens: "
        f"{train.prompts_cut}; responses cut at {cfg.max_length}: about {train.responses_cut} of {2 * len(train.rows)}"
        + (f"; rows whose responses are the same once cut (no signal): {train.no_signal}" if train.no_signal else "")
    )


def train_dpo(cfg: DPOTrainConfig, console: Any = None) -> dict[str, Any]:
    """Train a policy with DPO and save it (weights or LoRA adapter, tokenizer, rmboost_dpo.json)."""
    _check(cfg)
    run, (train_pairs, eval_pairs) = start_run(cfg, console, read_data)

    import datasets
    from trl import DPOConfig, DPOTrainer

    peft_config = _peft_config(cfg)
    with run.main_process_first():
        model, tokenizer, policy_path = load_policy(cfg.policy, log=run.say)
    train = prepare_rows(train_pairs, tokenizer, cfg.max_prompt_length, cfg.max_length)
    evald = prepare_rows(eval_pairs, tokenizer, cfg.max_prompt_length, cfg.max_length) if eval_pairs is not None else None
    goal = train.goals[0] if len(train.goals) == 1 and not train.plain_rows else None
    run.say(_describe(cfg, model, train, goal))

    args = run.arguments(
        DPOConfig,
        cfg,
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=not cfg.show_progress,
        beta=cfg.beta,
        loss_type=[cfg.loss],
        label_smoothing=cfg.label_smoothing,
        max_length=cfg.max_length,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train.rows),
        eval_dataset=datasets.Dataset.from_list(evald.rows) if evald else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    result = run.fit(trainer, _log_line, cfg.show_progress)
    summary: dict[str, Any] = {
        "output": str(cfg.output),
        "policy": cfg.policy,
        "policy_path": policy_path,
        "lora": cfg.lora,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        **hardware(args),
        "rows": len(train.rows),
        "relabelled": goal is not None,
        "goal": goal,
        "prompts_cut": train.prompts_cut,
        "responses_cut_about": train.responses_cut,
        "no_signal_rows_about": train.no_signal,
        **loop_totals(trainer, result),
        "loss_history": [{"step": h["step"], "loss": h["loss"], "reward_accuracy": h.get("rewards/accuracies"),
                          "reward_margin": h.get("rewards/margins")} for h in logged(trainer, "loss")],
        **throughput(result, "rows"),
    }
    if evald is not None:
        with quiet_transformers():
            metrics = trainer.evaluate()
        summary["eval"] = {k.removeprefix("eval_"): v for k, v in metrics.items()
                           if k in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")}
        summary["eval"]["rows"] = len(evald.rows)
    run.save(trainer, cfg.output)
    if run.main:
        tokenizer.save_pretrained(str(cfg.output))
    head = {
        "goal": goal,  # what `rmboost sample` conditions on by default (None: a plain policy)
        "format": {"chat": train.chat, "max_prompt_length": cfg.max_prompt_length, "max_length": cfg.max_length},
    }
    run.finish(cfg, META_FILE, head, summary)
    return summary
