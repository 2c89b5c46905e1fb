"""Control flow of `generate` with a scripted LLM: labels, retries, failures, resume, re-run."""

import json
import re
from pathlib import Path

import pytest
from conftest import ScriptedBackend, read_jsonl, run

from rmboost.data.inputs import InputError
from rmboost.generate import GenerateConfig, run_generate
from rmboost.llm import LLMError
from rmboost.methods.rmboost import sample_aspects
from rmboost.tasks import load_task


def write_prompts(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "question": f"Question {i}?", "passages": f"Passage {i}.",
                                 "reference": f"Answer {i}."}) + "\n")
    return path


def smart_answer(messages, params):
    """y1: 'first answer to Question i'; y2: a rewrite that says which label it was asked for."""
    text = messages[-1]["content"]
    q = re.search(r"Question (\d+)\?", text).group(1)
    if "<existing_answer>" in text:
        direction = "better" if "clearly better" in text else "worse"
        return f"<aspects>Completeness</aspects><response>{direction} rewrite {q}</response>"
    return f"Let me think.\n<response>first answer {q}</response>"


def cfg_for(tmp_path: Path, n: int = 6, **kw) -> GenerateConfig:
    return GenerateConfig(task="qa_feedback", input=str(write_prompts(tmp_path / "in.jsonl", n)),
                          output=tmp_path / "out" / "pairs.jsonl", show_progress=False,
                          cache=tmp_path / "cache.sqlite", **kw)


def test_pairs_follow_the_label(tmp_path: Path):
    backend = ScriptedBackend(smart_answer)
    summary = run(run_generate(cfg_for(tmp_path), backend=backend))
    rows = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(6)]
    assert summary.pairs_written == 6 and summary.failures == {}
    assert summary.labels == {"better": 3, "worse": 3}
    for r in rows:
        i = r["id"][1:]
        assert r["y1"] == f"first answer {i}"
        assert r["y2"] == f"{r['label']} rewrite {i}"  # the rewrite was asked for the pre-chosen label
        if r["label"] == "better":
            assert (r["chosen"], r["rejected"]) == (r["y2"], r["y1"])
        else:
            assert (r["chosen"], r["rejected"]) == (r["y1"], r["y2"])
        assert r["aspects"] == ["completeness"]
        assert r["prompt"].startswith(f"Question: Question {i}?")
        assert len(r["request_ids"]) == 2 and r["tokens_out"] > 0
    assert len(backend.calls) == 12
    assert json.loads((tmp_path / "out" / "pairs.summary.json").read_text())["pairs_total"] == 6


def test_rerun_makes_no_calls_and_writes_identical_output(tmp_path: Path):
    cfg = cfg_for(tmp_path)
    run(run_generate(cfg, backend=ScriptedBackend(smart_answer)))
    first = (tmp_path / "out" / "pairs.jsonl").read_bytes()
    (tmp_path / "out" / "pairs.jsonl").unlink()  # even with the output gone, the cache answers
    again = ScriptedBackend(smart_answer)
    summary = run(run_generate(cfg, backend=again))
    assert again.calls == [] and summary.llm_calls == 0 and summary.cache_hits == 12
    assert (tmp_path / "out" / "pairs.jsonl").read_bytes() == first


def test_bad_answers_are_retried_then_logged_never_paired(tmp_path: Path):
    def answer(messages, params):
        text = messages[-1]["content"]
        q = re.search(r"Question (\d+)\?", text).group(1)
        if q == "1":
            return "I cannot help with that."  # never tagged
        if q == "2" and "<existing_answer>" in text:
            return "<response>first answer 2</response>"  # a copy of y1
        return smart_answer(messages, params)

    backend = ScriptedBackend(answer)
    summary = run(run_generate(cfg_for(tmp_path, n=4, max_attempts=2), backend=backend))
    rows = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [r["id"] for r in rows] == ["p0", "p3"]
    fails = {f["id"]: f for f in read_jsonl(tmp_path / "out" / "pairs.failures.jsonl")}
    assert fails["p1"]["step"] == "y1" and fails["p1"]["reason"] == "refusal"
    assert fails["p1"]["raw"] == "I cannot help with that." and len(fails["p1"]["attempts"]) == 2
    assert fails["p2"]["step"] == "y2" and fails["p2"]["reason"] == "same_as_y1"
    assert summary.failures == {"refusal": 1, "same_as_y1": 1}
    # each retry was a fresh sample: a different seed
    seeds = {p.seed for m, p in backend.calls if "Question 1?" in m[-1]["content"]}
    assert len(seeds) == 2


def test_backend_error_is_a_failure_not_a_crash(tmp_path: Path):
    def answer(messages, params):
        if "Question 0?" in messages[-1]["content"]:
            return LLMError("context_overflow: too long")
        return smart_answer(messages, params)

    summary = run(run_generate(cfg_for(tmp_path, n=2), backend=ScriptedBackend(answer)))
    assert summary.failures == {"context_overflow": 1} and summary.pairs_written == 1


def test_resume_skips_finished_ids(tmp_path: Path):
    cfg = cfg_for(tmp_path, n=6, limit=3)
    run(run_generate(cfg, backend=ScriptedBackend(smart_answer)))
    cfg.limit = None
    backend = ScriptedBackend(smart_answer)
    summary = run(run_generate(cfg, backend=backend))
    assert summary.resumed == 3 and summary.pairs_written == 3
    assert len(backend.calls) == 6  # only the three new prompts
    ids = [r["id"] for r in read_jsonl(tmp_path / "out" / "pairs.jsonl")]
    assert ids == [f"p{i}" for i in range(6)]


def test_y1_from_column_skips_the_first_call(tmp_path: Path):
    backend = ScriptedBackend(smart_answer)
    run(run_generate(cfg_for(tmp_path, n=2, y1_from="reference"), backend=backend))
    rows = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert len(backend.calls) == 2
    assert [r["y1"] for r in rows] == ["Answer 0.", "Answer 1."]
    assert rows[0]["y1_source"] == "field:reference"


def test_sample_mode_records_sampled_aspects(tmp_path: Path):
    backend = ScriptedBackend(smart_answer)  # its rewrites claim <aspects>Completeness</aspects>
    run(run_generate(cfg_for(tmp_path, n=2, aspect_mode="sample", aspects_k=2), backend=backend))
    rows = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [r["id"] for r in rows] == ["p0", "p1"]
    task = load_task("qa_feedback")
    for r in rows:  # the aspects the rewrite was asked for (seeded by row), not what it claimed
        targets = sample_aspects(task, r["id"], 0, 2)
        assert r["aspects"] == [a.name for a in targets] and r["aspect_mode"] == "sample"
        rewrite = next(m[-1]["content"] for m, _ in backend.calls
                       if "<existing_answer>" in m[-1]["content"] and f"Question {r['id'][1:]}?" in m[-1]["content"])
        assert f"on these aspects: {', '.join(a.title for a in targets)}" in rewrite


def test_shards_partition_the_job(tmp_path: Path):
    ids = []
    for k in (1, 2, 3):
        cfg = cfg_for(tmp_path, n=7, shard=(k, 3))
        cfg.output = tmp_path / f"s{k}.jsonl"
        run(run_generate(cfg, backend=ScriptedBackend(smart_answer)))
        ids += [r["id"] for r in read_jsonl(cfg.output)]
    assert sorted(ids) == sorted(f"p{i}" for i in range(7))


def test_conversational_output(tmp_path: Path):
    run(run_generate(cfg_for(tmp_path, n=2, conversational=True), backend=ScriptedBackend(smart_answer)))
    row = read_jsonl(tmp_path / "out" / "pairs.jsonl")[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"


def test_missing_field_names_row_and_field(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "question": "Q?", "passages": "P"}\n{"id": "b", "question": "Q2?"}\n')
    cfg = GenerateConfig(task="qa_feedback", input=str(path), output=tmp_path / "o.jsonl", show_progress=False)
    backend = ScriptedBackend(smart_answer)
    with pytest.raises(InputError, match=r"in.jsonl, line 2 \(id b\): missing field 'passages'"):
        run(run_generate(cfg, backend=backend))
    assert backend.calls == []
