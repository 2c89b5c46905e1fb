import multiprocessing
import sqlite3
import time
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



def _open_at_once(folder: str, worker: int, files: int, barrier, errors) -> None:
    """One of several processes opening the same fresh cache files at the same moment."""
    import random

    from rmboost.llm.batch_store import BatchStore
    from rmboost.llm.types import Completion

    rng = random.Random(worker)
    for i in range(files):
        barrier.wait()
        time.sleep(rng.random() * 0.0005)  # spreads the openings over the window where they collide
        path = Path(folder) / f"c{i}.sqlite"
        try:
            if i % 2:  # the batch tables open their own connection to the same file
                BatchStore(path).close()
            cache = RequestCache(path)
            cache.put(f"k{worker}", "{}", Completion(text="a", tokens_in=1, tokens_out=1, model="m"))
            cache.close()
        except Exception as exc:  # reported to the parent, which fails the test
            errors.put(f"{path.name}: {exc}")
    errors.put(None)


def test_jobs_opening_one_new_cache_at_the_same_moment_all_get_in(tmp_path: Path):
    """SQLite refuses a switch to WAL at once ("database is locked", no busy wait) while another
    connection makes the same switch; before openings were retried, 1 to 7 of these 600 failed
    per run (stop 18's CI: two `generate` jobs starting on one new cache)."""
    workers, files = 4, 150
    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_open_at_once, args=(str(tmp_path), w, files, barrier, errors))
             for w in range(workers)]
    for proc in procs:
        proc.start()
    reported, finished = [], 0
    while finished < workers:
        item = errors.get(timeout=120)
        finished += item is None
        reported += [item] if item else []
    for proc in procs:
        proc.join(timeout=30)
    assert reported == [] and [p.exitcode for p in procs] == [0] * workers
    for i in (0, files - 1):
        with sqlite3.connect(tmp_path / f"c{i}.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == workers
