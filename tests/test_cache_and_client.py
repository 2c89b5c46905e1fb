from pathlib import Path

from conftest import ScriptedBackend, run

from rmboost.llm import LLM, SamplingParams
from rmboost.llm.cache import RequestCache, request_key

ID = {"backend": "openai", "base_url": "http://x/v1", "model": "m"}
MSGS = [{"role": "user", "content": "hi"}]
P = SamplingParams(temperature=0.5, top_p=0.9, max_tokens=10, seed=1)


def test_cache_key_depends_on_everything_that_changes_the_answer():
    base = request_key(ID, MSGS, P, 0)
    assert base == request_key(dict(ID), [dict(MSGS[0])], SamplingParams(0.5, 0.9, 10, 1), 0)
    assert base != request_key({**ID, "model": "other"}, MSGS, P, 0)
    assert base != request_key({**ID, "base_url": "http://y/v1"}, MSGS, P, 0)
    assert base != request_key(ID, [{"role": "user", "content": "hi!"}], P, 0)
    assert base != request_key(ID, MSGS, SamplingParams(0.6, 0.9, 10, 1), 0)
    assert base != request_key(ID, MSGS, SamplingParams(0.5, 0.9, 10, 2), 0)
    assert base != request_key(ID, MSGS, SamplingParams(0.5, 0.9, 11, 1), 0)
    assert base != request_key(ID, MSGS, P, 1)


def test_client_answers_repeats_from_the_cache(tmp_path: Path):
    backend = ScriptedBackend(lambda m, p: "<response>ok</response>")
    cache = RequestCache(tmp_path / "c.sqlite")
    llm = LLM(backend, cache)
    first = run(llm.complete(MSGS, P, step="y1"))
    second = run(llm.complete(MSGS, P, step="y1"))
    assert len(backend.calls) == 1
    assert not first.cached and second.cached
    assert second.text == first.text and second.request_id == first.request_id
    assert llm.usage.steps["y1"].calls == 1 and llm.usage.steps["y1"].cache_hits == 1
    run(llm.complete(MSGS, P, step="y1", sample_index=1))
    assert len(backend.calls) == 2
    cache.close()
    # persisted: a new process (new cache object) still has it
    cache2 = RequestCache(tmp_path / "c.sqlite")
    assert len(cache2) == 2
    llm2 = LLM(ScriptedBackend(lambda m, p: "never"), cache2)
    assert run(llm2.complete(MSGS, P, step="y1")).text == "<response>ok</response>"


def test_no_cache_always_calls():
    backend = ScriptedBackend(lambda m, p: "x")
    llm = LLM(backend, None)
    run(llm.complete(MSGS, P, step="s"))
    run(llm.complete(MSGS, P, step="s"))
    assert len(backend.calls) == 2
