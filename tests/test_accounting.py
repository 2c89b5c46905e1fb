"""Token accounting (rmboost.llm.accounting) and the cache-only replay the experiment uses to
count a resumed job's tokens (rmboost.llm.replay)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from conftest import ScriptedBackend, run
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
