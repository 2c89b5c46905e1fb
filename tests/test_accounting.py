"""Token accounting (rmboost.llm.accounting), the cache-only replay (rmboost.llm.replay) and the
whole job's tokens and cost a resumed `generate` job reports."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ScriptedBackend, read_jsonl, run
from rich.console import Console
from test_methods import generator_answer, prompts_file, quality_judge

from rmboost.analysis.costs import generation_costs
from rmboost.generate import GenerateConfig, run_generate
from rmboost.llm.accounting import estimate_cost, step_totals, usage_totals
from rmboost.llm.replay import CacheOnly

USAGE = {
    "y1": {"calls": 2, "cache_hits": 1, "tokens_in": 100, "tokens_out": 40, "cached_tokens_in": 50,
           "cached_tokens_out": 20},
    "y2": {"calls": 1, "cache_hits": 0, "tokens_in": 30, "tokens_out": 10, "cached_tokens_in": 0,
           "cached_tokens_out": 0},
}


def test_totals_count_paid_and_cached_tokens_and_keep_the_paid_apart():
    assert usage_totals(USAGE) == {"tokens_in": 180, "tokens_out": 70, "paid_tokens_in": 130, "paid_tokens_out": 50,
                                   "calls": 3, "cache_hits": 1}
    assert step_totals(USAGE["y1"]) == {"tokens_in": 150, "tokens_out": 60, "calls": 3}
    assert usage_totals({}) == {k: 0 for k in usage_totals(USAGE)}
    # $1 and $2 per million tokens: all tokens for the job, the paid ones for this run.
    assert estimate_cost([USAGE, USAGE], 1.0, 2.0) == {"total": 2 * (180 + 2 * 70) / 1e6,
                                                       "this_run": 2 * (130 + 2 * 50) / 1e6}
    summary = {"usage": USAGE, "judge_usage": {}, "pairs_total": 4}
    costs = generation_costs(summary)
    assert costs["tokens_total"] == 250 and costs["tokens_per_pair"] == 62.5
    assert costs["steps"]["y1"] == step_totals(USAGE["y1"])


def never(messages, params):
    raise AssertionError("a cache-only replay asked the backend")


def test_a_cache_only_replay_counts_the_whole_job_and_pays_nothing(tmp_path: Path):
    prompts = prompts_file(tmp_path, 4)
    job = GenerateConfig(task="qa_feedback", input=str(prompts), output=tmp_path / "run" / "pairs.jsonl",
                         method="rlaif", cache=tmp_path / "c.sqlite", show_progress=False, limit=3,
                         price_in=1.0, price_out=2.0)
    paid = run(run_generate(job, backend=ScriptedBackend(generator_answer),
                            judge_backend=ScriptedBackend(quality_judge)))
    assert paid.llm_calls > 0 and paid.cache_hits == 0

    inner, inner_judge = ScriptedBackend(never), ScriptedBackend(never)
    replay = replace(job, output=tmp_path / "replay" / "pairs.jsonl", limit=4)
    again = run(run_generate(replay, backend=CacheOnly(inner), judge_backend=CacheOnly(inner_judge)))
    assert inner.calls == [] and inner_judge.calls == [] and again.llm_calls == 0
    # The three answered prompts come back byte for byte; the fourth was never paid for, so it fails.
    first = (tmp_path / "run" / "pairs.jsonl").read_bytes()
    assert (tmp_path / "replay" / "pairs.jsonl").read_bytes() == first
    assert again.pairs_total == paid.pairs_total and paid.failures == {} and again.failures == {"not_cached": 1}
    for usage_paid, usage_replayed in ((paid.usage, again.usage), (paid.judge_usage, again.judge_usage)):
        totals, replayed = usage_totals(usage_paid), usage_totals(usage_replayed)
        assert totals["tokens_in"] > 0 and replayed["paid_tokens_in"] == replayed["paid_tokens_out"] == 0
        assert (replayed["tokens_in"], replayed["tokens_out"]) == (totals["tokens_in"], totals["tokens_out"])
    assert again.cost_usd is not None and paid.cost_usd is not None
    assert again.cost_usd["total"] == paid.cost_usd["total"] > 0 and again.cost_usd["this_run"] == 0


def _saved_summary(output: Path) -> dict:
    return json.loads(output.with_name("pairs.summary.json").read_text("utf-8"))


def _rlaif_job(tmp_path: Path, name: str, **kw) -> GenerateConfig:
    return GenerateConfig(task="qa_feedback", input=str(prompts_file(tmp_path, 4)), output=tmp_path / name / "pairs.jsonl",
                          method="rlaif", cache=tmp_path / f"{name}.sqlite", show_progress=False,
                          price_in=0.4, price_out=1.6, **kw)


def test_a_finished_job_resumed_keeps_the_whole_jobs_tokens_and_cost(tmp_path: Path):
    job = _rlaif_job(tmp_path, "run")
    paid = run(run_generate(job, backend=ScriptedBackend(generator_answer), judge_backend=ScriptedBackend(quality_judge)))
    first = _saved_summary(job.output)
    assert first["job"]["counted"] == "this run" and first["job"]["exact"] is True
    assert first["job"]["tokens_in"] > 0 and first["job"]["judge_usage"]
    assert first["cost_usd"]["total"] == first["cost_usd"]["this_run"] == paid.cost_usd["total"] > 0

    # Resumed with nothing left to do: no call, this run paid nothing, the job's count stays.
    resumed = run(run_generate(job, backend=ScriptedBackend(never), judge_backend=ScriptedBackend(never)))
    saved = _saved_summary(job.output)
    assert resumed.llm_calls == 0 and saved["usage"] == {} and saved["resumed"] == 4
    assert saved["job"]["counted"] == "previous summary"
    for key in ("tokens_in", "tokens_out", "usage", "judge_usage", "exact"):
        assert saved["job"][key] == first["job"][key], key
    assert saved["cost_usd"] == {"total": first["cost_usd"]["total"], "this_run": 0}

    # Its summary lost (a run killed before writing it): the job is recounted from the cache, no call.
    job.output.with_name("pairs.summary.json").unlink()
    inner, inner_judge = ScriptedBackend(never), ScriptedBackend(never)
    shown = Console(record=True, width=300)
    again = run(run_generate(job, shown, backend=inner, judge_backend=inner_judge))
    assert "counting the whole job's tokens: replaying its 4 prompts from the request cache" in shown.export_text()
    assert inner.calls == [] and inner_judge.calls == [] and again.job is not None
    assert again.job["counted"] == "replayed from the cache" and again.job["exact"] is True
    assert {k: again.job[k] for k in ("tokens_in", "tokens_out", "usage", "judge_usage")} == {
        k: first["job"][k] for k in ("tokens_in", "tokens_out", "usage", "judge_usage")}
    assert again.cost_usd == {"total": first["cost_usd"]["total"], "this_run": 0}
    assert generation_costs(_saved_summary(job.output))["tokens_total"] == first["job"]["tokens_in"] + first["job"][
        "tokens_out"]


class Stop(Exception):
    """The process dying mid-job, as far as the job can tell."""


def test_a_job_interrupted_midway_then_resumed_counts_what_an_uninterrupted_run_counts(tmp_path: Path):
    whole = run(run_generate(_rlaif_job(tmp_path, "whole"), backend=ScriptedBackend(generator_answer),
                             judge_backend=ScriptedBackend(quality_judge)))
    assert whole.job is not None and whole.job["tokens_in"] > 0

    job = _rlaif_job(tmp_path, "cut", concurrency=2)
    answered = 0

    def dies_after_five(messages, params):
        nonlocal answered
        answered += 1
        if answered > 5:
            raise Stop("killed")
        return generator_answer(messages, params)

    with pytest.raises(Stop):
        run(run_generate(job, backend=ScriptedBackend(dies_after_five), judge_backend=ScriptedBackend(quality_judge)))
    kept = read_jsonl(job.output) if job.output.exists() else []
    assert 0 < len(kept) < 4 and not job.output.with_name("pairs.summary.json").exists()

    rest = ScriptedBackend(generator_answer)
    resumed = run(run_generate(job, backend=rest, judge_backend=ScriptedBackend(quality_judge)))
    assert resumed.resumed == len(kept) and resumed.pairs_total == 4 and resumed.job is not None
    assert resumed.job["counted"] == "replayed from the cache" and resumed.job["exact"] is True
    for key in ("tokens_in", "tokens_out", "usage", "judge_usage"):
        assert resumed.job[key] == whole.job[key], key
    # This run paid only for what the interrupted one had not: less than the whole job.
    this_run = usage_totals(resumed.usage)
    assert 0 < this_run["paid_tokens_in"] < usage_totals(whole.usage)["paid_tokens_in"]
    assert resumed.cost_usd is not None and whole.cost_usd is not None
    assert resumed.cost_usd["total"] == whole.cost_usd["total"] > resumed.cost_usd["this_run"] > 0
