"""Stage 3: the log-probability terms of the re-weighting factor beta (paper Eq. 12), in gen/<variant>/beta.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rmboost.backends import make_backend
from rmboost.experiment.config import ExperimentConfig
from rmboost.experiment.log import RunLog
from rmboost.generate import GenerateConfig
from rmboost.llm import Backend
from rmboost.runfolder import BETA_FILE, Variant, read_jsonl
from rmboost.tasks import load_task


async def beta_stage(gcfg: GenerateConfig, v: Variant, cfg: ExperimentConfig, backend: Backend | None, log: RunLog) -> None:
    """Score the variant's pairs where the backend gives response log-probabilities; say why not otherwise."""
    scorer = backend or make_backend(gcfg.backend)
    if not hasattr(scorer, "continuation_logprob"):
        log.event("beta", f"{v.name}: skipped ({scorer.name} backend gives no response log-probabilities)",
                  variant=v.name, skipped=True)
        return
    try:
        added = await score_beta(gcfg, v, scorer, cfg.analysis.beta_limit)
    finally:
        if backend is None:
            await scorer.aclose()
    log.event("beta", f"{v.name}: {added} pairs scored", variant=v.name, scored=added)


async def score_beta(
    gcfg: GenerateConfig, variant: Variant, backend: Any, limit: int | None
) -> int:
    """Append beta.jsonl rows for pairs not scored yet; returns how many rows it added.

    log beta = log Pr(y2 | x, y1, l, I) - log Pr(y2 | x) for RMBoost, and for RLCD the sum of that
    term for both responses under their contrast instructions (paper Eq. 10). Pr(y | x) is the
    first-response instruction of the same generator. Responses are scored after the opening
    <response> tag, the same way for both prompts.
    """
    from rmboost.methods.rmboost import sample_aspects
    from rmboost.prompts import contrast_messages, first_response_messages, rewrite_messages

    task = load_task(gcfg.task)
    pairs_path = Path(gcfg.output)
    out = pairs_path.parent / BETA_FILE
    done = {r["id"] for r in read_jsonl(out)}
    pairs = read_jsonl(pairs_path)
    todo = [p for p in pairs[:limit] if p["id"] not in done]
    if not todo:
        return 0

    def opened(messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [*messages, {"role": "assistant", "content": "<response>"}]

    async def term(conditional: list[dict[str, str]], plain: list[dict[str, str]], text: str) -> dict[str, float]:
        cond, n = await backend.continuation_logprob(opened(conditional), text)
        uncond, _ = await backend.continuation_logprob(opened(plain), text)
        return {"conditional": cond, "unconditional": uncond, "tokens": n}

    with out.open("a", encoding="utf-8") as fh:
        for p in todo:
            row = {"id": p["id"], **p.get("inputs", {})}
            plain = first_response_messages(task, row, gcfg.aspect_mode)
            if variant.method == "rlcd":
                terms = [await term(contrast_messages(task, row, "positive"), plain, p["y1"]),
                         await term(contrast_messages(task, row, "negative"), plain, p["y2"])]
            else:
                mode = p.get("aspect_mode", gcfg.aspect_mode)
                targets = sample_aspects(task, p["id"], gcfg.seed, gcfg.aspects_k) if mode == "sample" else []
                terms = [await term(rewrite_messages(task, row, p["y1"], p["label"], mode, targets), plain, p["y2"])]
            record = {
                "id": p["id"],
                "logp_conditional": sum(t["conditional"] for t in terms),
                "logp_unconditional": sum(t["unconditional"] for t in terms),
                "tokens": sum(t["tokens"] for t in terms),
            }
            record["log_beta"] = record["logp_conditional"] - record["logp_unconditional"]
            fh.write(json.dumps(record) + "\n")
            fh.flush()
    return len(todo)
