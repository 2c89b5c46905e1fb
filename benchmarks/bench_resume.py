"""Wall time and peak RSS of `rmboost generate` resuming a large job, at 100k and 1M prompts.

For each size N the script writes a synthetic job into a work folder: N QA-Feedback-sized
prompts (JSONL, ~1 KB each) and the output of that job as a previous run left it, one ~3 KB
pair per prompt (the pair schema rmboost writes, balanced labels), in one of two states:

  finished   the final file, in input order, and the summary the run that finished it wrote
             (the common case: run the command again); the re-run takes the whole job's
             token count from that summary;
  unordered  the working file of a run killed just before its end: every pair is there, but in
             the order concurrent workers finished them (shuffled within windows of 256), and
             no summary;
  replayed   a job run to the end with the instant backend below and its request cache, whose
             summary is then deleted (a run killed after its last pair): the re-run has nothing
             to do but recount the whole job by replaying it from the cache (no request is sent).

`unordered` has an empty cache: its re-run recounts the job by replaying it through cache
misses (every prompt fails at once, cheaply); `replayed` measures the replay that finds every
answer, as a killed job's re-run does.

Then it runs `python -m rmboost.cli generate ...` on it in a child process, with PYTHONPATH
set to `--src` (this tree's src by default; point it at an older checkout for "before"
numbers), against an endpoint that does not exist: a finished job makes no call, so it never
notices. It prints the child's wall time, CPU time (user + system: on a shared machine the
wall time also counts waiting for a core) and peak RSS (`ru_maxrss` from wait4), checks that
the run made no call and resumed all N pairs, and that the final file is the N pairs in input
order, byte for byte (sha256 against the lines the script wrote, in order). `--compare-src`
runs another source tree on a copy of the same job: "same bytes" for both means both wrote
exactly the same final file.

Usage: .venv/bin/python benchmarks/bench_resume.py [--sizes 100000 1000000]
           [--scenarios finished unordered] [--src PATH] [--compare-src PATH]
           [--workdir DIR] [--keep]

Disk: about 4.3 KB per prompt for the job plus the reordered file while it is written (1M
prompts: ~7.6 GB at peak; with --compare-src a copy of the job as well). The work folder is removed unless --keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 256  # how far out of order an interrupted run's pairs are


def derive_label(seed: int, position: int) -> str:
    """Balanced labels as rmboost assigns them (kept here so any --src can be measured)."""
    start = position - position % 2
    digest = hashlib.sha256(f"{seed}:label:{start}".encode()).digest()
    first = "better" if (int.from_bytes(digest[:4], "big") & 0x7FFFFFFF) % 2 == 0 else "worse"
    return first if position == start else ("worse" if first == "better" else "better")


def synthesize(folder: Path, n: int, scenario: str) -> str:
    """Write in.jsonl and pairs.jsonl for a job of n prompts; return the final file's sha256."""
    rng = random.Random(n)
    words = [f"word{i}" for i in range(500)]
    passages = "\n".join(f"[{k}] Title {k}: " + " ".join(rng.choices(words, k=30)) for k in range(1, 4))
    response = " ".join(rng.choices(words, k=30))
    template = {
        "id": "@ID@", "prompt": "Question: @Q@\n\nPassages:\n" + passages,
        "chosen": response + " better", "rejected": response, "method": "rmboost", "task": "qa_feedback",
        "label": "@LABEL@", "aspect_mode": "model-selects", "aspects": ["completeness"],
        "y1": response, "y2": response + " better", "model": "synthetic", "seed": 0,
        "tokens_in": 2400, "tokens_out": 180, "request_ids": ["@R1@", "@R2@"],
        "inputs": {"question": "@Q@", "passages": passages, "reference": response},
    }
    line = json.dumps(template, ensure_ascii=False) + "\n"
    prompt_line = json.dumps({"id": "@ID@", "question": "@Q@", "passages": passages, "reference": response}) + "\n"
    final = hashlib.sha256()
    window: list[bytes] = []
    with (folder / "in.jsonl").open("w", encoding="utf-8") as fin, (folder / "pairs.jsonl").open("wb") as fout:
        for i in range(n):
            rid, question = f"q{i:07d}", f"What is asked in question number {i}?"
            fin.write(prompt_line.replace("@ID@", rid).replace("@Q@", question))
            text = (line.replace("@ID@", rid).replace("@Q@", question).replace("@LABEL@", derive_label(0, i))
                    .replace("@R1@", hashlib.sha256(f"{i}a".encode()).hexdigest())
                    .replace("@R2@", hashlib.sha256(f"{i}b".encode()).hexdigest()))
            data = text.encode("utf-8")
            final.update(data)
            window.append(data)
            if len(window) == WINDOW or i == n - 1:
                if scenario == "unordered":
                    rng.shuffle(window)
                fout.write(b"".join(window))
                window = []
    if scenario == "finished":  # the run that finished the job wrote its summary, whole-job count included
        steps = {step: {"tokens_in": 1200 * n, "tokens_out": 90 * n, "calls": n} for step in ("y1", "y2")}
        job = {"counted": "this run", "exact": True, "prompts": n, "pairs": n, "filtered_rows": 0,
               "tokens_in": 2400 * n, "tokens_out": 180 * n, "usage": steps, "judge_usage": {}}
        (folder / "pairs.summary.json").write_text(json.dumps({"prompts": n, "pairs_total": n, "job": job}))
    return final.hexdigest()


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system CPU of the child: what the machine's other load does not inflate
    peak_rss_mb: float
    code: int
    stderr: str


RESUME_CMD = ["-m", "rmboost.cli", "generate", "--input", "{folder}/in.jsonl", "--output", "{folder}/pairs.jsonl",
              "--cache", "{folder}/cache.sqlite", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
              "--model", "synthetic", "--no-progress"]

# A fresh job whose backend answers at once (in the process, no HTTP, no cache): what is left
# is rmboost's own work per pair, and the memory that work needs.
FRESH_CHILD = """
import asyncio, hashlib, sys
from pathlib import Path
from rmboost.generate import GenerateConfig, run_generate
from rmboost.llm.types import Completion

class Instant:
    name = model = "instant"
    def identity(self): return {"backend": self.name, "model": self.model}
    async def check(self): return None
    async def aclose(self): return None
    async def complete(self, messages, params):
        text = messages[-1]["content"]
        tag = hashlib.sha256((text + str(params.seed)).encode()).hexdigest()[:16]
        answer = (f"<aspects>Completeness</aspects><response>rewrite {tag}</response>"
                  if "<existing_answer>" in text else f"<response>first answer {tag}</response>")
        return Completion(text=answer, tokens_in=len(text) // 4, tokens_out=8, model=self.model)

folder, cached = Path(sys.argv[1]), len(sys.argv) > 2
cfg = GenerateConfig(task="qa_feedback", input=str(folder / "in.jsonl"), output=folder / "pairs.jsonl",
                     use_cache=cached, cache=folder / "cache.sqlite", show_progress=False, concurrency=64)
asyncio.run(run_generate(cfg, backend=Instant()))
"""


def run_child(folder: Path, src: Path, fresh: bool, cached: bool = False) -> Run:
    """Run the job in a child process with PYTHONPATH=src; its wall time, CPU time and peak RSS."""
    args = (["-c", FRESH_CHILD, str(folder), *(["cached"] if cached else [])] if fresh
            else [a.format(folder=folder) for a in RESUME_CMD])
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    errors = (folder / "stderr.txt").open("w+")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=errors)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    errors.seek(0)
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status),
               errors.read())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check(folder: Path, run: Run, n: int, expected: str | None) -> str:
    """What the run left. Resume: no call, all n pairs resumed, the expected bytes. Fresh: n pairs."""
    if run.code != 0:
        return f"FAILED (exit {run.code}): {run.stderr.strip().splitlines()[-1:]}"
    summary = json.loads((folder / "pairs.summary.json").read_text())
    sha = sha256_file(folder / "pairs.jsonl")
    if expected == "replayed":
        job = summary.get("job") or {}
        ok = summary["llm_calls"] == 0 and summary["resumed"] == n and (
            not job or (job.get("counted") == "replayed from the cache" and job.get("exact") is True))
        counted = f"job counted {job['counted']!r}" if job else "no whole-job count in this src"
        return f"{'ok' if ok else 'WRONG'}: {summary['resumed']:,} resumed, {counted}"
    if expected is None:
        ok = summary["pairs_total"] == n and not summary["failures"]
        return f"{'ok' if ok else 'WRONG'}: {summary['pairs_total']:,} pairs, sha256 {sha[:12]}"
    if summary["llm_calls"] or summary["resumed"] != n or summary["pairs_total"] != n:
        return f"WRONG summary: calls {summary['llm_calls']}, resumed {summary['resumed']}"
    counted = (summary.get("job") or {}).get("counted")
    return ("ok, same bytes" if sha == expected else "WRONG bytes") + (f", job counted {counted!r}" if counted else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="resume: prompts")
    parser.add_argument("--scenarios", nargs="+", default=["finished", "unordered"],
                        choices=["finished", "unordered", "replayed"])
    parser.add_argument("--fresh-sizes", type=int, nargs="*", default=[10_000, 100_000],
                        help="fresh jobs with an instant in-process backend: prompts (none to skip)")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the rmboost source to measure")
    parser.add_argument("--compare-src", type=Path, help="also measure this source on the same jobs")
    parser.add_argument("--workdir", type=Path, help="where to write the jobs (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    sources = [args.src, *([args.compare_src] if args.compare_src else [])]
    jobs = [(n, s) for n in args.sizes for s in args.scenarios] + [(n, "fresh") for n in args.fresh_sizes]
    work = Path(tempfile.mkdtemp(prefix="bench-resume-", dir=args.workdir))
    print(f"work folder: {work}", flush=True)
    print("| prompts | output before the run | output MB | src | wall s | CPU s | peak RSS MB | result |")
    print("|--:|---|--:|---|--:|--:|--:|---|", flush=True)
    try:
        for n, scenario in jobs:
            job = work / f"{n}-{scenario}"
            job.mkdir()
            expected = synthesize(job, n, scenario)
            if scenario in ("fresh", "replayed"):
                expected = None
                (job / "pairs.jsonl").unlink()
            if scenario == "replayed":  # the job, run to the end into its cache, its summary lost
                setup = run_child(job, sources[0], fresh=True, cached=True)
                assert setup.code == 0, setup.stderr[-2000:]
                (job / "pairs.summary.json").unlink()
                expected = "replayed"
            for i, src in enumerate(sources):
                last = i == len(sources) - 1
                folder = job if last else shutil.copytree(job, work / "run")  # the last run may consume the job
                run = run_child(folder, src, fresh=scenario in ("fresh", "replayed"), cached=scenario == "replayed")
                result = check(folder, run, n, expected)
                size_mb = (folder / "pairs.jsonl").stat().st_size / 1e6 if run.code == 0 else 0
                print(f"| {n:,} | {scenario} | {size_mb:,.0f} | {src} | {run.wall_s:.1f} | {run.cpu_s:.1f} | "
                      f"{run.peak_rss_mb:,.0f} | {result} |", flush=True)
                shutil.rmtree(folder)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
