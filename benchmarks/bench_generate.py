"""Throughput of `rmboost generate`, and what rmboost itself costs on top of the model server.

Prints pairs/min, prompts/min and tokens/s (in and out) for:

  (a) the embedded llamacpp backend (SmolLM2-135M-Instruct in this process);
  (b) the openai backend against a real `llama_cpp.server` on loopback, at each --concurrency;
  (c) a bare client loop: a plain aiohttp session, the same concurrency, replaying exactly
      the request bodies (b) sent (recorded at its HTTP client, byte for byte), with no cache,
      no parsing, no rmboost.

(b) wall / (c) wall is rmboost's overhead. Every run has a fresh, empty request cache, and the
server is restarted before every (b) and (c) run, so no run inherits another's KV cache.

Usage: .venv/bin/python benchmarks/bench_generate.py [--prompts 3] [--max-tokens 32]
           [--concurrency 1 4 8] [--threads 1] [--no-embedded] [--json results.json]

What the concurrency numbers mean: llama_cpp.server (llama-cpp-python 0.3.x) has no parallel
slots or batching across requests: it serves one request at a time behind a lock, and queues
the rest. So concurrency here measures queueing and scheduling, not parallel decoding; it can
even cost throughput, because interleaved prompts evict each other's prompt prefix from the
server's KV cache. Against vLLM or llama.cpp's C++ `llama-server -np N`, it would buy real
parallelism.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from rmboost.backends import BackendOptions
from rmboost.generate import GenerateConfig, run_generate
from rmboost.llm.llamacpp import LlamaCppBackend, embedded_gguf_path
from rmboost.llm.openai_compat import OpenAIBackend

ROOT = Path(__file__).resolve().parents[1]
MODEL_ALIAS = "smollm2"


@dataclass
class Result:
    """One measured run."""

    name: str  # "embedded", "rmboost-openai", "bare-aiohttp"
    concurrency: int
    requests: int
    prompts: int
    pairs: int
    wall_s: float
    tokens_in: int
    tokens_out: int
    client_cpu_s: float  # CPU time of this process (the client side; the server is another process)

    @property
    def pairs_per_min(self) -> float:
        return 60 * self.pairs / self.wall_s

    @property
    def prompts_per_min(self) -> float:
        return 60 * self.prompts / self.wall_s

    @property
    def in_per_s(self) -> float:
        return self.tokens_in / self.wall_s

    @property
    def out_per_s(self) -> float:
        return self.tokens_out / self.wall_s


class RecordingOpenAIBackend(OpenAIBackend):
    """The real openai backend, noting the exact bytes of every chat request it sends.

    Wraps the backend's HTTP client on the instance (a private attribute: acceptable in a
    benchmark, and the only way to replay byte-identical requests without copying its logic).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sent: list[bytes] = []
        request = self._http.request

        async def recording_request(method: str, url: str, body: bytes = b"") -> Any:
            if method == "POST":
                self.sent.append(body)
            return await request(method, url, body)

        self._http.request = recording_request  # type: ignore[method-assign]


def _config(args: argparse.Namespace, out_dir: Path, concurrency: int, backend: str) -> GenerateConfig:
    return GenerateConfig(
        task="qa_feedback",
        input="sample:qa_feedback",
        output=out_dir / "pairs.jsonl",
        limit=args.prompts,
        seed=args.seed,
        backend=BackendOptions(backend=backend),
        concurrency=concurrency,
        max_tokens=args.max_tokens,
        cache=out_dir / "cache.sqlite",  # fresh per run: every answer is computed
        use_cache=True,
        prefill=args.prefill,
        show_progress=False,
    )


async def _timed_generate(cfg: GenerateConfig, backend: Any) -> tuple[Any, float, float]:
    """The job's summary, wall seconds and this process's CPU seconds."""
    quiet = Console(file=io.StringIO())
    started, cpu = time.perf_counter(), time.process_time()
    summary = await run_generate(cfg, quiet, backend=backend)
    return summary, time.perf_counter() - started, time.process_time() - cpu


def _from_summary(name: str, concurrency: int, summary: Any, wall: float, cpu: float) -> Result:
    usage = summary.usage.values()
    return Result(
        name=name,
        concurrency=concurrency,
        requests=summary.llm_calls,
        prompts=summary.prompts,
        pairs=summary.pairs_written,
        wall_s=wall,
        tokens_in=sum(u["tokens_in"] for u in usage),
        tokens_out=sum(u["tokens_out"] for u in usage),
        client_cpu_s=cpu,
    )


async def bench_embedded(args: argparse.Namespace) -> Result:
    """(a): the model is loaded before the clock starts, as (b)'s server is."""
    backend = LlamaCppBackend(n_ctx=args.n_ctx, n_threads=args.threads)
    await backend.check()
    with tempfile.TemporaryDirectory(prefix="bench-embedded-") as tmp:
        cfg = _config(args, Path(tmp), 1, "llamacpp")
        summary, wall, cpu = await _timed_generate(cfg, backend)
    return _from_summary("embedded", 1, summary, wall, cpu)


async def bench_rmboost_openai(
    base_url: str, args: argparse.Namespace, concurrency: int
) -> tuple[Result, list[bytes]]:
    """(b): returns the result and the requests it sent, in the order it sent them."""
    backend = RecordingOpenAIBackend(base_url, MODEL_ALIAS, timeout=600.0, max_in_flight=concurrency)
    with tempfile.TemporaryDirectory(prefix="bench-openai-") as tmp:
        cfg = _config(args, Path(tmp), concurrency, "openai")
        summary, wall, cpu = await _timed_generate(cfg, backend)
    return _from_summary("rmboost-openai", concurrency, summary, wall, cpu), backend.sent


async def bench_bare(
    base_url: str, requests: list[bytes], concurrency: int, prompts: int, pairs: int
) -> Result:
    """(c): the same request bodies through a bare aiohttp session and `concurrency` workers."""
    import aiohttp

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    tokens = [0, 0]
    headers = {"Content-Type": "application/json"}
    url = base_url.rstrip("/") + "/chat/completions"

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), headers=headers, timeout=aiohttp.ClientTimeout(total=600)
    ) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(url, data=body) as response:
                    usage = json.loads(await response.read()).get("usage") or {}
                tokens[0] += usage.get("prompt_tokens", 0)
                tokens[1] += usage.get("completion_tokens", 0)

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    # The bare loop makes the answers but parses nothing: it is credited with (b)'s pairs.
    return Result("bare-aiohttp", concurrency, len(requests), prompts, pairs, wall, tokens[0], tokens[1], cpu)


def _with_server(args: argparse.Namespace, run: Callable[[str], Awaitable[Any]]) -> Any:
    """Run `run(base_url)` against a freshly started llama_cpp.server, stopped afterwards."""
    sys.path.insert(0, str(ROOT / "tests"))
    from servers import llama_server  # the tests' launcher: loopback only, always stopped

    with llama_server(
        embedded_gguf_path(),
        alias=MODEL_ALIAS,
        n_ctx=args.n_ctx,
        # Configured like LlamaCppBackend(n_threads=T): T threads to generate, the llama.cpp
        # default (every core) to evaluate prompts, no logits for every prompt token, no cache.
        n_threads=args.threads,
        n_threads_batch=None,
        extra_args=("--logits_all", "False", "--verbose", "False"),
    ) as server:
        return asyncio.run(run(server.base_url))


def print_table(results: list[Result]) -> None:
    rmboost_wall = {r.concurrency: r.wall_s for r in results if r.name == "rmboost-openai"}
    print(
        "| run | concurrency | requests | prompts | pairs | wall s | pairs/min | prompts/min "
        "| tokens in/s | tokens out/s | client CPU ms/request | rmboost wall / bare wall |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in results:
        ratio = f"{rmboost_wall[r.concurrency] / r.wall_s:.3f}" if r.name == "bare-aiohttp" else ""
        # In-process decoding burns this process's CPU: not comparable with the HTTP runs.
        cpu_ms = "" if r.name == "embedded" else f"{1000 * r.client_cpu_s / max(1, r.requests):.1f}"
        print(
            f"| {r.name} | {r.concurrency} | {r.requests} | {r.prompts} | {r.pairs} | {r.wall_s:.1f} "
            f"| {r.pairs_per_min:.2f} | {r.prompts_per_min:.2f} | {r.in_per_s:.1f} | {r.out_per_s:.2f} "
            f"| {cpu_ms} | {ratio} |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=3, help="prompts from sample:qa_feedback (default 3)")
    parser.add_argument("--max-tokens", type=int, default=32, help="per response (default 32)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], help="(b)/(c) levels")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="llama.cpp threads, for (a) and the server alike (default 1: on a shared machine, "
        "threads that compete with other processes for cores slow down, not up)",
    )  # fmt: skip
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prefill", action=argparse.BooleanOptionalAction, default=True,
        help="start answers inside <response> (default on, the embedded backend's default, so "
        "all runs send the same messages; llama_cpp.server does not really continue it)",
    )  # fmt: skip
    parser.add_argument("--no-embedded", dest="embedded", action="store_false", help="skip (a)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: list[Result] = []
    started = time.perf_counter()
    if args.embedded:
        results.append(asyncio.run(bench_embedded(args)))
        print(f"# (a) embedded done: {results[-1].wall_s:.1f}s", file=sys.stderr)
    for concurrency in args.concurrency:
        run_b = partial(bench_rmboost_openai, args=args, concurrency=concurrency)
        rmboost_result, sent = _with_server(args, run_b)
        run_c = partial(
            bench_bare,
            requests=sent,
            concurrency=concurrency,
            prompts=rmboost_result.prompts,
            pairs=rmboost_result.pairs,
        )
        results += [rmboost_result, _with_server(args, run_c)]
        print(
            f"# concurrency {concurrency} done: rmboost {rmboost_result.wall_s:.1f}s, "
            f"bare {results[-1].wall_s:.1f}s",
            file=sys.stderr,
        )
    print(
        f"# prompts={args.prompts} max_tokens={args.max_tokens} threads={args.threads} "
        f"prefill={args.prefill} seed={args.seed}; total {time.perf_counter() - started:.0f}s"
    )
    print_table(results)
    if args.json:
        payload = [asdict(r) | {"pairs_per_min": r.pairs_per_min, "out_per_s": r.out_per_s} for r in results]
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
