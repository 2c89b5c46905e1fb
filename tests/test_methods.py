"""Baselines and the judge with scripted backends: parsing, two-order logic, filter, West-of-N."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import ScriptedBackend, read_jsonl, run

from rmboost.filtering import run_filter
from rmboost.generate import GenerateConfig, run_generate
from rmboost.llm import LLM, Completion, SamplingParams
from rmboost.llm.accounting import estimate_cost
from rmboost.methods.common import MethodContext, StepFailed
from rmboost.methods.judge import (
    Judge,
    JudgeOptions,
    expected_score_from_logprobs,
    p_first_from_logprobs,
    parse_aspect_verdicts,
    parse_decision,
    parse_score,
)
from rmboost.parsing import ParseError
from rmboost.tasks import load_task


@pytest.mark.parametrize(
    ("text", "decision"),
    [("first", "first"), ("Second", "second"), (" same ", "same"), ("Response 1", "first"),
     ("2", "second"), ("tie", "same"), ("first. The first answer is complete.", "first"),
     ("The second one is better", "second")],
)
def test_parse_decision(text, decision):
    assert parse_decision(text) == decision


@pytest.mark.parametrize("text", ["", "banana", "first or second", "I cannot judge this"])
def test_parse_decision_rejects_garbage(text):
    with pytest.raises(ParseError):
        parse_decision(text)


def test_parse_score_and_aspects():
    assert parse_score("7") == 7 and parse_score(" 7/10 ") == 7 and parse_score("10. Great") == 10
    for bad, reason in (("eleven", "bad_score"), ("0", "score_out_of_range"), ("11", "score_out_of_range"),
                        ("7.5", "bad_score")):
        with pytest.raises(ParseError) as info:
            parse_score(bad)
        assert info.value.reason == reason
    text = "<aspect_verdicts>\ncompleteness: first\nfactuality: same\nnoise\n</aspect_verdicts>"
    assert parse_aspect_verdicts(text) == {"completeness": "first", "factuality": "same"}


def test_probabilities_from_logprobs():
    lp = [{"token": "first", "logprob": math.log(0.6),
           "top_logprobs": [{"token": "first", "logprob": math.log(0.6)},
                            {"token": " second", "logprob": math.log(0.2)},
                            {"token": "x", "logprob": math.log(0.2)}]}]
    assert p_first_from_logprobs(lp) == pytest.approx(0.75)
    assert p_first_from_logprobs([{"token": "x", "logprob": 0.0, "top_logprobs": []}]) is None
    digits = [{"token": "8", "logprob": 0.0,
               "top_logprobs": [{"token": "8", "logprob": math.log(0.5)}, {"token": "6", "logprob": math.log(0.25)},
                                {"token": "x", "logprob": math.log(0.25)}]}]
    assert expected_score_from_logprobs(digits) == pytest.approx((8 * 0.5 + 6 * 0.25) / 0.75)


ROW = {"id": "r1", "question": "Which is bigger?", "passages": "An elephant is bigger than a mouse."}


def judge_with(decide) -> tuple[Judge, ScriptedBackend]:
    """A judge whose answer depends on which response is shown first."""

    def answer(messages, params):
        text = messages[-1]["content"]
        first = re.search(r"<first_answer>\n(.*?)\n</first_answer>", text, re.S).group(1)
        second = re.search(r"<second_answer>\n(.*?)\n</second_answer>", text, re.S).group(1)
        return f"<explanation>ok</explanation><decision>{decide(first, second)}</decision>"

    backend = ScriptedBackend(answer)
    ctx = MethodContext(llm=LLM(backend), task=load_task("qa_feedback"), params=SamplingParams(temperature=0.0))
    return Judge(ctx), backend


def test_two_orders_agree():
    judge, backend = judge_with(lambda f, s: "first" if f == "elephant" else "second")
    verdict = run(judge.compare(ROW, "elephant", "mouse"))
    assert verdict.winner == "a" and verdict.reason is None and len(backend.calls) == 2
    verdict = run(judge.compare(ROW, "mouse", "elephant"))
    assert verdict.winner == "b"


def test_position_bias_is_inconsistent_not_a_label():
    judge, _ = judge_with(lambda f, s: "first")  # always prefers what it sees first
    verdict = run(judge.compare(ROW, "elephant", "mouse"))
    assert verdict.winner is None and verdict.reason == "judge_inconsistent"
    judge, _ = judge_with(lambda f, s: "same" if f == "elephant" else "first")
    assert run(judge.compare(ROW, "elephant", "mouse")).reason == "judge_inconsistent"


def test_two_ties_are_a_tie():
    judge, _ = judge_with(lambda f, s: "same")
    assert run(judge.compare(ROW, "elephant", "mouse")).reason == "judge_tie"


def test_unparseable_judge_is_a_failure_with_reason():
    backend = ScriptedBackend(lambda m, p: "I'm sorry, but I can't compare these.")
    ctx = MethodContext(llm=LLM(backend), task=load_task("qa_feedback"), params=SamplingParams(temperature=0.0))
    with pytest.raises(StepFailed) as info:
        run(Judge(ctx).compare(ROW, "a", "b"))
    assert info.value.reason == "refusal"
    # Both orders are asked at once (one batch round); greedy, neither is resampled (it would repeat).
    assert len(backend.calls) == 2
    assert len({c[1].seed for c in backend.calls}) == 2


def test_logprob_judge_averages_both_orders():
    def answer(messages, params):
        text = messages[-1]["content"]
        elephant_first = re.search(r"<first_answer>\n(.*?)\n", text).group(1) == "elephant"
        p = 0.8 if elephant_first else 0.4  # position bias: P(first) is inflated by 0.2
        return Completion(
            text="first", tokens_in=10, tokens_out=1, model="m",
            logprobs=[{"token": "first", "logprob": math.log(p),
                       "top_logprobs": [{"token": "first", "logprob": math.log(p)},
                                        {"token": "second", "logprob": math.log(1 - p)}]}],
        )

    class LogprobBackend(ScriptedBackend):
        async def complete(self, messages, params):
            self.calls.append((messages, params))
            assert params.logprobs and params.max_tokens == 1
            return answer(messages, params)

    backend = LogprobBackend(answer)
    ctx = MethodContext(llm=LLM(backend), task=load_task("qa_feedback"), params=SamplingParams())
    verdict = run(Judge(ctx, mode="logprobs").compare(ROW, "elephant", "mouse"))
    assert verdict.winner == "a" and verdict.p_a == pytest.approx((0.8 + 0.6) / 2)
    tied = run(Judge(ctx, mode="logprobs", margin=0.3).compare(ROW, "elephant", "mouse"))
    assert tied.winner is None and tied.reason == "judge_tie"


def prompts_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Q{i}?", "passages": f"P{i}."}) + "\n"
                            for i in range(n)))
    return path


def generator_answer(messages, params):
    """RLCD: 'GOOD'/'BAD' by polarity; otherwise a sample whose quality is its seed."""
    text = messages[-1]["content"]
    if "Write a good answer" in text:
        return "<response>GOOD answer</response>"
    if "Write a bad answer" in text:
        return "<response>BAD answer</response>"
    return f"<response>answer quality {params.seed % 97}</response>"


def quality_judge(messages, params):
    text = messages[-1]["content"]
    if "<candidate_answer>" in text:
        q = int(re.search(r"answer quality (\d+)", text).group(1))
        return f"<score>{1 + q % 10}</score>"
    nums = [int(x) for x in re.findall(r"answer quality (\d+)", text)]
    first, second = nums[-2], nums[-1]
    return "<decision>" + ("first" if first > second else "second" if second > first else "same") + "</decision>"


def cfg(tmp_path: Path, method: str, **kw) -> GenerateConfig:
    return GenerateConfig(task="qa_feedback", input=str(prompts_file(tmp_path, 4)), output=tmp_path / "o.jsonl",
                          method=method, cache=tmp_path / "c.sqlite", show_progress=False, **kw)


def test_rlcd_labels_by_instruction(tmp_path: Path):
    summary = run(run_generate(cfg(tmp_path, "rlcd"), backend=ScriptedBackend(generator_answer)))
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert summary.pairs_written == 4
    assert all(r["chosen"] == "GOOD answer" and r["rejected"] == "BAD answer" and r["method"] == "rlcd"
               for r in rows)


def test_rlaif_uses_the_judge(tmp_path: Path):
    summary = run(run_generate(cfg(tmp_path, "rlaif"), backend=ScriptedBackend(generator_answer),
                               judge_backend=ScriptedBackend(quality_judge)))
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert rows and len(rows) + sum(summary.failures.values()) == 4
    for r in rows:
        q = lambda s: int(s.split()[-1])  # noqa: E731
        assert q(r["chosen"]) > q(r["rejected"])
        assert r["judge"]["winner"] in ("a", "b") and len(r["judge"]["orders"]) == 2
    assert summary.judge_usage["judge"]["calls"] == 2 * 4


def test_west_of_n_with_judge_scores(tmp_path: Path):
    run(run_generate(cfg(tmp_path, "west-of-n", n=4), backend=ScriptedBackend(generator_answer),
                     judge_backend=ScriptedBackend(quality_judge)))
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert rows
    for r in rows:
        assert r["chosen_score"] == max(r["scores"]) and r["rejected_score"] == min(r["scores"])
        assert r["pool_size"] == len(r["scores"]) <= 4


def test_west_of_n_drops_all_tied_pools(tmp_path: Path):
    summary = run(run_generate(cfg(tmp_path, "west-of-n", n=3), backend=ScriptedBackend(generator_answer),
                               judge_backend=ScriptedBackend(lambda m, p: "<score>5</score>")))
    assert summary.failures == {"all_tied": 4} and summary.pairs_written == 0


def test_generate_filter_keeps_only_confirmed_pairs(tmp_path: Path):
    # rmboost's scripted rewrite: the better/worse y2 gets a quality above/below y1's
    def answer(messages, params):
        text = messages[-1]["content"]
        if "<existing_answer>" in text:
            return "<response>answer quality 90</response>" if "clearly better" in text else \
                "<response>answer quality 1</response>"
        return "<response>answer quality 50</response>"

    contrary = {"p1"}  # the judge disagrees with the label for this prompt

    def judge(messages, params):
        verdict = quality_judge(messages, params)
        if "Q1?" in messages[-1]["content"]:
            return verdict.replace("first", "TMP").replace("second", "first").replace("TMP", "second")
        return verdict

    summary = run(run_generate(cfg(tmp_path, "rmboost", filter=True), backend=ScriptedBackend(answer),
                               judge_backend=ScriptedBackend(judge)))
    kept = {r["id"] for r in read_jsonl(tmp_path / "o.jsonl")}
    removed = read_jsonl(tmp_path / "o.filtered.jsonl")
    assert kept == {"p0", "p2", "p3"} and {r["id"] for r in removed} == contrary
    assert removed[0]["filter"]["winner"] == "b"
    assert summary.filtered == 1 and summary.filter_rate == pytest.approx(0.25)
    # resuming does not judge the removed pair again
    again = run(run_generate(cfg(tmp_path, "rmboost", filter=True), backend=ScriptedBackend(answer),
                             judge_backend=ScriptedBackend(judge)))
    assert again.pairs_written == 0 and again.filtered == 0


def test_filter_command_logic(tmp_path: Path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"id": "a", "prompt": "x", "chosen": "answer quality 9", "rejected": "answer quality 2",
         "inputs": {"question": "Q?", "passages": "P."}},
        {"id": "b", "prompt": "x", "chosen": "answer quality 1", "rejected": "answer quality 8",
         "inputs": {"question": "Q?", "passages": "P."}},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run(run_filter(pairs, tmp_path / "kept.jsonl", "qa_feedback", JudgeOptions(),
                             judge_backend=ScriptedBackend(quality_judge)))
    assert (summary.kept, summary.removed) == (1, 1) and summary.rate == 0.5
    assert [r["id"] for r in read_jsonl(tmp_path / "kept.jsonl")] == ["a"]
    assert [r["id"] for r in read_jsonl(tmp_path / "kept.filtered.jsonl")] == ["b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "z", "prompt": "x", "chosen": "c", "rejected": "r"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 1 \(id z\): no 'inputs' column"):
        run(run_filter(bad, tmp_path / "k2.jsonl", "qa_feedback", JudgeOptions(),
                       judge_backend=ScriptedBackend(quality_judge)))


def test_cost_estimate():
    usage = {"y1": {"tokens_in": 1_000_000, "tokens_out": 0, "cached_tokens_in": 1_000_000,
                    "cached_tokens_out": 500_000, "calls": 1, "cache_hits": 1}}
    assert estimate_cost([usage], 2.0, 10.0) == {"total": 9.0, "this_run": 2.0}
    assert estimate_cost([usage], None, None) is None
