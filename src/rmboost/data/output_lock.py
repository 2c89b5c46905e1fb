"""One writer per output: an OS file lock beside the output, held for the whole job.

Two jobs writing the same pairs file would each pay for every answer and interleave their
lines. `hold_output` takes an exclusive `flock` on `<stem>.lock` beside the output (`<stem>` is
the name its side files share, `output_stem`: `pairs.jsonl` and `pairs.parquet` lock each other,
since they share `pairs.failures.jsonl`; `pairs.a.jsonl` and `pairs.b.jsonl` do not) and records
who holds it: pid, host, start time and command. A second job is refused at once with that
record. The OS drops the lock when the process exits in any way, kill -9 included, so a stale
lock file never blocks anyone; it is removed on a clean exit.
Works on local file systems and on NFS (Linux maps flock to NFS locks there).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path


class OutputBusy(ValueError):
    """Another job holds the output; the message names it (pid, host, start time, command)."""


COMPRESSION_SUFFIXES = (".gz", ".zst", ".bz2", ".xz")


def output_stem(output: Path) -> str:
    """The name an output's side files share: its name less the data-format suffix (and a
    compression suffix after it): `pairs.jsonl` -> `pairs`, `pairs.a.jsonl` -> `pairs.a`,
    `x.jsonl.gz` -> `x`. Only the format is dropped, so two outputs in one folder never share it."""
    name = output.name
    for _ in range(2):
        suffix = Path(name).suffix
        name = name[: len(name) - len(suffix)]
        if suffix.lower() not in COMPRESSION_SUFFIXES:
            break
    return name


def lock_path(output: Path) -> Path:
    return output.with_name(output_stem(output) + ".lock")


def current_command() -> str:
    """This process's command line on one short line, with any credentials in URLs blanked."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv) or ["python"]  # python -m ... as typed
    argv[0] = Path(argv[0]).name
    text = re.sub(r"://[^/@\s]+@", "://***@", " ".join(shlex.join(argv).split()))  # one line
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def hold_output(
    output: Path, command: str | None = None, advice: str = "wait for it or stop it, or choose another --output"
) -> Iterator[Path]:
    """Hold the output's lock for the block, or raise OutputBusy naming the job that holds it
    and what to do (`advice`)."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, output, advice)
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command or current_command(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before unlocking, so that nobody locks a file that is going away
        os.close(fd)  # releases the lock


def check_not_written(path: Path, advice: str) -> None:
    """Raise OutputBusy when a job holds `path`'s lock (is writing it), without taking the lock:
    for a job that only reads `path`, so that several readers may run at once."""
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody is writing it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputBusy(f"{path} is being written by another job ({_describe_holder(lock)}); {advice}") from None
    finally:
        os.close(fd)  # releases the probe


def _acquire(path: Path, output: Path, advice: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(f"{output} is being written by another job ({_describe_holder(path)}); {advice}") from None
        # The holder may have removed the file between our open and our lock: then ours is an
        # orphan nobody else would see, so start again on the file now at the path.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _describe_holder(path: Path) -> str:
    """The lock's record; the holder writes it just after locking, so wait briefly for it."""
    for _ in range(40):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            h = json.loads(path.read_text("utf-8"))
            return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
        time.sleep(0.05)
    return f"its record in {path} is unreadable"
