"""Batches answered by a command the user gives, e.g. vLLM's offline runner on a GPU node:

    python -m vllm.entrypoints.openai.run_batch -i {input} -o {output} --model Qwen/Qwen2.5-7B-Instruct

rmboost writes the batch's requests to `{input}` (OpenAI batch format), runs the command through
`/bin/sh` in its own session, and reads `{output}` when it exits. The command outlives a killed
rmboost: a restarted job waits for the same process (its pid and an exit-status file are recorded
with the batch) instead of starting it again; if it is gone, whatever it wrote is read and only the
rest is sent again. Keep secrets in environment variables, never in the command text.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmboost.llm.batch_store import BatchRecord, BatchStore, Poll
from rmboost.llm.types import Completion, FatalLLMError, Message, SamplingParams

if TYPE_CHECKING:
    from rmboost.backends import BackendOptions


class CommandBackend:
    """What a command-transport job names in its cache keys: the model, answered only in batches."""

    name = "batch-command"

    def __init__(self, model: str):
        self.model = model

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model}

    async def check(self) -> None:
        return None

    async def complete(self, messages: list[Message], params: SamplingParams) -> Completion:
        raise FatalLLMError("the command batch transport answers in batches only (run with --batch)")

    async def aclose(self) -> None:
        return None


def command_backend(options: BackendOptions) -> CommandBackend:
    """The command transport has no endpoint: the model it serves is all the cache keys can name."""
    if not options.model:
        raise ValueError("--batch-transport command needs --model: the model name the command serves")
    return CommandBackend(options.model)


class CommandBatchTransport:
    name = "command"
    max_poll_delay = 2.0  # looking at a local file is free

    def __init__(self, command: str, workdir: Path):
        missing = [p for p in ("{input}", "{output}") if p not in command]
        if missing:
            raise ValueError(f"--batch-command needs the placeholders {' and '.join(missing)}: {command!r}")
        self.command = command
        self.workdir = workdir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._seen: dict[str, tuple[int, int]] = {}  # batch -> (bytes of output read, lines in them)

    def target(self) -> dict[str, Any]:
        return {"transport": self.name}

    def _paths(self, record: BatchRecord) -> dict[str, str]:
        base = self.workdir / record.id
        return {k: f"{base}.{k}" for k in ("input.jsonl", "output.jsonl", "status", "log")}

    async def submit(self, record: BatchRecord, store: BatchStore, write_input: Callable[[Path], int]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        paths = self._paths(record)
        write_input(Path(paths["input.jsonl"]))
        for stale in ("output.jsonl", "status"):
            Path(paths[stale]).unlink(missing_ok=True)
        command = self.command.replace("{input}", shlex.quote(paths["input.jsonl"]))
        command = command.replace("{output}", shlex.quote(paths["output.jsonl"]))
        info = {"command": command, **paths}
        store.update(record.id, input_file=paths["input.jsonl"], info=info, state="submitted", status="starting")
        script = f"(\n{command}\n)\necho $? > {shlex.quote(paths['status'])}\n"
        with open(paths["log"], "ab") as log:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C or kill of rmboost leaves the batch running
            )
        self._procs[record.id] = proc
        record.info = {**info, "pid": proc.pid}
        record.state, record.status, record.input_file = "submitted", "in_progress", paths["input.jsonl"]
        store.update(record.id, info=record.info, status="in_progress")

    async def poll(self, record: BatchRecord) -> Poll:
        info = record.info
        # Whether it runs, asked before reading the status file (written last, just before it exits).
        if (proc := self._procs.get(record.id)) is not None:
            alive = proc.poll() is None  # our own child (poll() also reaps it)
        else:  # started by an earlier run
            alive = _alive(info.get("pid"), info.get("input.jsonl", ""))
        counts = {"total": record.n_requests, "completed": self._count_lines(record)}
        status_file = Path(info.get("status", ""))
        if status_file.is_file() and status_file.read_text().strip():
            code = int(status_file.read_text().strip() or 1)
            if code == 0:
                return Poll("completed", counts, info)
            return Poll("failed", counts, info, f"the batch command exited with status {code}{_log_note(info)}")
        if alive:
            return Poll("in_progress", counts, info)
        return Poll("failed", counts, info, f"the batch command (pid {info.get('pid')}) ended without an exit "
                    f"status (killed?){_log_note(info)}")

    def _count_lines(self, record: BatchRecord) -> int:
        path = Path(record.info.get("output.jsonl", ""))
        offset, lines = self._seen.get(record.id, (0, 0))
        with contextlib.suppress(OSError), path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
            done = chunk.rfind(b"\n") + 1
            offset, lines = offset + done, lines + chunk[:done].count(b"\n")
        self._seen[record.id] = (offset, lines)
        return lines

    async def results(self, record: BatchRecord) -> AsyncIterator[dict[str, Any]]:
        path = Path(record.info.get("output.jsonl", ""))
        if not path.is_file():
            return
        with path.open(encoding="utf-8") as fh:
            for text in fh:
                if not text.strip():
                    continue
                try:
                    yield json.loads(text)
                except json.JSONDecodeError:
                    continue  # a line torn by a killed command: that request is simply sent again

    async def cleanup(self, record: BatchRecord) -> None:
        status = Path(record.info.get("status", ""))
        failed = not status.is_file() or status.read_text().strip() != "0"
        for name in ("input.jsonl", "output.jsonl", "status", *(() if failed else ("log",))):
            if record.info.get(name):
                Path(record.info[name]).unlink(missing_ok=True)
        self._procs.pop(record.id, None)
        self._seen.pop(record.id, None)

    async def aclose(self) -> None:
        for proc in self._procs.values():
            proc.poll()


def _alive(pid: int | None, marker: str) -> bool:
    """Is `pid` still our command (not a stranger that got the number after a reboot)?"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust the pid
    zombie = stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
    return not zombie and (not marker or marker in cmdline)


def _log_note(info: dict[str, Any]) -> str:
    log = Path(info.get("log", ""))
    try:
        lines = [line for line in log.read_text("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    last = f": {lines[-1].strip()[:200]}" if lines else ""
    return f" (its log: {log}{last})"
