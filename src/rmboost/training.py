"""The training harness that `rmboost train-rm` (TRL's RewardTrainer) and `rmboost dpo` (DPOTrainer) share.

What both trainers do the same way lives here, each trainer keeping only what is its own (data,
model, loss options, summary fields):
- the device policy (`device_settings`) and the schedule (`schedule_arguments`), which together
  with the trainer's own options make its TrainingArguments (`TrainingRun.arguments`);
- the checks of the schedule options (`check_schedule`);
- the start: the data files (training and validation) read and checked before the accelerate
  state, torch or any model is loaded, so bad input costs no model load (`start_run`);
- one process's run: the accelerate state, messages on the main process only, our progress bar
  and log lines in place of transformers' (`TrainingRun.fit`), saving;
- the summary parts read from the Trainer (`hardware`, `loop_totals`, `throughput`) and the
  metadata file written beside the model and read back (`TrainingRun.finish`, `read_meta`).

Several processes (`accelerate launch -m rmboost.cli train-rm|dpo ...`, data-parallel by the
Trainer): `--batch-size` is the global batch, split over the processes (`per_device_batch`), so
a run on N processes takes the same optimizer steps on the same batches as one process; only the
main process saves, writes the metadata and prints its summary.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from rmboost.data.pairs import atomic_write_json
from rmboost.models import quiet_transformers

Data = TypeVar("Data")

CHECKPOINTS = "checkpoints"  # the Trainer's output_dir, inside the output folder; removed at the end
STARTED = ".rmboost-training"  # in the output folder from the start of a run to its end: an interrupted run's folder

# A trainer's log line: (the Trainer's log dict, "step N/M · epoch E") -> the line, or None for none.
LogLine = Callable[[dict[str, Any], str], "str | None"]


def device_settings(device: str = "auto", bf16: bool | None = None, checkpointing: bool | None = None) -> dict[str, Any]:
    """TrainingArguments by device.

    TRL's configs default to bf16 autocast and gradient checkpointing. On a CPU both only cost:
    bf16 autocast runs matmuls through slow conversion paths and checkpointing recomputes every
    forward; together they made a MiniLM step about 16x slower here. So on CPU: float32, no
    checkpointing. On CUDA: bf16 autocast where the GPU supports it (else fp16), and checkpointing
    only when asked for (it saves memory, which 22M-135M models do not need).
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


def per_device_batch(global_batch: int, processes: int) -> int:
    """The share of the global batch one of `processes` processes takes; it must divide evenly.

    `--batch-size` is the GLOBAL number of pairs (or DPO rows) per forward pass, summed over all
    processes, and one optimizer step sees batch_size * grad_accum of them. So the same command on
    1, 2 or 8 processes (`accelerate launch`) trains on the same batches for the same number of
    optimizer steps. To fit a large model, lower the per-process share with `--grad-accum`
    (global batch = batch_size * grad_accum) rather than by changing `--batch-size`.
    """
    if global_batch % processes:
        raise ValueError(
            f"--batch-size {global_batch} is the global batch over all {processes} processes and must be a "
            f"multiple of {processes}: use {max(processes, global_batch - global_batch % processes)} or "
            f"{global_batch + processes - global_batch % processes}"
        )
    return global_batch // processes


def schedule_arguments(cfg: Any, checkpoints: Path, processes: int = 1) -> dict[str, Any]:
    """The TrainingArguments both trainers take from their configs, for a run on `processes` processes.

    `cfg` has epochs, max_steps, batch_size (the global batch, `per_device_batch`), grad_accum,
    learning_rate, lr_scheduler, warmup_ratio, seed and logging_steps (TrainRMConfig, DPOTrainConfig).
    """
    batch = per_device_batch(cfg.batch_size, processes)
    return {
        "output_dir": str(checkpoints),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        "per_device_train_batch_size": batch,
        "per_device_eval_batch_size": batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "logging_steps": cfg.logging_steps,
        "report_to": "none",
        "ddp_find_unused_parameters": False,  # every trainable parameter gets a gradient; True costs a graph walk per step
    }


def check_schedule(
    cfg: Any,
    positive: Sequence[tuple[str, float]] = (),
    model_file: str | None = None,
    models: Sequence[tuple[str, Any]] = (),
) -> None:
    """The options every trainer has: epochs, learning rate (and `positive` more), batch, warmup, output.

    With `model_file` (the trainer's rmboost_*.json), an existing output folder must be empty (hidden
    files aside), an earlier model of this kind, or an interrupted run's: the trainer writes its
    files there and removes `checkpoints/`, so a folder of other files is refused. A model the run
    starts from (`models`: (flag, value) pairs; values that are not paths on disk are names) must
    not be that folder or lie inside it, where the run would write over it or delete it."""
    for name, value in (("--epochs", cfg.epochs), ("--learning-rate", cfg.learning_rate), *positive):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be positive, got {value}")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ValueError("--batch-size and --grad-accum must be at least 1")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.output.exists() and not cfg.output.is_dir():
        raise ValueError(f"--output {cfg.output} exists and is not a folder")
    if model_file is not None and cfg.output.is_dir():
        names = {p.name for p in cfg.output.iterdir() if not p.name.startswith(".") or p.name == STARTED}
        if names and not names & {model_file, STARTED} and names != {CHECKPOINTS}:
            raise ValueError(f"--output {cfg.output} holds other files and no model of this kind (no {model_file}): "
                             "choose a new or empty folder")
    output = cfg.output.resolve()
    for flag, value in models:
        if value is not None and Path(value).exists() and Path(value).resolve().is_relative_to(output):
            raise ValueError(f"{flag} {value} is inside --output {cfg.output}, which this run writes over "
                             "(and whose checkpoints/ it deletes): choose another --output")


def progress_callback(console: Any, show_bar: bool, line: LogLine) -> Any:
    """A progress bar (when `show_bar`) plus one line per log event that `line` describes, main process only."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Any = None
            self.task: Any = None

        def on_train_begin(self, args, state, control, **kw):
            if not (show_bar and state.is_world_process_zero):
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
            text = line(logs, f"step {state.global_step}/{state.max_steps} · epoch {state.epoch or 0:.2f}")
            if text is not None:
                (self.progress.console if self.progress is not None else console).print(text, highlight=False)

        def on_train_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return TrainingProgress()


class TrainingRun:
    """One training job as this process sees it: device settings, accelerate state, messages, timing."""

    def __init__(self, cfg: Any, console: Any = None):
        """`cfg` has device, bf16 and gradient_checkpointing; starts the clock for wall_seconds."""
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL pings the Hub otherwise
        self.started = time.perf_counter()
        self.console = console
        self.settings = device_settings(cfg.device, cfg.bf16, cfg.gradient_checkpointing)
        if self.settings["use_cpu"]:  # else DeepSpeed, once imported, prints on stdout that it found no GPU
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.state = PartialState(cpu=self.settings["use_cpu"])
        self.main = self.state.is_main_process
        # `accelerate launch` with a DeepSpeed config sets this; the Trainer then runs DeepSpeed.
        self.deepspeed = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")

    def say(self, message: str) -> None:
        if self.main and self.console is not None:
            self.console.print(message, highlight=False)

    def main_process_first(self) -> Any:
        """One process converts/caches a model (e.g. from GGUF) while the others wait."""
        return self.state.main_process_first()

    def arguments(self, config_cls: Any, cfg: Any, **own: Any) -> Any:
        """`config_cls` (RewardConfig, DPOConfig) from the schedule, the trainer's own options, the
        device settings and `cfg.extra`, which is passed as is."""
        with warnings.catch_warnings():
            # transformers 5 renamed gradient_checkpointing; TRL's configs still set the old name.
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
            return config_cls(
                **schedule_arguments(cfg, cfg.output / CHECKPOINTS, self.state.num_processes), **own,
                **self.settings, **cfg.extra
            )

    def fit(self, trainer: Any, line: LogLine, show_bar: bool = True) -> Any:
        """trainer.train() with our progress bar and log lines instead of transformers' own."""
        from transformers import PrinterCallback, ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(progress_callback(self.console, show_bar, line))
        with quiet_transformers():  # no per-checkpoint "Writing model shards" bars under ours
            return trainer.train()

    def save(self, trainer: Any, output: Path) -> None:
        if self.main:
            output.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            trainer.save_model(str(output))

    def finish(
        self, cfg: Any, meta_file: str, head: dict[str, Any], summary: dict[str, Any], keep_checkpoints: bool = False
    ) -> None:
        """On the main process: wall time into the summary, `meta_file` ({**head, config, summary})
        into cfg.output, and the Trainer's leftovers (checkpoints, training_args.bin) removed."""
        if not self.main:
            return
        summary["wall_seconds"] = round(time.perf_counter() - self.started, 1)
        meta = {**head, "config": jsonable(asdict(cfg)), "summary": summary}
        atomic_write_json(cfg.output / meta_file, meta)
        (cfg.output / STARTED).unlink(missing_ok=True)
        checkpoints = cfg.output / CHECKPOINTS
        if not keep_checkpoints and checkpoints.exists():
            shutil.rmtree(checkpoints, ignore_errors=True)
        (cfg.output / "training_args.bin").unlink(missing_ok=True)


def start_run(cfg: Any, console: Any, read: Callable[[Any], Data]) -> tuple[TrainingRun, Data]:
    """A trainer's start, in this order: `read(cfg)` reads and checks every data file (training and
    validation), then the run's device and accelerate state. A missing file or a malformed row is
    thus one line naming the file, line and field, before torch, accelerate or any model is loaded
    (the trainer loads its model after this)."""
    data = read(cfg)
    run = TrainingRun(cfg, console)
    if run.main:  # marks the folder as this run's until `finish`, so that a re-run after a crash may use it
        cfg.output.mkdir(parents=True, exist_ok=True)
        (cfg.output / STARTED).touch()
    return run, data


def hardware(args: Any) -> dict[str, Any]:
    """Where and how the run trained, from its TrainingArguments: device, precision, processes and
    the batch each one took, and whether this summary is the main process's (the one that saves,
    writes the metadata and prints; `rmboost.cli_support.run_training`)."""
    return {
        "device": str(args.device),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "gradient_checkpointing": args.gradient_checkpointing,
        "processes": args.world_size,
        # Set when `accelerate launch` ran the Trainer under DeepSpeed (e.g. deepspeed_zero2.yaml).
        "deepspeed_zero_stage": getattr(getattr(args, "deepspeed_plugin", None), "zero_stage", None),
        "per_device_batch": args.per_device_train_batch_size,
        "main_process": args.process_index == 0,
    }


def loop_totals(trainer: Any, result: Any) -> dict[str, Any]:
    return {
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 3),
        "train_loss": result.training_loss,
    }


def throughput(result: Any, unit: str) -> dict[str, Any]:
    """Seconds in the training loop and `unit`s (pairs, rows) per second."""
    return {
        "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2),
        f"train_{unit}_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 3),
    }


def logged(trainer: Any, key: str = "loss") -> list[dict[str, Any]]:
    """The Trainer's log events that hold `key` (training: "loss"; validation: "eval_loss")."""
    return [h for h in trainer.state.log_history if key in h]


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def read_meta(model_dir: str | Path, meta_file: str) -> dict[str, Any]:
    """The metadata a trainer saved beside a model ({} for a model trained elsewhere)."""
    path = Path(model_dir) / meta_file
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from exc
