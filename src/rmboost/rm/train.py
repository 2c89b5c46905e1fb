"""Bradley-Terry reward-model training on TRL's RewardTrainer.

Loss (RMBoost paper, Eq. 1): -log sigmoid(r(x, y+) - r(x, y-)) [- margin inside the sigmoid when a
margin column is given; + c * mean((r+ + r-)^2) with reward centering]. TRL computes exactly this;
we hand it pairs that we have already tokenized (`chosen_ids`/`rejected_ids`), because its own
preprocessing (a) drops every example longer than `max_length` instead of truncating it and
(b) appends `tokenizer.eos_token` to the text, which BERT-style tokenizers do not have. Our
formatter truncates the prompt instead and ends each sequence with the tokenizer's own end marker
([SEP] for encoders, EOS / end-of-turn for decoders), so TRL's tokenization is never used.

Device policy, schedule, progress, metadata and clean-up are the training harness's
(`rmboost.training`, shared with `rmboost dpo`), including several processes:
`accelerate launch -m rmboost.cli train-rm ...` (or `accelerate launch $(which rmboost) train-rm ...`)
and the Trainer runs data-parallel on the same global batch. Before saving, the model is made
loadable by plain transformers with the same scores (`rmboost.rm.portable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmboost import options
from rmboost.models import max_positions, resolve_model
from rmboost.options import at_least, option
from rmboost.rm.backbones import META_FILE, load_reward_model
from rmboost.rm.data import (
    Mixture,
    PairFormatter,
    mix,
    parse_train_spec,
    read_pairs,
    tokenize_pairs,
)
from rmboost.rm.portable import make_portable
from rmboost.rm.score import RewardScorer
from rmboost.training import check_schedule, hardware, logged, loop_totals, start_run, throughput


@dataclass
class TrainRMConfig:
    """Everything `train_rm` needs: `rmboost train-rm`'s flags and an experiment's `rm` section
    (defaults: see docs/reward-models.md)."""

    train: list[str] = option(  # "FILE" or "FILE:WEIGHT"
        flags=("--train", "-t"),
        help="Pair file (.jsonl/.parquet/...), optionally FILE:WEIGHT for a mixture; repeatable.",
    )
    output: Path = option(flags=("--output", "-o"), help="Folder for the trained model.")
    backbone: str = option("minilm", help="minilm (default, encoder), smollm2 (decoder), a checkpoint folder, a .gguf file or a Hub id.")
    init: Path | None = option(None, help="Start from this checkpoint (e.g. an SFT model) instead of the backbone's weights.")
    validation: Path | None = option(None, flags=("--validation", "-v"),
                                     help="Pair file for picking the best checkpoint (never the test file).")
    prompt_field: str = option("prompt", help="Prompt column; a dotted path reaches into dicts (inputs.question = QA-Feedback without passages); none = response only.")
    template: str = option("auto", help="auto, chat (tokenizer's chat template) or pair ([CLS] prompt [SEP] response [SEP] / prompt + response + EOS).")
    max_length: int = option(256, help="Tokens per (prompt, response); the prompt is cut from its end, the response kept whole.")
    epochs: float = option(2.0)
    learning_rate: float = option(3e-5, flags=("--learning-rate", "--lr"))
    batch_size: int = option(16, help="Pairs per step over all processes (the global batch; each of N processes takes 1/N).")
    grad_accum: int = option(1, help="Gradient accumulation steps.")
    warmup_ratio: float = option(0.03, help="Linear warmup over this share of the steps.")
    lr_scheduler: str = option("cosine", flags=("--scheduler",), help="Learning-rate schedule (transformers name).")
    adam_beta1: float = option(0.9)
    adam_beta2: float = option(0.98)
    weight_decay: float = option(0.0)
    seed: int = option(0, help="Seeds the head, the shuffling and the mixture.")
    margin_field: str | None = option(None, flags=("--margin-column",), help="Column with a margin m: loss -log sigmoid(r+ - r- - m).")
    center_rewards: float | None = option(None, help="Reward-centering coefficient (e.g. 0.01).")  # Eisenstein et al. 2023
    eval_steps: int | None = option(None, help="Evaluate every N steps (default: every epoch).")
    select_metric: str = option("accuracy", help="Validation metric that picks the checkpoint: accuracy or loss.")
    max_steps: int | None = option(None, check=at_least(1), help="Stop after N optimizer steps.")
    device: str = option("auto", help="auto, cpu or cuda.")
    bf16: bool | None = option(None, flags=("--bf16/--no-bf16",), help="Default: on for CUDA with bf16, off on CPU.")
    gradient_checkpointing: bool | None = option(
        None, flags=("--gradient-checkpointing/--no-gradient-checkpointing",), help="Default: off.")
    logging_steps: int = option(10, check=at_least(1), help="Print loss/accuracy every N steps.")
    keep_checkpoints: bool = option(False, help="Keep the intermediate checkpoints folder.")
    show_progress: bool = option(True, flags=("--progress/--no-progress",), help="Show a progress bar.")
    extra: dict[str, Any] = option(default_factory=dict, cli=False)  # passed to RewardConfig as is


def load_sources(cfg: TrainRMConfig) -> tuple[Mixture, list[Any]]:
    """The training mixture and the validation pairs (empty without --validation), read and checked."""
    sources = []
    for spec in cfg.train:
        path, weight = parse_train_spec(spec)
        sources.append((path, weight, read_pairs(path, cfg.prompt_field, cfg.margin_field)))
    mixture = mix(sources, seed=cfg.seed)
    val = read_pairs(cfg.validation, cfg.prompt_field, cfg.margin_field) if cfg.validation else []
    return mixture, val


def _check(cfg: TrainRMConfig) -> None:
    if not cfg.train:
        raise ValueError("give at least one --train file")
    options.validate(cfg)  # the declared checks, for configs built in code (the command line has run them)
    check_schedule(cfg, model_file=META_FILE, models=[("--init", cfg.init), ("--backbone", cfg.backbone)])
    if cfg.select_metric not in ("accuracy", "loss"):
        raise ValueError(f"--select-metric {cfg.select_metric!r}: use accuracy or loss")


def _log_line(logs: dict[str, Any], where: str) -> str | None:
    """Training: loss, accuracy, margin, learning rate; validation: loss and accuracy."""
    if "loss" in logs:
        return (
            f"{where} · loss {logs['loss']:.4f} · acc {logs.get('accuracy', float('nan')):.3f} · "
            f"margin {logs.get('margin', float('nan')):.3f} · lr {logs.get('learning_rate', 0):.2e}"
        )
    if "eval_loss" in logs:
        return (
            f"[bold]validation[/] {where} · loss {logs['eval_loss']:.4f} · "
            f"acc {logs.get('eval_accuracy', float('nan')):.3f}"
        )
    return None


def train_rm(cfg: TrainRMConfig, console: Any = None) -> dict[str, Any]:
    """Train a reward model and save it (weights, tokenizer, rmboost_rm.json) to cfg.output.

    Returns a summary: data composition, truncation counts, training loss/accuracy, throughput,
    and validation metrics of the saved model when a validation file was given.
    """
    _check(cfg)
    run, (mixture, val_pairs) = start_run(cfg, console, load_sources)

    import datasets
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    run.say(f"training pairs: {len(mixture.pairs)} ({mixture.describe()})" + (f"; validation pairs: {len(val_pairs)}" if val_pairs else ""))
    with run.main_process_first():
        backbone = resolve_model(cfg.backbone, log=run.say)
    set_seed(cfg.seed)  # the fresh reward head is random: seed it before loading
    if cfg.init is not None:
        if not Path(cfg.init).is_dir():
            raise FileNotFoundError(f"--init {cfg.init}: checkpoint folder not found")
        has_tok = any((Path(cfg.init) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
        model, tokenizer = load_reward_model(str(cfg.init), tokenizer_source=None if has_tok else backbone)
    else:
        model, tokenizer = load_reward_model(backbone)
    limit = max_positions(model)
    if limit is not None and cfg.max_length > limit:
        raise ValueError(f"--max-length {cfg.max_length} is more than the backbone's {limit} positions")
    formatter = PairFormatter(tokenizer, cfg.max_length, cfg.template)

    with_margin = cfg.margin_field is not None
    train_tok = tokenize_pairs(mixture.pairs, formatter, with_margin)
    val_tok = tokenize_pairs(val_pairs, formatter, with_margin) if val_pairs else None
    run.say(
        f"backbone: {cfg.init or cfg.backbone} ({type(model).__name__}, template {formatter.template}, "
        f"max length {cfg.max_length}); {train_tok.mean_tokens:.0f} tokens per sequence on average; "
        f"truncated: {train_tok.prompt_cut} prompts, {train_tok.response_cut} responses "
        f"(of {2 * len(train_tok.rows)} sequences; nothing is dropped)"
    )

    has_val = val_tok is not None
    strategy = ("steps" if cfg.eval_steps else "epoch") if has_val else "no"
    args = run.arguments(
        RewardConfig,
        cfg,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay,
        eval_strategy=strategy,
        eval_steps=cfg.eval_steps,
        save_strategy=strategy,
        save_steps=cfg.eval_steps,
        save_total_limit=1,
        # Checkpoints hold the weights only, except under DeepSpeed, which reloads the best one
        # through its engine and so needs the full checkpoint.
        save_only_model=not run.deepspeed,
        load_best_model_at_end=has_val,
        metric_for_best_model=f"eval_{cfg.select_metric}" if has_val else None,
        greater_is_better=cfg.select_metric == "accuracy",
        max_length=None,  # already truncated by us; TRL would otherwise DROP longer pairs
        center_rewards_coefficient=cfg.center_rewards,
        disable_tqdm=False,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_tok.rows),
        eval_dataset=datasets.Dataset.from_list(val_tok.rows) if has_val else None,
        processing_class=tokenizer,
    )
    result = run.fit(trainer, _log_line, cfg.show_progress)
    train_logs = logged(trainer, "loss")
    evals = [
        {"step": h["step"], "epoch": round(h.get("epoch", 0), 3), "loss": h["eval_loss"], "accuracy": h.get("eval_accuracy")}
        for h in logged(trainer, "eval_loss")
    ]
    summary: dict[str, Any] = {
        "output": str(cfg.output),
        "backbone": cfg.backbone,
        "init": str(cfg.init) if cfg.init else None,
        "model_class": type(trainer.model).__name__,
        **hardware(args),
        "pairs": len(mixture.pairs),
        "mixture": [
            {"file": str(p.path), "weight": p.weight, "rows": p.available, "used": p.used} for p in mixture.parts
        ],
        "validation_pairs": len(val_pairs),
        "truncated": {"prompts": train_tok.prompt_cut, "responses": train_tok.response_cut},
        "mean_tokens": round(train_tok.mean_tokens, 1),
        **loop_totals(trainer, result),
        "last_logged": {k: train_logs[-1].get(k) for k in ("loss", "accuracy", "margin")} if train_logs else {},
        **throughput(result, "pairs"),
        "validation_history": evals,
        "best_checkpoint": trainer.state.best_model_checkpoint,
    }

    make_portable(trainer.model)  # loads and scores the same with plain transformers
    run.save(trainer, cfg.output)
    if has_val and run.main:
        scorer = RewardScorer.from_model(trainer.model, tokenizer, formatter, batch_size=max(8, cfg.batch_size))
        chosen, rejected = scorer.score_pairs(val_pairs)
        # numpy is imported only when a validation file is scored
        from rmboost.rm.evaluate import evaluate_scores

        summary["validation"] = evaluate_scores(val_pairs, chosen, rejected, resamples=1000, seed=cfg.seed)
    fmt = {"prompt_field": cfg.prompt_field, "max_length": cfg.max_length, "template": formatter.template}
    run.finish(cfg, META_FILE, {"format": fmt}, summary, keep_checkpoints=cfg.keep_checkpoints)
    return summary
