"""Bradley-Terry reward-model training on TRL's RewardTrainer.

Loss (RMBoost paper, Eq. 1): -log sigmoid(r(x, y+) - r(x, y-)) [- margin inside the sigmoid when a
margin column is given; + c * mean((r+ + r-)^2) with reward centering]. TRL computes exactly this;
we hand it pairs that we have already tokenized (`chosen_ids`/`rejected_ids`), because its own
preprocessing (a) drops every example longer than `max_length` instead of truncating it and
(b) appends `tokenizer.eos_token` to the text, which BERT-style tokenizers do not have. Our
formatter truncates the prompt instead and ends each sequence with the tokenizer's own end marker
([SEP] for encoders, EOS / end-of-turn for decoders), so TRL's tokenization is never used.

Multi-GPU needs nothing from us: `accelerate launch -m rmboost.cli train-rm ...` (or
`accelerate launch $(which rmboost) train-rm ...`) and the Trainer runs data-parallel.
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

from rmboost.distributed import per_device_batch
from rmboost.rm.data import (
    Mixture,
    PairFormatter,
    mix,
    parse_train_spec,
    read_pairs,
    tokenize_pairs,
)

META_FILE = "rmboost_rm.json"


@dataclass
class TrainRMConfig:
    """Everything `train_rm` needs; the CLI fills it from flags (defaults: see docs/reward-models.md)."""

    train: list[str]  # "FILE" or "FILE:WEIGHT"
    output: Path
    backbone: str = "minilm"
    init: Path | None = None  # start from this checkpoint (e.g. an SFT model) instead of the backbone
    validation: Path | None = None  # picks the best checkpoint (by validation accuracy)
    prompt_field: str = "prompt"  # or a dotted path such as inputs.question, or "none"
    template: str = "auto"  # auto, chat or pair (see PairFormatter)
    max_length: int = 256
    epochs: float = 2.0
    learning_rate: float = 3e-5
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    weight_decay: float = 0.0
    seed: int = 0
    margin_field: str | None = None
    center_rewards: float | None = None  # e.g. 0.01 (Eisenstein et al. 2023)
    eval_steps: int | None = None  # evaluate every N steps instead of every epoch
    select_metric: str = "accuracy"  # accuracy or loss, on the validation file
    max_steps: int | None = None  # stop after N optimizer steps (smoke tests, benchmarks)
    device: str = "auto"  # auto, cpu or cuda
    bf16: bool | None = None  # None: by device (on for CUDA with bf16, off on CPU)
    gradient_checkpointing: bool | None = None  # None: off (our backbones are small)
    logging_steps: int = 10
    keep_checkpoints: bool = False
    show_progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # passed to RewardConfig as is


def device_settings(device: str = "auto", bf16: bool | None = None, checkpointing: bool | None = None) -> dict[str, Any]:
    """TrainingArguments by device.

    TRL's configs default to bf16 autocast and gradient checkpointing. On a CPU both only cost:
    bf16 autocast runs matmuls through slow conversion paths and checkpointing recomputes every
    forward; together they made a MiniLM step about 16x slower here. So on CPU: float32, no
    checkpointing. On CUDA: bf16 autocast where the GPU supports it (else fp16), and checkpointing
    only when asked for (it saves memory, which 22M-135M backbones do not need).
    """
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r}: use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to PyTorch")
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        half_bf16 = torch.cuda.is_bf16_supported() if bf16 is None else bf16
        return {
            "use_cpu": False,
            "bf16": half_bf16,
            "fp16": bf16 is None and not half_bf16,
            "gradient_checkpointing": bool(checkpointing),
            "dataloader_pin_memory": True,
        }
    mps = device == "auto" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return {
        "use_cpu": not mps,
        "bf16": bool(bf16),
        "fp16": False,
        "gradient_checkpointing": bool(checkpointing),
        "dataloader_pin_memory": False,
    }


def _log(console: Any, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False)


def _progress_callback(console: Any, show: bool) -> Any:
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        """A progress bar plus one line per log/eval event, on the main process only."""

        def __init__(self) -> None:
            self.progress: Any = None
            self.task: Any = None

        def on_train_begin(self, args, state, control, **kw):
            if not (show and state.is_world_process_zero):
                return
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.task = self.progress.add_task("train", total=state.max_steps)
            self.progress.start()

        def on_step_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if not (state.is_world_process_zero and logs) or console is None:
                return
            where = f"step {state.global_step}/{state.max_steps} · epoch {state.epoch or 0:.2f}"
            if "loss" in logs:
                line = (
                    f"{where} · loss {logs['loss']:.4f} · acc {logs.get('accuracy', float('nan')):.3f} · "
                    f"margin {logs.get('margin', float('nan')):.3f} · lr {logs.get('learning_rate', 0):.2e}"
                )
            elif "eval_loss" in logs:
                line = (
                    f"[bold]validation[/] {where} · loss {logs['eval_loss']:.4f} · "
                    f"acc {logs.get('eval_accuracy', float('nan')):.3f}"
                )
            else:
                return
            (self.progress.console if self.progress is not None else console).print(line, highlight=False)

        def on_train_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichProgress()


def load_sources(cfg: TrainRMConfig) -> tuple[Mixture, list[Any]]:
    """The training mixture and the validation pairs (empty without --validation)."""
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
    for name, value in (("--epochs", cfg.epochs), ("--learning-rate", cfg.learning_rate)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be positive, got {value}")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ValueError("--batch-size and --grad-accum must be at least 1")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.select_metric not in ("accuracy", "loss"):
        raise ValueError(f"--select-metric {cfg.select_metric!r}: use accuracy or loss")
    if cfg.output.exists() and not cfg.output.is_dir():
        raise ValueError(f"--output {cfg.output} exists and is not a folder")


def schedule_arguments(cfg: Any, checkpoints: Path) -> dict[str, Any]:
    """The TrainingArguments the reward-model and DPO trainers both take from their configs.

    `cfg` has epochs, max_steps, batch_size, grad_accum, learning_rate, lr_scheduler,
    warmup_ratio, seed and logging_steps (TrainRMConfig, DPOTrainConfig).
    """
    return {
        "output_dir": str(checkpoints),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        # --batch-size is the global batch: the same on 1 or N processes (rmboost.distributed).
        "per_device_train_batch_size": per_device_batch(cfg.batch_size),
        "per_device_eval_batch_size": per_device_batch(cfg.batch_size),
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "logging_steps": cfg.logging_steps,
        "report_to": "none",
        "ddp_find_unused_parameters": False,  # every parameter gets a gradient; True costs a graph walk per step
    }


def _reward_config(
    config_cls: Any, cfg: TrainRMConfig, checkpoints: Path, strategy: str, has_val: bool, settings: dict[str, Any]
) -> Any:
    """TRL's RewardConfig for our options (device-dependent settings come from device_settings)."""
    return config_cls(
        **schedule_arguments(cfg, checkpoints),
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay,
        eval_strategy=strategy,
        eval_steps=cfg.eval_steps,
        save_strategy=strategy,
        save_steps=cfg.eval_steps,
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=has_val,
        metric_for_best_model=f"eval_{cfg.select_metric}" if has_val else None,
        greater_is_better=cfg.select_metric == "accuracy",
        max_length=None,  # already truncated by us; TRL would otherwise DROP longer pairs
        center_rewards_coefficient=cfg.center_rewards,
        disable_tqdm=False,
        **settings,
        **cfg.extra,
    )


def train_rm(cfg: TrainRMConfig, console: Any = None) -> dict[str, Any]:
    """Train a reward model and save it (weights, tokenizer, rmboost_rm.json) to cfg.output.

    Returns a summary: data composition, truncation counts, training loss/accuracy, throughput,
    and validation metrics of the saved model when a validation file was given.
    """
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL pings the Hub otherwise
    _check(cfg)
    started = time.perf_counter()
    mixture, val_pairs = load_sources(cfg)

    import datasets
    from accelerate import PartialState
    from transformers import PrinterCallback, ProgressCallback, set_seed
    from trl import RewardConfig, RewardTrainer

    from rmboost.rm.backbones import (
        load_reward_model,
        max_positions,
        quiet_transformers,
        resolve_backbone,
    )
    from rmboost.rm.portable import make_portable

    settings = device_settings(cfg.device, cfg.bf16, cfg.gradient_checkpointing)
    state = PartialState(cpu=settings["use_cpu"])
    main = state.is_main_process
    say = (lambda m: _log(console, m)) if main else (lambda m: None)
    say(f"training pairs: {len(mixture.pairs)} ({mixture.describe()})" + (f"; validation pairs: {len(val_pairs)}" if val_pairs else ""))

    with state.main_process_first():  # one process converts/caches a GGUF backbone, the others wait
        backbone = resolve_backbone(cfg.backbone, log=say)
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
    say(
        f"backbone: {cfg.init or cfg.backbone} ({type(model).__name__}, template {formatter.template}, "
        f"max length {cfg.max_length}); {train_tok.mean_tokens:.0f} tokens per sequence on average; "
        f"truncated: {train_tok.prompt_cut} prompts, {train_tok.response_cut} responses "
        f"(of {2 * len(train_tok.rows)} sequences; nothing is dropped)"
    )

    has_val = val_tok is not None
    strategy = ("steps" if cfg.eval_steps else "epoch") if has_val else "no"
    checkpoints = cfg.output / "checkpoints"
    with warnings.catch_warnings():
        # transformers 5 renamed gradient_checkpointing; TRL's config still sets the old name.
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
        args = _reward_config(RewardConfig, cfg, checkpoints, strategy, has_val, settings)
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_tok.rows),
        eval_dataset=datasets.Dataset.from_list(val_tok.rows) if has_val else None,
        processing_class=tokenizer,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_progress_callback(console, cfg.show_progress))

    with quiet_transformers():  # no per-checkpoint "Writing model shards" bars under ours
        result = trainer.train()
    history = trainer.state.log_history
    train_logs = [h for h in history if "loss" in h]
    evals = [
        {"step": h["step"], "epoch": round(h.get("epoch", 0), 3), "loss": h["eval_loss"], "accuracy": h.get("eval_accuracy")}
        for h in history
        if "eval_loss" in h
    ]
    summary: dict[str, Any] = {
        "output": str(cfg.output),
        "backbone": cfg.backbone,
        "init": str(cfg.init) if cfg.init else None,
        "model_class": type(trainer.model).__name__,
        "device": str(args.device),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "gradient_checkpointing": args.gradient_checkpointing,
        "pairs": len(mixture.pairs),
        "mixture": [
            {"file": str(p.path), "weight": p.weight, "rows": p.available, "used": p.used} for p in mixture.parts
        ],
        "validation_pairs": len(val_pairs),
        "truncated": {"prompts": train_tok.prompt_cut, "responses": train_tok.response_cut},
        "mean_tokens": round(train_tok.mean_tokens, 1),
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 3),
        "train_loss": result.training_loss,
        "last_logged": {k: train_logs[-1].get(k) for k in ("loss", "accuracy", "margin")} if train_logs else {},
        "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2),
        "train_pairs_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 3),
        "validation_history": evals,
        "best_checkpoint": trainer.state.best_model_checkpoint,
    }

    summary["main_process"] = main  # the CLI prints on the main process only
    summary["processes"] = state.num_processes
    summary["per_device_batch"] = args.per_device_train_batch_size
    if main:
        cfg.output.mkdir(parents=True, exist_ok=True)
    make_portable(trainer.model)  # loads and scores the same with plain transformers
    with quiet_transformers():
        trainer.save_model(str(cfg.output))
    if has_val and main:
        from rmboost.rm.evaluate import evaluate_scores
        from rmboost.rm.score import RewardScorer

        scorer = RewardScorer.from_model(trainer.model, tokenizer, formatter, batch_size=max(8, cfg.batch_size))
        chosen, rejected = scorer.score_pairs(val_pairs)
        summary["validation"] = evaluate_scores(val_pairs, chosen, rejected, resamples=1000, seed=cfg.seed)
    if main:
        summary["wall_seconds"] = round(time.perf_counter() - started, 1)
        meta = {
            "format": {
                "prompt_field": cfg.prompt_field,
                "max_length": cfg.max_length,
                "template": formatter.template,
            },
            "config": _jsonable(asdict(cfg)),
            "summary": summary,
        }
        (cfg.output / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
        if not cfg.keep_checkpoints and checkpoints.exists():
            shutil.rmtree(checkpoints, ignore_errors=True)
        for stray in ("training_args.bin",):
            (cfg.output / stray).unlink(missing_ok=True)
    return summary


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """The rmboost_rm.json saved beside a trained model ({} for a model trained elsewhere)."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from exc
