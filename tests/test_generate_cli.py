"""The `rmboost generate` command as a user runs it: kill -9, Ctrl-C, resume, and bad input."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import read_jsonl
from servers import SCRIPTED_MODEL, ScriptedServer
from typer.testing import CliRunner

from rmboost.cli import app

runner = CliRunner()


def _complete_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines(keepends=True) if line.endswith("\n")]


def _start(out: Path, cache: Path, limit: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rmboost.cli", "generate", "--input", "sample:qa_feedback",
           "--limit", str(limit), "--max-tokens", "32", "--seed", "3", "--output", str(out),
           "--cache", str(cache), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_pairs(proc: subprocess.Popen, out: Path, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(_complete_lines(out)) < n:
        if proc.poll() is not None:
            pytest.fail(f"generate ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {n} pairs within {timeout}s")
        time.sleep(0.2)


@pytest.mark.llm
@pytest.mark.slow
def test_kill_9_then_ctrl_c_then_resume_loses_and_repeats_nothing(tmp_path: Path):
    out, cache, limit = tmp_path / "pairs.jsonl", tmp_path / "cache.sqlite", 3

    proc = _start(out, cache, limit)
    _wait_for_pairs(proc, out, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    after_kill = _complete_lines(out)
    assert after_kill, "the finished pair must survive kill -9"
    # Ctrl-C below must land while a prompt remains: the model answers one call at a time, so
    # pairs finish seconds apart and the kill (polled every 0.2 s) comes right after the first.
    assert len(after_kill) == 1

    proc = _start(out, cache, limit)
    _wait_for_pairs(proc, out, len(after_kill) + 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    after_int = _complete_lines(out)
    assert len(after_int) < limit
    assert [r["id"] for r in after_int[: len(after_kill)]] == [r["id"] for r in after_kill]

    proc = _start(out, cache, limit)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    final = read_jsonl(out)
    ids = [r["id"] for r in final]
    assert len(ids) == len(set(ids)), "no duplicated pairs"
    by_id = {r["id"]: r for r in final}
    for row in after_int:  # nothing finished before the interruptions was lost or changed
        assert by_id[row["id"]] == row
    failures = read_jsonl(tmp_path / "pairs.failures.jsonl") if (tmp_path / "pairs.failures.jsonl").exists() else []
    assert set(ids) | {f["id"] for f in failures} == {r["id"] for r in _sample_rows(limit)}
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary["resumed"] == len(after_int)
    assert f"pairs written to {out}" in stdout


def _sample_rows(limit: int) -> list[dict]:
    from rmboost.data.inputs import read_rows

    return read_rows("sample:qa_feedback")[:limit]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "nowhere.jsonl"], "input not found: nowhere.jsonl"),
        (["--task", "nope"], "unknown task 'nope'"),
        (["--backend", "llamacpp", "--model", "missing.gguf"], "GGUF model file not found: missing.gguf"),
        (["--shard", "3/2"], "--shard '3/2'"),
        (["--aspect-mode", "all"], "unknown aspect mode 'all'"),
        (["--backend", "openai", "--model", "m"], "needs --base-url and --model"),
    ],
)
def test_bad_options_give_one_clear_line(tmp_path: Path, args: list[str], message: str):
    result = runner.invoke(app, ["generate", "--output", str(tmp_path / "o.jsonl"), "--limit", "1", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_row_missing_a_field_is_named(tmp_path: Path):
    src = tmp_path / "prompts.jsonl"
    src.write_text('{"id": "ok", "q": "Q?", "passages": "P."}\n{"id": "bad", "q": "Q2?"}\n')
    result = runner.invoke(app, ["generate", "--input", str(src), "--field", "question=q",
                                 "--output", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2
    assert f"{src}, line 2 (id bad): missing field 'passages'" in result.output


def test_an_unmapped_column_on_the_second_line_is_named_as_line_2(tmp_path: Path):
    src = tmp_path / "prompts.jsonl"
    src.write_text('{"question": "Q?", "ctx": "P."}\n{"question": "Q2?"}\n')
    result = runner.invoke(app, ["generate", "--input", str(src), "--field", "passages=ctx",
                                 "--output", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2
    assert f"{src}, line 2: no column 'ctx'" in " ".join(result.output.split())


def test_unreachable_endpoint_fails_fast_and_keeps_finished_pairs(tmp_path: Path):
    out = tmp_path / "o.jsonl"
    done = {"id": "row-0", "prompt": "p", "chosen": "c", "rejected": "r"}
    out.write_text(json.dumps(done) + "\n")
    src = tmp_path / "prompts.jsonl"
    src.write_text('{"question": "Q?", "passages": "P."}\n{"question": "Q2?", "passages": "P2."}\n')
    url = f"http://127.0.0.1:{_free_port()}/v1"
    start = time.monotonic()
    result = runner.invoke(app, ["generate", "--input", str(src), "--output", str(out),
                                 "--backend", "openai", "--base-url", url, "--model", "m"])
    assert result.exit_code == 2
    assert f"cannot reach the endpoint {url}" in result.output
    assert "finished pairs are kept" in result.output
    assert time.monotonic() - start < 60
    assert read_jsonl(out) == [done]


def test_a_failed_endpoint_check_leaves_nothing_under_the_output_name(tmp_path: Path):
    out = tmp_path / "runs" / "oa" / "pairs.jsonl"
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens: the connection is refused
    result = runner.invoke(app, ["generate", "--input", "sample:qa_feedback", "--limit", "2", "--output", str(out),
                                 "--backend", "openai", "--base-url", url, "--model", "m", "--no-progress",
                                 "--cache", str(tmp_path / "cache.sqlite")])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot reach the endpoint {url}" in errors[0]
    assert "finished pairs are kept" not in result.output
    # No pairs file, no lock, no side file, not even the folders this run would have made.
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["cache.sqlite"])


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("prompts.jsonl", "--output {dir}/prompts.jsonl is the input file: write the pairs to another file"),
        ("other.jsonl", "{dir}/other.jsonl, line 1 (id 'a'): not a preference pair (no 'chosen'/'rejected')"),
        ("torn.jsonl", "{dir}/torn.jsonl, line 2: not valid JSON (a whole line, not one cut off by a crash)"),
    ],
)
def test_an_output_that_is_not_the_jobs_pairs_is_refused_and_left_alone(tmp_path: Path, output: str, message: str):
    """Found in review: --output equal to --input took each prompt row for a finished pair and
    exited 0 having written nothing; a file with a bad line in its middle was cut there."""
    (tmp_path / "prompts.jsonl").write_text('{"id": "a", "question": "Q?", "passages": "P."}\n')
    (tmp_path / "other.jsonl").write_text('{"id": "a", "question": "Q?"}\n')
    (tmp_path / "torn.jsonl").write_text('{"id": "x", "chosen": "c", "rejected": "r"}\nnot json\n'
                                         '{"id": "y", "chosen": "c", "rejected": "r"}\n')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = runner.invoke(app, ["generate", "--input", str(tmp_path / "prompts.jsonl"), "--output", str(tmp_path / output),
                                 "--backend", "openai", "--base-url", f"http://127.0.0.1:{_free_port()}/v1", "--model", "m"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message.format(dir=tmp_path) in errors[0] and "re-run to resume" not in errors[0]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing cut


def test_tasks_command_lists_and_shows():
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0
    for name in ("qa_feedback", "ultrafeedback", "tldr"):
        assert name in result.output
    shown = runner.invoke(app, ["tasks", "tldr"])
    assert shown.exit_code == 0 and "coverage" in shown.output and "Coverage" in shown.output
    assert runner.invoke(app, ["tasks", "nope"]).exit_code == 2


def test_merge_shards(tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"id": "1", "prompt": "p", "chosen": "c", "rejected": "r"}\n')
    b.write_text('{"id": "2", "prompt": "p", "chosen": "c", "rejected": "r"}\n')
    result = runner.invoke(app, ["merge", str(a), str(b), "--output", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 0
    assert [r["id"] for r in read_jsonl(tmp_path / "m.jsonl")] == ["1", "2"]
    clash = runner.invoke(app, ["merge", str(a), str(a), "--output", str(tmp_path / "x.jsonl")])
    assert clash.exit_code == 2 and "is in both" in clash.output


def _cached_requests(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("select count(*) from requests").fetchone()[0]


def test_environment_variable_is_honoured_for_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`generate` without --cache stores every answer in $RMBOOST_CACHE, else under $XDG_CACHE_HOME."""
    from rmboost.llm.cache import default_cache_path

    monkeypatch.delenv("RMBOOST_HOME", raising=False)  # it would move the cache folder

    def generate(server: ScriptedServer, output: Path) -> None:
        result = runner.invoke(app, [
            "generate", "--backend", "openai", "--base-url", server.base_url, "--model", SCRIPTED_MODEL,
            "--api-key-env", "RMBOOST_TEST_NO_SUCH_KEY", "--input", "sample:qa_feedback", "--limit", "1",
            "--output", str(output), "--no-progress"])  # fmt: skip
        assert result.exit_code == 0, result.output

    by_seed = ScriptedServer(reply=lambda body: f"<response>answer {body.get('seed')}</response>")
    with by_seed as server:
        monkeypatch.setenv("RMBOOST_CACHE", str(tmp_path / "c.sqlite"))
        assert default_cache_path() == tmp_path / "c.sqlite"
        generate(server, tmp_path / "a.jsonl")
        assert server.attempts == 2 and _cached_requests(tmp_path / "c.sqlite") == 2

        monkeypatch.delenv("RMBOOST_CACHE")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        xdg_cache = tmp_path / "xdg" / "rmboost" / "llm-cache.sqlite"
        assert default_cache_path() == xdg_cache
        generate(server, tmp_path / "b.jsonl")
        assert server.attempts == 4 and _cached_requests(xdg_cache) == 2  # a new cache: asked again
        assert _cached_requests(tmp_path / "c.sqlite") == 2
