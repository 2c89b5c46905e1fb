"""Can the client keep up? `rmboost generate --backend openai` against a bare aiohttp loop.

Both send the same requests to the same fast fake server (benchmarks/fake_openai_server.py,
its own process) that answers every request after a fixed latency. Per concurrency it prints:

  ideal     requests / concurrency x latency: what a client that costs nothing would take
  bare      a bare aiohttp loop (one session, pool without a cap, JSON parsed) replaying the
            exact request bodies rmboost sent, read from rmboost's cache and serialised by the
            backend's own `chat_body_json` before the clock starts
  rmboost   `rmboost generate` (RMBoost on QA-Feedback-sized prompts: y1, then the rewrite y2),
            the job's own wall time (its summary's wall_seconds: inputs, endpoint check, every
            request, the cache, the output), with a fresh cache file: the cache is on
  ratio     bare wall / rmboost wall (>= 0.8 is the target)
  peak RSS  of each client process (getrusage of the child), and client CPU per request
            (the process's CPU minus that of starting it, divided by the requests)

Each client runs in its own process; each pair of runs is repeated (`--repeat`, default 3)
and the table shows the pair with the median ratio, then the spread of the ratio: on a shared
machine the clients' share of the CPU changes from one minute to the next. The server's CPU
per request during each run is printed too, so its own ceiling (1 / CPU per request, on one core) can be checked against the
rates measured. At low concurrency fewer prompts are used (`--rounds` requests per worker),
so that every row takes about `2 x rounds x latency` seconds.

Usage: python benchmarks/bench_client.py [--concurrency 1 4 16 64 256 1024] [--latency 1.0]
           [--prompts 2000] [--rounds 8] [--repeat 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "benchmarks" / "fake_openai_server.py"
SAMPLES = ROOT / "src" / "rmboost" / "data" / "samples" / "qa_feedback.jsonl"
MODEL = "fake-model"
KEY_ENV = "RMBOOST_BENCH_KEY"


@dataclass
class Run:
    kind: str  # "rmboost" or "bare"
    concurrency: int
    requests: int
    wall_s: float
    cpu_s: float  # the whole client process
    peak_rss_mb: float
    server_cpu_s: float
    server_max_in_flight: int


# --------------------------------------------------------------------------- the bare loop


async def bare_loop(url: str, bodies: list[bytes], concurrency: int, key: str) -> tuple[float, int]:
    import aiohttp

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        todo = iter(bodies)
        done = 0

        async def worker() -> None:
            nonlocal done
            for body in todo:
                async with session.post(url, data=body) as response:
                    answer = json.loads(await response.read())
                if response.status != 200 or not answer["choices"]:
                    raise RuntimeError(f"bad answer: HTTP {response.status}")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, done


def bare_main(url: str, bodies_path: str, concurrency: int) -> None:
    """The child process: prints {"wall_s", "requests"} as JSON."""
    bodies = [line.rstrip(b"\n") for line in Path(bodies_path).read_bytes().splitlines(keepends=True)]
    wall, done = asyncio.run(bare_loop(url, bodies, concurrency, os.environ.get(KEY_ENV, "")))
    print(json.dumps({"wall_s": wall, "requests": done}))


# --------------------------------------------------------------------------- helpers


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0", "--latency", str(latency), "--model", MODEL,
         "--api-key", os.environ[KEY_ENV]],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, line.split()[1]


def server_call(base_url: str, path: str, method: str = "GET") -> dict[str, Any]:
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(urllib.request.Request(root + path, method=method), timeout=30) as r:
        return json.loads(r.read())


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    """Run a child to the end: its stdout, CPU seconds and peak RSS (MB), from wait4."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {stderr[-2000:]}")
        out.seek(0)
        return out.read(), usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def write_prompts(path: Path, n: int) -> None:
    """n QA-Feedback-sized prompts: the shipped samples, each made unique by an id and a suffix."""
    samples = [json.loads(line) for line in SAMPLES.read_text("utf-8").splitlines() if line.strip()]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            row = dict(samples[i % len(samples)])
            row["id"] = f"bench-{i}"
            row["question"] = f"{row['question']} (case {i})"
            fh.write(json.dumps(row) + "\n")


def replay_bodies(cache: Path, out: Path) -> int:
    """The exact request bodies rmboost sent, from its cache, serialised as the backend does."""
    from rmboost.llm.chat_format import chat_body_json
    from rmboost.llm.types import SamplingParams

    with sqlite3.connect(cache) as db, out.open("wb") as fh:
        rows = db.execute("SELECT request FROM requests ORDER BY created").fetchall()
        for (text,) in rows:
            request = json.loads(text)
            params = request["params"]
            params["stop"] = tuple(params.get("stop") or ())
            fh.write(chat_body_json(MODEL, request["messages"], SamplingParams(**params)) + b"\n")
    return len(rows)


def rmboost_cmd(url: str, prompts: Path, limit: int, concurrency: int, folder: Path) -> list[str]:
    return [
        sys.executable, "-m", "rmboost.cli", "generate", "--backend", "openai", "--base-url", url,
        "--model", MODEL, "--api-key-env", KEY_ENV, "--input", str(prompts), "--limit", str(limit),
        "--concurrency", str(concurrency), "--cache", str(folder / "cache.sqlite"),
        "--output", str(folder / "pairs.jsonl"), "--max-tokens", "256", "--no-progress",
    ]  # fmt: skip


# --------------------------------------------------------------------------- the benchmark


def measure(args: argparse.Namespace) -> list[Run]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(args.src)}
    env.setdefault(KEY_ENV, "sk-bench-not-secret")
    os.environ.setdefault(KEY_ENV, env[KEY_ENV])
    runs: list[Run] = []
    server, url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
            work = Path(tmp)
            prompts = work / "prompts.jsonl"
            write_prompts(prompts, args.prompts)
            # What starting each client costs (imports, reading inputs), subtracted from its CPU.
            _, rmboost_start_cpu, _ = run_child(rmboost_cmd(url, prompts, 0, 1, work / "empty"), env)
            (work / "none.jsonl").write_bytes(b"")
            _, bare_start_cpu, _ = run_child(
                [sys.executable, __file__, "--bare", url + "/chat/completions", str(work / "none.jsonl"), "1"], env
            )
            for c in args.concurrency:
                for rep in range(args.repeat):  # rmboost then bare, side by side, repeat times
                    rm, bare = measure_pair(url, prompts, min(args.prompts, args.rounds * c), c,
                                            work / f"c{c}-{rep}", env, rmboost_start_cpu, bare_start_cpu)
                    runs += [rm, bare]
                    print_row(rm, bare, args.latency, file=sys.stderr)
    finally:
        server.kill()
        server.wait()
    return runs


def measure_pair(
    url: str, prompts: Path, limit: int, c: int, folder: Path, env: dict[str, str], rm_start: float, bare_start: float
) -> tuple[Run, Run]:
    """One rmboost run, then the bare loop replaying its exact requests."""
    server_call(url, "/reset", "POST")
    _, cpu, rss = run_child(rmboost_cmd(url, prompts, limit, c, folder), env)
    stats = server_call(url, "/stats")
    summary = json.loads((folder / "pairs.summary.json").read_text("utf-8"))
    if summary["pairs_written"] != limit:
        raise RuntimeError(f"rmboost wrote {summary['pairs_written']} of {limit} pairs")
    rm = Run("rmboost", c, summary["llm_calls"], summary["wall_seconds"], cpu - rm_start, rss,
             stats["cpu_s"], stats["max_in_flight"])  # fmt: skip
    bodies = folder / "bodies.jsonl"
    n = replay_bodies(folder / "cache.sqlite", bodies)
    server_call(url, "/reset", "POST")
    out, cpu, rss = run_child([sys.executable, __file__, "--bare", url + "/chat/completions", str(bodies), str(c)], env)
    stats = server_call(url, "/stats")
    result = json.loads(out)
    if result["requests"] != n:
        raise RuntimeError(f"the bare loop finished {result['requests']} of {n} requests")
    bare = Run("bare", c, n, result["wall_s"], cpu - bare_start, rss, stats["cpu_s"], stats["max_in_flight"])
    return rm, bare


def ceiling(args: argparse.Namespace) -> dict[str, float]:
    """The server alone: no latency, the bare loop at 256 in flight, CPU per request."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server, url = start_server(0.0)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 6000}],
                               "max_tokens": 256}).encode()
            bodies = Path(tmp) / "bodies.jsonl"
            bodies.write_bytes((body + b"\n") * args.ceiling_requests)
            server_call(url, "/reset", "POST")
            out, _, _ = run_child([sys.executable, __file__, "--bare", url + "/chat/completions",
                                   str(bodies), "256"], env)
            stats = server_call(url, "/stats")
    finally:
        server.kill()
        server.wait()
    bare = json.loads(out)
    return {
        "requests": bare["requests"],
        "requests_per_s": bare["requests"] / bare["wall_s"],
        "server_cpu_us_per_request": 1e6 * stats["cpu_s"] / bare["requests"],
        "server_ceiling_per_core": bare["requests"] / stats["cpu_s"],
    }


def cpu_per_request(run: Run) -> str:
    """ms per request; blank for short runs, where the start-up estimate is larger than the run."""
    return f"{1000 * run.cpu_s / run.requests:.2f}" if run.requests >= 500 else ""


def print_row(rm: Run, bare: Run, latency: float, file: Any = sys.stdout) -> None:
    ideal = rm.requests / rm.concurrency * latency
    print(
        f"| {rm.concurrency} | {rm.requests} | {ideal:.1f} | {bare.wall_s:.1f} | {rm.wall_s:.1f} | "
        f"{bare.wall_s / rm.wall_s:.2f} | {cpu_per_request(bare)} | "
        f"{cpu_per_request(rm)} | {bare.peak_rss_mb:.0f} | {rm.peak_rss_mb:.0f} | "
        f"{1e6 * rm.server_cpu_s / rm.requests:.0f} | {rm.server_max_in_flight} |",
        file=file, flush=True,
    )  # fmt: skip


HEADER = (
    "| concurrency | requests | ideal s | bare aiohttp s | rmboost s | bare / rmboost | "
    "bare CPU ms/req | rmboost CPU ms/req | bare peak RSS MB | rmboost peak RSS MB | "
    "server CPU us/req | server max in flight |\n"
    "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        bare_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description="rmboost's openai client vs a bare aiohttp loop")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024])
    p.add_argument("--latency", type=float, default=1.0)
    p.add_argument("--prompts", type=int, default=2000, help="at most this many prompts per run")
    p.add_argument("--rounds", type=int, default=8, help="prompts per worker (2 requests each), capped by --prompts")
    p.add_argument("--repeat", type=int, default=3, help="runs of each pair per concurrency (the median is shown)")
    p.add_argument("--ceiling-requests", type=int, default=20000)
    p.add_argument("--src", type=Path, default=ROOT / "src", help="the rmboost source tree to run (compare versions)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    print(HEADER, file=sys.stderr)  # rows appear on stderr as they are measured, then the table
    runs = measure(args)
    top = ceiling(args)
    print(HEADER)
    pairs = list(zip(runs[::2], runs[1::2], strict=True))
    for c in args.concurrency:
        ranked = sorted((p for p in pairs if p[0].concurrency == c), key=lambda p: p[1].wall_s / p[0].wall_s)
        print_row(*ranked[len(ranked) // 2], args.latency)  # the run with the median ratio
    if args.repeat > 1:
        print(f"\nratio bare / rmboost over {args.repeat} runs per concurrency (min, median, max):")
        for c in args.concurrency:
            ratios = sorted(b.wall_s / r.wall_s for r, b in pairs if r.concurrency == c)
            print(f"  {c:>5}: {ratios[0]:.2f}  {ratios[len(ratios) // 2]:.2f}  {ratios[-1]:.2f}")
    print(
        f"\nserver alone (no latency, 256 in flight, {top['requests']} requests): "
        f"{top['requests_per_s']:.0f} requests/s with the bare client on the same cores; "
        f"server CPU {top['server_cpu_us_per_request']:.0f} us/request = a ceiling of "
        f"{top['server_ceiling_per_core']:.0f} requests/s per core"
    )
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "server": top}, indent=2) + "\n")


if __name__ == "__main__":
    main()
