"""Training on several processes (`accelerate launch`): the batch each process takes.

rmboost's `--batch-size` is the GLOBAL number of pairs (or DPO rows) per forward pass, summed over
all processes; one optimizer step sees batch_size * grad_accum of them. So the same command run
on 1, 2 or 8 processes trains on the same batches for the same number of optimizer steps: each
process gets batch_size / processes. To fit a large model, lower the per-process share with
`--grad-accum` (global batch = batch_size * grad_accum) rather than changing `--batch-size`.
"""

from __future__ import annotations


def process_count() -> int:
    """Processes in this run: 1 unless started by `accelerate launch` / torchrun (after PartialState)."""
    from accelerate import PartialState

    return PartialState().num_processes


def per_device_batch(global_batch: int, processes: int | None = None) -> int:
    """The share of the global batch one process takes; the global batch must divide evenly."""
    n = processes or process_count()
    if global_batch % n:
        raise ValueError(
            f"--batch-size {global_batch} is the global batch over all {n} processes and must be a multiple "
            f"of {n}: use {max(n, global_batch - global_batch % n)} or {global_batch + n - global_batch % n}"
        )
    return global_batch // n
