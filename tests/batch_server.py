"""A loopback OpenAI-compatible server with the Files and Batches endpoints, for batch-mode tests.

Run as a process (`python tests/batch_server.py --state DIR --port P`) by `batch_server()`.
Behind it is a fast scripted chat model (`answer`): deterministic per request, so that online
calls (`POST /v1/chat/completions`) and batch lines give the same answers. Every bit of state
(files, batches, counters, the fault settings in config.json) lives in the state folder and is
read on every request, so a restarted server carries on, and a test can change the faults of a
running server by rewriting config.json.

Faults (config.json): `polls` status checks before a batch finishes (it answers them all at
once); `expire` the first N batches expire with only half their lines answered (the rest in the
error file as batch_expired); `flaky` K: a request whose custom_id is divisible by K (as a hex
number) fails with a 500 in the error file the first time the server sees it; `reject` a text
that makes a request fail with a 400 every time. Counters: files_uploaded, batches_created,
lines_answered, duplicates (a custom_id answered twice: a request paid twice), polls, chat_requests.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmboost.llm.chat_format import completion_body

MODEL = "scripted-model"
DEFAULTS = {"polls": 2, "expire": 0, "flaky": 0, "reject": None, "api_key": None}


# --------------------------------------------------------------------------- the scripted model


def answer(messages: list[dict[str, str]], seed: int | None) -> str:
    """A deterministic answer of the shape each rmboost step asks for."""
    prompt = "\n".join(m["content"] for m in messages)
    h = hashlib.sha256(f"{prompt}|{seed}".encode()).hexdigest()[:8]
    if "<first_" in prompt:  # the judge: prefers the response that sorts last, in both orders
        first = _between(prompt, "<first_", "</first_")
        second = _between(prompt, "<second_", "</second_")
        decision = "same" if first == second else "first" if first > second else "second"
        return f"<explanation>scripted</explanation><decision>{decision}</decision>"
    if "<score>" in prompt:
        return f"<score>{int(h, 16) % 10 + 1}</score>"
    if int(h, 16) % 5 == 0:  # some samples miss the tag: rmboost resamples with a fresh seed
        return "I would rather not answer that."
    if "<existing_" in prompt:
        return f"<aspects>Completeness</aspects><response>rewrite {h}</response>"
    return f"<response>answer {h}</response>"


def _between(text: str, start: str, end: str) -> str:
    head = text.split(start, 1)[1]
    return head.split(">", 1)[1].split(end, 1)[0].strip()


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    messages = body["messages"]
    if messages and messages[-1]["role"] == "assistant":  # a prefill: continue it
        messages = messages[:-1]
    text = answer(messages, body.get("seed"))
    tokens_in = len(json.dumps(messages)) // 4
    return completion_body(text, body.get("model", MODEL), tokens_in=tokens_in, tokens_out=len(text) // 4,
                           id=f"chatcmpl-{uuid.uuid4().hex[:12]}")


# --------------------------------------------------------------------------- state on disk


class State:
    def __init__(self, root: Path):
        self.root = root
        for sub in ("files", "batches"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def config(self) -> dict[str, Any]:
        path = self.root / "config.json"
        return {**DEFAULTS, **(json.loads(path.read_text()) if path.exists() else {})}

    def counters(self) -> dict[str, int]:
        path = self.root / "counters.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def bump(self, name: str, by: int = 1) -> None:
        counters = self.counters()
        counters[name] = counters.get(name, 0) + by
        _write(self.root / "counters.json", counters)

    def save_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = f"file-{uuid.uuid4().hex[:16]}"
        (self.root / "files" / f"{file_id}.data").write_bytes(data)
        meta = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose}
        _write(self.root / "files" / f"{file_id}.json", meta)
        return meta

    def file_data(self, file_id: str) -> bytes | None:
        path = self.root / "files" / f"{file_id}.data"
        return path.read_bytes() if path.exists() else None

    def custom_ids(self, file_id: str) -> set[str]:
        """The custom_ids in a file, deleted by the client or not (tests look at what was sent)."""
        files = self.root / "files"
        path = next((p for p in (files / f"{file_id}.data", files / f"{file_id}.deleted") if p.exists()), None)
        if path is None:
            return set()
        return {json.loads(line)["custom_id"] for line in path.read_text().splitlines() if line.strip()}

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        path = self.root / "batches" / f"{batch_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save_batch(self, batch: dict[str, Any]) -> None:
        _write(self.root / "batches" / f"{batch['id']}.json", batch)

    def batches(self) -> list[dict[str, Any]]:
        items = [json.loads(p.read_text()) for p in (self.root / "batches").glob("*.json")]
        return sorted(items, key=lambda b: (b["created_at"], b["_seq"]), reverse=True)

    def seen(self, name: str, key: str) -> bool:
        """Record `key` in the set `name`; True when it was there already."""
        path = self.root / f"{name}.txt"
        known = set(path.read_text().split()) if path.exists() else set()
        with path.open("a") as fh:
            fh.write(key + "\n")
        return key in known


def _write(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def finish(state: State, batch: dict[str, Any]) -> None:
    """Answer a batch's lines (all, or half of them when it is one that expires) and write its files."""
    cfg = state.config()
    lines = [json.loads(x) for x in (state.file_data(batch["input_file_id"]) or b"").decode().splitlines() if x.strip()]
    expires = batch["_seq"] <= cfg["expire"]
    cut = len(lines) // 2 if expires else len(lines)
    output, errors = [], []
    for i, line in enumerate(lines):
        cid = line["custom_id"]
        record: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": cid}
        if i >= cut:
            errors.append({**record, "response": None,
                           "error": {"code": "batch_expired", "message": "not run before the batch expired"}})
            continue
        text = json.dumps(line["body"]["messages"])
        if cfg["reject"] and cfg["reject"] in text:
            errors.append({**record, "response": {"status_code": 400, "request_id": "r", "body": {
                "error": {"message": "scripted rejection", "type": "invalid_request_error"}}}, "error": None})
            continue
        if cfg["flaky"] and int(cid[:8], 16) % cfg["flaky"] == 0 and not state.seen("flaked", cid):
            errors.append({**record, "response": {"status_code": 500, "request_id": "r", "body": {
                "error": {"message": "scripted server error", "type": "server_error"}}}, "error": None})
            continue
        if state.seen("answered", cid):
            state.bump("duplicates")
        state.bump("lines_answered")
        output.append({**record, "response": {"status_code": 200, "request_id": "r", "body": chat_completion(line["body"])},
                       "error": None})
    for name, rows in (("output_file_id", output), ("error_file_id", errors)):
        if rows:
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            batch[name] = state.save_file(data, f"{batch['id']}-{name}.jsonl", "batch_output")["id"]
    batch["status"] = "expired" if expires else "completed"
    batch[f"{batch['status']}_at"] = int(time.time())
    batch["request_counts"] = {"total": len(lines), "completed": len(output), "failed": len(errors)}


# --------------------------------------------------------------------------- the HTTP server


def make_app(state: State) -> Any:
    from aiohttp import web

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        key = state.config()["api_key"]
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return error(401, "invalid api key")
        return await handler(request)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        state.bump("chat_requests")
        return web.json_response(chat_completion(await request.json()))

    async def upload(request: web.Request) -> web.Response:
        form = await request.post()
        field = form.get("file")
        if form.get("purpose") != "batch" or field is None or not hasattr(field, "file"):
            return error(400, "expected purpose=batch and a file")
        state.bump("files_uploaded")
        return web.json_response(state.save_file(field.file.read(), field.filename, "batch"))

    async def content(request: web.Request) -> web.Response:
        data = state.file_data(request.match_info["file_id"])
        return error(404, "no such file") if data is None else web.Response(body=data)

    async def delete_file(request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        data = state.root / "files" / f"{file_id}.data"
        if data.exists():  # kept aside for the tests' eyes, gone for the client
            data.rename(data.with_suffix(".deleted"))
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        if state.file_data(body.get("input_file_id", "")) is None:
            return error(400, "no such input file")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return error(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        state.bump("batches_created")
        seq = state.counters()["batches_created"]
        batch = {"id": f"batch_{uuid.uuid4().hex[:16]}", "object": "batch", "endpoint": body["endpoint"],
                 "errors": None, "input_file_id": body["input_file_id"], "completion_window": "24h",
                 "status": "validating", "output_file_id": None, "error_file_id": None,
                 "created_at": int(time.time()), "metadata": body.get("metadata"),
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "_seq": seq, "_polls": 0}
        state.save_batch(batch)
        return web.json_response(public(batch))

    async def retrieve(request: web.Request) -> web.Response:
        batch = state.batch(request.match_info["batch_id"])
        if batch is None:
            return error(404, "no such batch")
        state.bump("polls")
        if batch["status"] in ("validating", "in_progress", "finalizing"):
            batch["_polls"] += 1
            polls = state.config()["polls"]
            if batch["_polls"] >= polls:
                finish(state, batch)
            else:
                batch["status"] = "in_progress" if batch["_polls"] < polls - 1 else "finalizing"
        elif batch["status"] == "cancelling":
            batch["status"] = "cancelled"
        state.save_batch(batch)
        return web.json_response(public(batch))

    async def listing(request: web.Request) -> web.Response:
        items = [public(b) for b in state.batches()]
        after = request.query.get("after")
        if after:
            ids = [b["id"] for b in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit", 20))
        page = items[:limit]
        return web.json_response({"object": "list", "data": page, "has_more": len(items) > limit,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None})

    async def cancel(request: web.Request) -> web.Response:
        batch = state.batch(request.match_info["batch_id"])
        if batch is None:
            return error(404, "no such batch")
        batch["status"] = "cancelling"
        state.save_batch(batch)
        return web.json_response(public(batch))

    app = web.Application(middlewares=[auth], client_max_size=1 << 30)
    app.add_routes([
        web.get("/v1/models", models), web.post("/v1/chat/completions", chat),
        web.post("/v1/files", upload), web.get("/v1/files/{file_id}/content", content),
        web.delete("/v1/files/{file_id}", delete_file),
        web.post("/v1/batches", create), web.get("/v1/batches", listing),
        web.get("/v1/batches/{batch_id}", retrieve), web.post("/v1/batches/{batch_id}/cancel", cancel),
    ])
    return app


def public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- for tests


@dataclass
class BatchServer:
    state_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def state(self) -> State:
        return State(self.state_dir)

    def counters(self) -> dict[str, int]:
        return self.state.counters()

    def configure(self, **faults: Any) -> None:
        _write(self.state_dir / "config.json", {**self.state.config(), **faults})

    def start(self) -> None:
        log = (self.state_dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--state", str(self.state_dir), "--port", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"batch server exited: {(self.state_dir / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                key = self.state.config()["api_key"]
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                if httpx.get(f"{self.base_url}/models", headers=headers, timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("batch server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def batch_server(state_dir: Path, **faults: Any) -> Iterator[BatchServer]:
    """A batch server process on a free loopback port with its state in `state_dir`."""
    from servers import free_port

    state_dir.mkdir(parents=True, exist_ok=True)
    server = BatchServer(state_dir, free_port())
    server.configure(**faults)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(State(args.state)), host="127.0.0.1", port=args.port, print=None,
                reuse_address=True, handle_signals=True)


if __name__ == "__main__":
    main()
