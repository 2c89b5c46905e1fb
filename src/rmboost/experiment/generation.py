"""Stage 2: one variant's pairs in gen/<variant>/, through the same job as `rmboost generate`.

A variant's generation settings are recorded in its stage.json; a re-run with other settings is
refused (mixing two settings in one pair file would be silent corruption). A resumed job's
tokens are recounted by replaying the whole job from the cache, so they cover every pair.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from rmboost.backends import BackendOptions, make_backend
from rmboost.data.pairs import sidecar
from rmboost.experiment.config import GENERATOR_SAMPLING, ConfigError, ExperimentConfig
from rmboost.generate import GenerateConfig, job_backends, needs_judge, run_generate
from rmboost.llm import Backend
from rmboost.llm.accounting import estimate_cost, usage_totals
from rmboost.llm.replay import CacheOnly
from rmboost.methods.judge import CONNECTION
from rmboost.runfolder import RunFolder, Variant, count_rows
from rmboost.tasks import load_task


def generator_backend(cfg: ExperimentConfig) -> BackendOptions:
    return BackendOptions(**{k: v for k, v in cfg.generator.items() if k not in GENERATOR_SAMPLING})


def generate_config(cfg: ExperimentConfig, variant: Variant, prompts: Path, run: Path) -> GenerateConfig:
    sampling = {k: v for k, v in cfg.generator.items() if k in GENERATOR_SAMPLING}
    gcfg = GenerateConfig(
        task=cfg.task, input=str(prompts), output=RunFolder(run).pairs(variant),
        method=variant.method or variant.name, input_format="rows",
        backend=generator_backend(cfg), cache=Path(cfg.cache) if cfg.cache else None,
        judge=cfg.judge,  # its connection fields left unset are the generator's (JudgeOptions.connection)
        filter=variant.method == "rmboost" and cfg.generation.quality_check,
        show_progress=False, **cfg.generation.generate_settings(), **sampling,
    )
    if variant.ablation == "no-aspect":
        gcfg = replace(gcfg, aspect_mode="none")
    elif variant.ablation == "no-filter":
        gcfg = replace(gcfg, filter=False)
    elif variant.ablation == "sft-response":
        reference = load_task(cfg.task).reference_field
        if not reference:
            raise ConfigError(f"ablations: sft-response needs a task with a reference field; {cfg.task!r} has none")
        gcfg = replace(gcfg, y1_from=reference, labels="worse")
    return replace(gcfg, **cfg.method_options.get(variant.name, {}))


def _generation_identity(gcfg: GenerateConfig) -> dict[str, Any]:
    """What makes a variant's pairs what they are; not where they go, nor how fast or how many."""
    skip = {"output", "input", "limit", "concurrency", "show_progress", "cache", "use_cache", "price_in", "price_out",
            "batch"}  # online or in batches, the same requests get the same answers
    if gcfg.method != "west-of-n":
        skip |= {"n", "scorer"}  # the pool and its scorer are West-of-N's alone
    ident = {k: v for k, v in asdict(gcfg).items() if k not in skip}
    judge = gcfg.judge  # as before JudgeOptions had connection fields: its own backend, or None
    ident["judge"] = {"backend": asdict(judge.connection(gcfg.backend)) if judge.own_connection() else None,
                      **{k: v for k, v in ident["judge"].items() if k not in CONNECTION}}
    for options in (ident["backend"], ident["judge"]["backend"] or {}):
        for detail in ("timeout", "max_retries", "requests_per_minute", "tokens_per_minute", "threads",
                       "breaker_failures", "breaker_seconds"):
            options.pop(detail, None)  # how requests are made, not what they answer
        if options.get("cache_identity") is None:  # as the request cache keys it: a named deployment,
            options.pop("cache_identity", None)  # else the URL or the set of replica URLs
        else:
            options.pop("base_url", None)
        if isinstance(options.get("base_url"), list):
            options["base_url"] = sorted(options["base_url"])
    return json.loads(json.dumps(ident, default=str))


async def generate_variant(
    gcfg: GenerateConfig, console: Console, backend: Backend | None, judge_backend: Backend | None
) -> dict[str, Any]:
    """Run (or resume) one variant's generation and return complete accounting for its pairs.

    A resumed job's summary counts only this run's requests. When the job was resumed, the whole
    job is replayed from the cache into a scratch file (no calls: every answer is stored) so the
    tokens and cost are those of all its pairs, as a method-to-method comparison needs.
    """
    folder = Path(gcfg.output).parent
    folder.mkdir(parents=True, exist_ok=True)
    stage = folder / "stage.json"
    ident = _generation_identity(gcfg)
    if stage.exists():
        before = json.loads(stage.read_text("utf-8"))["generate"]
        # A setting recorded by an older rmboost that no longer shapes the pairs is not compared.
        changed = sorted(k for k in ident if before.get(k) != ident[k])
        if changed:
            raise ConfigError(
                f"{folder} was generated with other settings ({', '.join(changed)}); "
                "use a new output folder, or delete that folder to regenerate it"
            )
    else:
        stage.write_text(json.dumps({"generate": ident}, indent=2) + "\n", "utf-8")
    summary = await run_generate(gcfg, console, backend=backend, judge_backend=judge_backend)
    full = summary
    if summary.resumed and gcfg.use_cache:
        with tempfile.TemporaryDirectory() as scratch:
            # Online and cache-only: no request leaves, so neither does a batch.
            replay = replace(gcfg, output=Path(scratch) / "pairs.jsonl", batch=replace(gcfg.batch, enabled=False))
            real, real_judge = job_backends(gcfg, backend, judge_backend)  # the job's cache keys
            if needs_judge(gcfg):
                real_judge = real_judge or make_backend(gcfg.judge.connection(gcfg.backend))
            full = await run_generate(replay, console, backend=CacheOnly(real),
                                      judge_backend=CacheOnly(real_judge) if real_judge else None)
        # ... but the job's tokens were bought at its prices (batch prices in batch mode).
        full = replace(full, batch=summary.batch, cost_usd=estimate_cost(
            [full.usage, full.judge_usage], gcfg.price_in, gcfg.price_out, gcfg.batch))
        # The variant's summary then describes the whole job, as an uninterrupted run's would.
        record_summary = {**asdict(full), "output": summary.output, "failures_file": summary.failures_file,
                          "replayed_from_cache": True}
        sidecar(Path(gcfg.output), "summary").write_text(json.dumps(record_summary, indent=2) + "\n", "utf-8")
    gen_tokens, judge_tokens = usage_totals(full.usage), usage_totals(full.judge_usage)
    tokens = sum(t["tokens_in"] + t["tokens_out"] for t in (gen_tokens, judge_tokens))
    filtered = count_rows(sidecar(Path(gcfg.output), "filtered"))
    failures = count_rows(sidecar(Path(gcfg.output), "failures"))
    pairs = summary.pairs_total
    record = {
        "prompts": summary.prompts,
        "pairs": pairs,
        "failures": failures,
        "filtered": filtered,
        "filter_rate": round(filtered / (pairs + filtered), 4) if gcfg.filter and pairs + filtered else None,
        "tokens_in": gen_tokens["tokens_in"],
        "tokens_out": gen_tokens["tokens_out"],
        "judge_tokens_in": judge_tokens["tokens_in"],
        "judge_tokens_out": judge_tokens["tokens_out"],
        "tokens_per_pair": round(tokens / pairs, 1) if pairs else None,
        "cost_usd": (full.cost_usd or {}).get("total"),  # the whole job's, priced by run_generate
        "calls_this_run": summary.llm_calls,
        "cache_hits_this_run": summary.cache_hits,
        "wall_seconds": summary.wall_seconds,
        "model": summary.model,
    }
    (folder / "accounting.json").write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    return record
