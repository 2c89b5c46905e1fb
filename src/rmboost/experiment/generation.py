"""Stage 2: one variant's pairs in gen/<variant>/, through the same job as `rmboost generate`.

A variant's generation settings are recorded in its stage.json; a re-run with other settings is
refused (mixing two settings in one pair file would be silent corruption). The tokens and cost
are the whole job's, as `rmboost generate` counts them (a resumed job is replayed from the cache).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from rmboost.backends import BackendOptions
from rmboost.data.pairs import atomic_write_json, sidecar
from rmboost.experiment.config import GENERATOR_SAMPLING, ConfigError, ExperimentConfig
from rmboost.generate import GenerateConfig, run_generate
from rmboost.llm import Backend
from rmboost.llm.accounting import usage_totals
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


def check_generation_settings(gcfg: GenerateConfig) -> bool:
    """Whether the variant's folder has pairs generated already; ConfigError when they were
    generated with other settings (two settings would otherwise mix in one pair file)."""
    folder = Path(gcfg.output).parent
    stage = folder / "stage.json"
    if not stage.exists():
        return False
    before = json.loads(stage.read_text("utf-8"))["generate"]
    ident = _generation_identity(gcfg)
    # A setting recorded by an older rmboost that no longer shapes the pairs is not compared.
    changed = sorted(k for k in ident if before.get(k) != ident[k])
    if changed:
        raise ConfigError(
            f"{folder} was generated with other settings ({', '.join(changed)}); "
            "use a new output folder, or delete that folder to regenerate it"
        )
    return True


async def generate_variant(
    gcfg: GenerateConfig, console: Console, backend: Backend | None, judge_backend: Backend | None
) -> dict[str, Any]:
    """Run (or resume) one variant's generation and return complete accounting for its pairs:
    the whole job's tokens and cost (every run), as `run_generate` counts them."""
    folder = Path(gcfg.output).parent
    folder.mkdir(parents=True, exist_ok=True)
    if not check_generation_settings(gcfg):
        atomic_write_json(folder / "stage.json", {"generate": _generation_identity(gcfg)})
    summary = await run_generate(gcfg, console, backend=backend, judge_backend=judge_backend)
    job = summary.job or {}
    gen_tokens, judge_tokens = usage_totals(job.get("usage") or {}), usage_totals(job.get("judge_usage") or {})
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
        "cost_usd": (summary.cost_usd or {}).get("total"),  # the whole job's, priced by run_generate
        "calls_this_run": summary.llm_calls,
        "cache_hits_this_run": summary.cache_hits,
        "wall_seconds": summary.wall_seconds,
        "model": summary.model,
    }
    atomic_write_json(folder / "accounting.json", record)
    return record
