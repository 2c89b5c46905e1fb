"""Reward-model training throughput and peak memory on CPU: `train_rm` vs TRL's RewardTrainer.

For each max length (256 and 512 tokens) the same real QA-Feedback pairs (question + passages, so
every sequence is long enough to fill the window) are trained for a few steps twice, each run in
a fresh process so that its peak RSS is its own:
- `ours`: rmboost's `train_rm` (reads the file, formats and truncates, trains, saves the model);
- `trl`: TRL's RewardTrainer called directly on the same pairs as text, with the same
  device-appropriate settings (fp32, no gradient checkpointing on CPU). The prompt text is the
  part our truncation keeps, so TRL tokenizes to the same lengths and drops nothing.
Throughput is the Trainer's own train_samples_per_second (pairs per second over the training
loop, first step included) for both; `ours / trl` is our overhead (1.0 = none). Wall time also
covers loading, tokenizing and (ours) saving.

    .venv/bin/python benchmarks/bench_rm.py                 # about 3-5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_rm.py --steps 8 --lengths 256
    .venv/bin/python benchmarks/bench_rm.py --trl-defaults  # adds TRL's own defaults (bf16 + checkpointing)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "qa_feedback"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_pairs(data: Path, n: int, out: Path) -> Path:
    from rmboost.data.pairs import atomic_write_jsonl
    from rmboost.data.qa_feedback import load_human_pairs, split_by_question

    train, _ = split_by_question(load_human_pairs(data), 0.2, 0)
    atomic_write_jsonl(out, train[:n])
    return out


def run_ours(pairs: Path, max_length: int, steps: int, batch: int) -> dict:
    from rmboost.rm.train import TrainRMConfig, train_rm

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        s = train_rm(
            TrainRMConfig(
                train=[str(pairs)],
                output=Path(tmp) / "model",
                prompt_field="prompt",
                max_length=max_length,
                batch_size=batch,
                max_steps=steps,
                logging_steps=1000,
                show_progress=False,
            )
        )
        wall = time.perf_counter() - t
    return {
        "pairs_per_s": s["train_pairs_per_second"],
        "train_s": s["train_seconds"],
        "wall_s": round(wall, 1),
        "mean_tokens": s["mean_tokens"],
        "precision": s["precision"],
        "gradient_checkpointing": s["gradient_checkpointing"],
    }


def run_trl(pairs: Path, max_length: int, steps: int, batch: int, trl_defaults: bool) -> dict:
    import datasets
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from rmboost.models import minilm_path
    from rmboost.rm.backbones import load_reward_model
    from rmboost.rm.data import PairFormatter, read_pairs
    from rmboost.training import device_settings

    t = time.perf_counter()
    set_seed(0)
    model, tok = load_reward_model(str(minilm_path()))
    fmt = PairFormatter(tok, max_length)
    rows = []
    for p in read_pairs(pairs):
        # The prompt our truncation keeps for the longer response, so neither side is dropped.
        keep = min(len(fmt.encode(p.prompt, r).ids) - len(fmt.token_ids(r)) - 3 for r in (p.chosen, p.rejected))
        rows.append({"prompt": tok.decode(fmt.token_ids(p.prompt)[: max(0, keep)]) + " ", "chosen": p.chosen, "rejected": p.rejected})
    tok.eos_token = tok.sep_token  # BERT has no EOS; TRL appends one to every response
    settings = {} if trl_defaults else device_settings("cpu")
    if trl_defaults:
        settings = {"use_cpu": True}  # and TRL's defaults: bf16 autocast, gradient checkpointing
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(
            output_dir=tmp,
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=3e-5,
            lr_scheduler_type="cosine",
            warmup_steps=0.03,
            adam_beta2=0.98,
            logging_steps=1000,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            max_length=None,
            **settings,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
        kept = len(trainer.train_dataset)
        lengths = [len(x) for x in trainer.train_dataset["chosen_ids"]] + [len(x) for x in trainer.train_dataset["rejected_ids"]]
        metrics = trainer.train().metrics
    return {
        "pairs_per_s": round(metrics["train_samples_per_second"], 3),
        "train_s": round(metrics["train_runtime"], 2),
        "wall_s": round(time.perf_counter() - t, 1),
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "pairs_kept": kept,
        "precision": "bf16" if args.bf16 else "fp32",
        "gradient_checkpointing": args.gradient_checkpointing,
    }


def child(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("which")
    p.add_argument("pairs", type=Path)
    p.add_argument("max_length", type=int)
    p.add_argument("steps", type=int)
    p.add_argument("batch", type=int)
    p.add_argument("--trl-defaults", action="store_true")
    a = p.parse_args(argv)
    if a.which == "ours":
        result = run_ours(a.pairs, a.max_length, a.steps, a.batch)
    else:
        result = run_trl(a.pairs, a.max_length, a.steps, a.batch, a.trl_defaults)
    result["peak_rss_mb"] = round(peak_rss_mb())
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="QA-Feedback folder (dev_feedback.json)")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    p.add_argument("--trl-defaults", action="store_true", help="also run TRL with its own defaults (slow on CPU)")
    p.add_argument("--output", type=Path, help="write the results as JSON here")
    a = p.parse_args()

    import torch

    n = a.steps * a.batch_size
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_pairs(a.data, n, Path(tmp) / "pairs.jsonl")
        plan = [(L, w) for L in a.lengths for w in ("ours", "trl")]
        if a.trl_defaults:
            plan += [(L, "trl-defaults") for L in a.lengths]
        for length, which in plan:
            cmd = [sys.executable, __file__, "--child", "trl" if which.startswith("trl") else "ours",
                   str(pairs), str(length), str(a.steps), str(a.batch_size)]  # fmt: skip
            if which == "trl-defaults":
                cmd.append("--trl-defaults")
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{which} at {length} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            r = {"max_length": length, "run": which, **json.loads(line[7:])}
            runs.append(r)
            print(json.dumps(r), flush=True)

    print(f"\nMiniLM-L6 reward model, CPU ({os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads), {a.steps} steps x {a.batch_size} pairs, QA-Feedback question+passages")  # fmt: skip
    print(f"{'max len':>7} {'run':>13} {'pairs/s':>8} {'train s':>8} {'wall s':>7} {'tokens/seq':>10} {'peak RSS MB':>11}")
    for r in runs:
        print(f"{r['max_length']:>7} {r['run']:>13} {r['pairs_per_s']:>8.2f} {r['train_s']:>8.1f} {r['wall_s']:>7.1f} "
              f"{r['mean_tokens']:>10.0f} {r['peak_rss_mb']:>11}")  # fmt: skip
    for length in a.lengths:
        ours = next(r for r in runs if r["run"] == "ours" and r["max_length"] == length)
        trl = next(r for r in runs if r["run"] == "trl" and r["max_length"] == length)
        print(f"max length {length}: ours / TRL throughput = {ours['pairs_per_s'] / trl['pairs_per_s']:.2f}, "
              f"peak RSS ours / TRL = {ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}")
    if a.output:
        a.output.write_text(json.dumps({"machine": platform.platform(), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
