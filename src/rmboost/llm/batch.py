"""Batch mode: the method code runs unchanged, its uncached requests go out in rounds of batches.

In batch mode `LLM.complete()` hands a request that is not in the cache to the `BatchRunner`,
which parks it on a future. When every coroutine of the job is waiting on such a future (nothing
registered a request for a few turns of the event loop), the pending requests form a round: they
are grouped by where they go, split into batch files within the provider's limits, recorded in
the cache database (`batch_store`), sent, polled and read. Answers go into the request cache as
they are read, READ_CHUNK per transaction (the batch is marked read only once all are committed,
so a killed run reads the file again); then the futures resolve and the methods go on to their
next step, which forms the next round. An RMBoost job is thus two rounds (y1, then y2) plus a
round per retry.

Requests that already sit in an unfinished batch (a killed run's) join that batch instead of a new
one. Per-request errors are retried in the next round up to `max_attempts` times when the
provider may answer them later (expired, cancelled, 429, 5xx), then fail like an online error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmboost.llm.batch_command import CommandBatchTransport
from rmboost.llm.batch_format import line_for_record, params_of, parse_result_line
from rmboost.llm.batch_store import BatchRecord, BatchStore, BatchTransport, target_text
from rmboost.llm.cache import RequestCache
from rmboost.llm.chat_format import completion_from_body
from rmboost.llm.types import Completion, FatalLLMError, LLMError
from rmboost.options import OptionError, at_least, option

TRANSPORTS = ("openai", "command")
READ_CHUNK = 1_000  # answers read from a batch's results per cache transaction


def _discount(value: float) -> str | None:
    return None if 0 <= value <= 1 else f"must be between 0 and 1, got {value}"


@dataclass
class BatchOptions:
    """Batch mode: `generate`'s and `filter`'s `--batch*` flags and an experiment's `generator.batch`."""

    enabled: bool = option(False, flags=("--batch",), help=(
        "Send uncached requests as batches, round by round (half price on OpenAI-style batch APIs; "
        "vLLM's offline runner with --batch-transport command)."))
    transport: str = option("openai", choices=TRANSPORTS, noun="batch transport", help=(
        "openai (the endpoint's Files + Batches API) or command (run --batch-command on each batch file)."))
    command: str | None = option(None, help=(
        "command transport: shell command with {input} and {output}, e.g. "
        "'python -m vllm.entrypoints.openai.run_batch -i {input} -o {output} --model M'."))
    completion_window: str = option("24h", flags=("--window",), help="openai transport: completion window.")
    max_requests: int = option(50_000, check=at_least(1),  # OpenAI's limit
                               help="Requests per batch file (a round is split above it).")
    max_bytes: int = option(190_000_000, check=at_least(1),  # OpenAI allows 200 MB
                            help="Bytes per batch file (a round is split above it).")
    poll_interval: float = option(5.0, flags=("--poll",),
                                  help="Seconds before the first status check (grows 1.5x per check).")
    poll_max: float = option(300.0, help="Longest wait between two status checks, in seconds.")
    rows: int = option(0, check=at_least(0), help=(
        "Prompts in flight in batch mode (0: all); a round holds about one request per prompt."))
    workdir: Path | None = option(None, flags=("--dir",), help=(
        "Folder for batch files (default: beside the cache); the command transport's command must see it."))
    discount: float = option(0.5, check=_discount,
                             help="Cost estimate: batch price = online price x (1 - discount).")
    price_in: float | None = option(None, help="Batch price per million input tokens (instead of the discount).")
    price_out: float | None = option(None, help="Batch price per million output tokens (instead of the discount).")

    def __post_init__(self) -> None:
        if self.enabled and self.transport == "command" and not self.command:
            raise OptionError("--batch-transport command needs --batch-command '... {input} ... {output}'")




@dataclass
class _Pending:
    request: dict[str, Any]  # as the cache records it
    transport: BatchTransport
    futures: list[asyncio.Future[Completion]] = field(default_factory=list)


@dataclass
class RoundStatus:
    number: int = 0
    requests: int = 0
    started: float = 0.0
    batches: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # id -> (status, done, total)


class BatchRunner:
    """Collects a job's uncached requests into rounds and sends each round as batches."""

    def __init__(
        self,
        cache: RequestCache,
        options: BatchOptions,
        max_attempts: int = 3,
        *,
        report: Callable[[str], None] | None = None,
        on_update: Callable[[], None] | None = None,
    ):
        self.cache = cache
        self.options = options
        self.max_attempts = max(1, max_attempts)
        self.store = BatchStore(cache.path)
        self.report = report or (lambda message: None)
        self.on_update = on_update or (lambda: None)
        self.workdir = options.workdir or cache.path.parent / f"{cache.path.name}.batches"
        self.round = RoundStatus()
        self.batches_created = 0
        self.batches_attached = 0
        self.waited = 0.0  # seconds spent waiting on batches
        self._transports: dict[str, BatchTransport] = {}
        self._pending: dict[str, _Pending] = {}
        self._current: dict[str, _Pending] = {}
        self._attempts: Counter[str] = Counter()
        self._activity = 0  # requests registered and keep_open() calls: a round waits while it moves
        self._driver: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ what LLM.complete() calls

    def attach(self, llm: Any, backend: Any) -> None:
        """Send `llm`'s uncached requests through this runner; `backend` is its BackendOptions."""
        opts = self.options
        if opts.transport == "openai":
            urls = [backend.base_url] if isinstance(backend.base_url, str) else list(backend.base_url or ())
            if backend.backend != "openai" or not urls:
                raise ValueError(
                    "--batch with the openai transport needs --backend openai --base-url URL (an endpoint "
                    "with the Files and Batches API); for vLLM's offline runner use --batch-transport command"
                )
            if len(urls) > 1:
                raise ValueError(f"--batch sends its files to one endpoint; give --base-url once, not {len(urls)} times")
            # httpx is imported only for this transport
            from rmboost.llm.batch_openai import OpenAIBatchTransport

            transport: BatchTransport = OpenAIBatchTransport(
                urls[0], self.workdir, api_key_env=backend.api_key_env,
                completion_window=opts.completion_window, timeout=backend.timeout, max_retries=backend.max_retries,
            )
        else:
            assert opts.command is not None
            transport = CommandBatchTransport(opts.command, self.workdir)
        llm.batch = self
        llm.batch_transport = self._transports.setdefault(target_text(transport.target()), transport)

    async def complete(self, transport: BatchTransport, key: str, request: dict[str, Any]) -> Completion:
        """The answer to an uncached request, after the round it joins has been read."""
        if self._error is not None:
            raise self._error
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        entry = self._current.get(key) or self._pending.setdefault(key, _Pending(request, transport))
        entry.futures.append(future)
        self._activity += 1
        if self._driver is None:
            self._driver = asyncio.create_task(self._drive())
        return await future

    def keep_open(self) -> None:
        """Something that may still add requests to this round made progress (the job reading
        past prompts it finished earlier, handing the event loop a turn now and then): the round
        waits for it as for a new request, instead of closing on those quiet turns."""
        self._activity += 1

    # ------------------------------------------------------------------ rounds

    async def _drive(self) -> None:
        try:
            while self._pending:
                await self._settle()
                self._current, self._pending = self._pending, {}
                await self._run_round(self._current)
                self._current = {}
        except BaseException as exc:  # a job-level error: every waiting method hears it
            self._error = exc if isinstance(exc, Exception) else FatalLLMError("batch mode was interrupted")
            for entry in [*self._current.values(), *self._pending.values()]:
                for future in entry.futures:
                    if not future.done():
                        future.set_exception(self._error)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._driver = None

    async def _settle(self) -> None:
        """Wait until no coroutine registered a request for a while: everyone is waiting on us."""
        quiet_turns, last, quiet_since = 0, self._activity, time.monotonic()
        while quiet_turns < 5 or time.monotonic() - quiet_since < 0.05:
            await asyncio.sleep(0 if quiet_turns < 5 else 0.01)
            if self._activity != last:
                quiet_turns, last, quiet_since = 0, self._activity, time.monotonic()
            else:
                quiet_turns += 1

    async def _run_round(self, entries: dict[str, _Pending]) -> None:
        self.round = RoundStatus(self.round.number + 1, len(entries), time.monotonic())
        targets = {target_text(e.transport.target()): e.transport.target() for e in entries.values()}
        attached = self.store.unfinished_for(entries, targets.values())
        in_old = set().union(*attached.values()) if attached else set()
        new_ids = self._record_new(entries, in_old)
        self.batches_attached += len(attached)
        self.batches_created += len(new_ids)
        ids = [*attached, *new_ids]
        for batch_id in ids:
            record = self.store.get(batch_id)
            self.round.batches[batch_id] = (record.status or record.state, 0, record.n_requests)
        self.report(
            f"batch round {self.round.number}: {len(entries)} requests in {len(ids)} batch(es)"
            + (f", {len(attached)} of them already sent by an earlier run" if attached else "")
        )
        errors: dict[str, tuple[str, str, bool]] = {}
        tasks = [asyncio.create_task(self._run_batch(batch_id, errors)) for batch_id in ids]
        try:
            # On a job-level error the other batches stop being watched; they stay recorded, and
            # the next run re-attaches to them.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.waited += time.monotonic() - self.round.started
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        self._resolve(entries, errors)

    def _record_new(self, entries: dict[str, _Pending], skip: set[str]) -> list[str]:
        """Split the requests not in any unfinished batch into batch files and record them."""
        ids: list[str] = []
        by_target: dict[str, list[str]] = {}
        for key, entry in entries.items():
            if key not in skip:
                by_target.setdefault(target_text(entry.transport.target()), []).append(key)
        for target, keys in by_target.items():
            transport = self._transports[target]
            chunk: list[tuple[str, str]] = []
            size = 0
            for key in keys:
                request = json.dumps(entries[key].request, ensure_ascii=False)
                line_bytes = len(line_for_record(key, entries[key].request).encode("utf-8"))
                if chunk and (len(chunk) >= self.options.max_requests or size + line_bytes > self.options.max_bytes):
                    ids.append(self.store.create(transport.name, transport.target(), chunk))
                    chunk, size = [], 0
                chunk.append((key, request))
                size += line_bytes
            if chunk:
                ids.append(self.store.create(transport.name, transport.target(), chunk))
        return ids

    def _resolve(self, entries: dict[str, _Pending], errors: dict[str, tuple[str, str, bool]]) -> None:
        """Answer every future of the round, or carry its request into the next round."""
        for key, entry in entries.items():
            hit = self.cache.get(key)
            if hit is not None:
                hit.cached = False  # paid for by this job's batches (perhaps by an earlier, killed run)
                for future in entry.futures:
                    if not future.done():
                        future.set_result(hit)
                continue
            reason, message, retryable = errors.get(key, ("batch_unfinished", "no result for this request", True))
            self._attempts[key] += 1
            if retryable and self._attempts[key] < self.max_attempts:
                self._pending[key] = entry
                continue
            tries = f" after {self._attempts[key]} batch(es)" if retryable else ""
            error = LLMError(f"{reason}: {message}{tries}")
            for future in entry.futures:
                if not future.done():
                    future.set_exception(error)

    # ------------------------------------------------------------------ one batch

    async def _run_batch(self, batch_id: str, errors: dict[str, tuple[str, str, bool]]) -> None:
        record = self.store.get(batch_id)
        transport = self._transports[target_text(record.target)]
        if record.state in ("new", "uploaded"):
            await transport.submit(record, self.store, lambda path: self._write_input(batch_id, path))
            self.report(f"batch {record.remote_id or record.id} sent ({record.n_requests} requests)")
        delay = self.options.poll_interval
        problem = None
        while record.state == "submitted":
            poll = await transport.poll(record)
            record.status, record.counts, record.info = poll.status, poll.counts, {**record.info, **poll.info}
            problem = poll.problem
            self._show(record)
            if poll.terminal:
                record.state = "reading"
                self.store.update(batch_id, status=poll.status, counts=poll.counts, info=record.info, state="reading")
                break
            self.store.update(batch_id, status=poll.status, counts=poll.counts)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.options.poll_max, transport.max_poll_delay)
        if record.state == "reading":
            await self._read(record, transport, errors)
            self.store.update(batch_id, state="done")
            await transport.cleanup(record)
            self._show(record)
        if problem:
            raise FatalLLMError(problem)

    def _write_input(self, batch_id: str, path: Path) -> int:
        size = 0
        with path.open("w", encoding="utf-8") as fh:
            for key, request in self.store.requests(batch_id):
                line = line_for_record(key, json.loads(request))
                fh.write(line)
                size += len(line)
        return size

    async def _read(self, record: BatchRecord, transport: BatchTransport, errors: dict[str, tuple[str, str, bool]]) -> None:
        """Put a finished batch's answers into the cache, `READ_CHUNK` of them per transaction.

        The batch is marked read only after this returns, so a run killed before the last
        commit finds it `reading` and reads the whole file again (answers already committed are
        written again as the same rows): a lost chunk is read again, never paid again.
        """
        answered = 0
        queued: set[str] = set()  # keys answered since the last commit (not in the cache yet)
        outcomes: list[tuple[str, str]] = []

        def commit() -> None:
            done = list(outcomes)
            outcomes.clear()
            queued.clear()
            self.cache.commit()  # the answers first: no outcome says "ok" for an answer not on disk
            self.store.set_outcomes(record.id, done)

        try:
            async for obj in transport.results(record):
                result = parse_result_line(obj)
                request = self.store.request(record.id, result.key)
                if request is None:
                    continue  # not one of this batch's requests
                if result.body is not None:
                    try:
                        completion = completion_from_body(result.body, request["messages"], params_of(request),
                                                          request["backend"].get("model", ""))
                    except (KeyError, IndexError, TypeError, ValueError, LLMError) as exc:
                        errors[result.key] = ("bad_response", f"unreadable batch answer ({exc})", False)
                        outcomes.append((result.key, "error: bad_response"))
                    else:
                        completion.request_id = result.key
                        self.cache.queue(result.key, request, completion)
                        queued.add(result.key)
                        outcomes.append((result.key, "ok"))
                        errors.pop(result.key, None)
                        answered += 1
                elif result.key not in queued and self.cache.get(result.key) is None:
                    errors[result.key] = (result.reason, result.message, result.retryable)
                    outcomes.append((result.key, f"error: {result.reason}: {result.message}"[:500]))
                if len(outcomes) >= READ_CHUNK:
                    commit()
        finally:  # what was read before an error or Ctrl-C is kept, as each answer was before
            commit()
        if record.status in ("expired", "cancelled"):
            self.report(f"batch {record.remote_id or record.id} {record.status} with {answered} of "
                        f"{record.n_requests} answered; the rest go into the next round")

    # ------------------------------------------------------------------ progress

    def _show(self, record: BatchRecord) -> None:
        done = int(record.counts.get("completed", 0)) + int(record.counts.get("failed", 0))
        shown = "read" if record.state == "done" else record.status or record.state
        self.round.batches[record.id] = (shown, done, record.n_requests)
        self.on_update()

    def status_line(self) -> str:
        """Round, batch states, requests done/total in the round and time waited, for the progress line."""
        r = self.round
        if not r.number:
            return "batch: no round yet"
        states = Counter(status for status, _, _ in r.batches.values())
        done = sum(d for _, d, _ in r.batches.values())
        total = sum(t for _, _, t in r.batches.values()) or r.requests
        running = time.monotonic() - r.started if self._driver is not None else 0.0
        shown = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "preparing"
        return (f"round {r.number}: batches {shown} | requests {done:,}/{total:,} | "
                f"waited {_duration(running)} (all rounds {_duration(self.waited + running)})")

    def summary(self) -> dict[str, Any]:
        return {"rounds": self.round.number, "batches_created": self.batches_created,
                "batches_attached": self.batches_attached, "waited_seconds": round(self.waited, 2),
                "transports": sorted(t.name for t in self._transports.values())}

    async def aclose(self) -> None:
        if self._driver is not None:
            unread = [b for b, (status, _, _) in self.round.batches.items() if status != "read"]
            if unread:
                self.report(f"{len(unread)} batch(es) of round {self.round.number} are still with the provider; "
                            "the same command picks them up (nothing is sent twice)")
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)
        for transport in self._transports.values():
            await transport.aclose()
        self.store.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
