"""`rmboost experiment CONFIG.yaml`, stage by stage: data -> generation and beta per variant ->
one reward model per cell -> results.json and the table -> analysis.json and report.html.

results.json is rewritten after every stage, so a run stopped anywhere shows what it finished.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from rmboost.data.pairs import atomic_write_json
from rmboost.experiment.beta import beta_stage
from rmboost.experiment.config import (
    ConfigError,
    cells,
    check_inputs,
    check_name,
    load_config,
    variants,
)
from rmboost.experiment.data import prepare_data
from rmboost.experiment.generation import (
    check_generation_settings,
    generate_config,
    generate_variant,
    generator_backend,
)
from rmboost.experiment.log import RunLog
from rmboost.experiment.results import compare_run, format_table, heldout_info, summarize_table
from rmboost.experiment.training import check_rm, rm_settings, run_cell
from rmboost.llm import Backend
from rmboost.runfolder import REAL, RunFolder, count_rows, pairs_rel


async def run_experiment(
    config_path: str | Path,
    out: str | Path | None = None,
    console: Console | None = None,
    command: str | None = None,
    backend: Backend | None = None,
    judge_backend: Backend | None = None,
) -> dict[str, Any]:
    """Run or resume the whole study; returns results.json's content. Backends are for tests."""
    console = console or Console(stderr=True)
    cfg = load_config(config_path)
    task = check_inputs(cfg, config_path)  # the task and the data files, before the run folder is touched
    run = Path(out or cfg.output or Path("runs") / cfg.name)
    folder = RunFolder(run)
    vs = variants(cfg)
    needs_syn = any(s != REAL for s in cfg.settings)
    try:
        check_run_folder(folder, config_path)
        if out is None and cfg.output is None:  # runs/NAME
            check_name(cfg.name)
        for v in vs if needs_syn else []:  # a resume with other settings is refused before anything is touched
            check_generation_settings(generate_config(cfg, v, folder.prompts, run))
        check_rm(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    run.mkdir(parents=True, exist_ok=True)
    if not (folder.config.exists() and folder.config.samefile(config_path)):  # resumed from the run's own copy
        shutil.copyfile(config_path, folder.config)
    log = RunLog(folder.log, console)
    paths = prepare_data(cfg, run)
    test_info, baselines = heldout_info(paths["test"])
    log.event("data", f"{count_rows(paths['prompts'])} prompts, {count_rows(paths['real'])} real training pairs, "
                      f"{test_info['pairs']} test pairs ({test_info['groups']} groups) in {folder.data}")
    grid = cells(cfg)
    generator = generator_backend(cfg)
    judge = cfg.judge.connection(generator)
    judge_is_generator = (judge.backend, judge.model) == (generator.backend, generator.model)
    results: dict[str, Any] = {
        "name": cfg.name, "task": task.name, "command": command or f"rmboost experiment {config_path}",
        "created": _created(run), "updated": None,
        "generator": {"backend": generator.backend, "model": None},
        "judge": {"backend": judge.backend, "model": judge.model, "mode": cfg.judge.mode},
        "rm": rm_settings(cfg), "mixture": cfg.mixture, "test": test_info, "baselines": baselines,
        "data": {"prompts": count_rows(paths["prompts"]), "real_train": count_rows(paths["real"])},
        "variants": [{"name": v.name, "method": v.method, "ablation": v.ablation,
                      "pairs_file": pairs_rel(v.name)} for v in vs],
        "settings": list(cfg.settings), "seeds": list(cfg.seeds),
        "cells": [{"variant": v, "setting": s, "seed": k, "status": "pending", "accuracy": None, "ci": None,
                   "train_pairs": None, "eval_file": None} for v, s, k in grid],
        "table": [], "generation": {},
    }

    def save() -> None:
        results["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        results["table"] = summarize_table(results["cells"], run, paths["test"])
        results.update(compare_run(results["cells"], run, paths["test"], results["settings"],
                                   [v["name"] for v in results["variants"]], results["seeds"]))
        atomic_write_json(folder.results, results)

    save()
    for i, v in enumerate(vs if needs_syn else [], 1):
        gcfg = generate_config(cfg, v, paths["prompts"], run)
        record = await generate_variant(gcfg, console, backend, judge_backend)
        results["generation"][v.name] = record
        results["generator"]["model"] = record["model"]
        if judge_is_generator:
            results["judge"]["model"] = record["model"]
        log.event(f"generate {i}/{len(vs)}", f"{v.name}: {record['pairs']} pairs, {record['failures']} failures, "
                  f"{record['filtered']} filtered; {record['calls_this_run']} calls made, "
                  f"{record['cache_hits_this_run']} from cache", variant=v.name, calls=record["calls_this_run"],
                  cache_hits=record["cache_hits_this_run"], pairs=record["pairs"])
        save()
        if cfg.analysis.beta and (v.method == "rlcd" or v.method == "rmboost"):
            await beta_stage(gcfg, v, cfg, backend, log)
    for n, (variant, setting, seed) in enumerate(grid, 1):
        cell = run_cell(cfg, variant, setting, seed, paths, run)
        results["cells"][n - 1] = cell
        shown = f"{cell['accuracy'] * 100:.1f}% [{cell['ci'][0] * 100:.1f}, {cell['ci'][1] * 100:.1f}]" \
            if cell["status"] == "ok" else cell["status"] + (f" ({cell['error']})" if cell.get("error") else "")
        log.event(f"rm {n}/{len(grid)}", f"{variant} / {setting} / seed {seed}: {shown} "
                  f"({cell['train_pairs']} training pairs)", variant=variant, setting=setting, seed=seed,
                  status=cell["status"])
        save()
    console.print(format_table(results), highlight=False, soft_wrap=True)
    if cfg.analysis.report:
        await asyncio.to_thread(_analyse_and_report, run, log, results["command"])
    log.event("done", f"results: {folder.results}")
    return results


def _analyse_and_report(run: Path, log: RunLog, command: str) -> None:
    from rmboost.analysis import analyze_run, write_report

    analyze_run(run)  # writes analysis.json and the figures
    log.event("report", str(write_report(run, command=command)))


def check_run_folder(folder: RunFolder, config_path: str | Path) -> None:
    """An existing --out folder must hold nothing but what a run writes (config.yaml, data/, gen/,
    rm/, results.json, ...; a first run that stopped early leaves some of them), and a config.yaml
    alone must be this config: a run writes its config, data and results there and would
    overwrite a folder of other files."""
    run = folder.dir
    if run.exists() and not run.is_dir():
        raise ConfigError(f"--out {run} is a file, not a run folder")
    if not run.is_dir():
        return
    ours = {p.name for p in folder.written}

    def written_by_a_run(name: str) -> bool:
        return name in ours or name.startswith(".") or (name.endswith(".tmp") and name.startswith(tuple(ours)))

    if other := sorted(p.name for p in run.iterdir() if not written_by_a_run(p.name)):
        raise ConfigError(f"--out {run} holds files a run does not write ({', '.join(other[:3])}"
                          f"{', ...' if len(other) > 3 else ''}): choose a new or empty folder")
    started = any(p.exists() for p in (folder.results, folder.log, folder.data))
    if folder.config.is_file() and not started and folder.config.read_bytes() != Path(config_path).read_bytes():
        raise ConfigError(f"--out {run} holds a config.yaml that is not this config, and no run: "
                          "choose a new or empty folder")


def _created(run: Path) -> str:
    existing = RunFolder(run).results
    if existing.exists():
        try:
            return json.loads(existing.read_text("utf-8"))["created"]
        except (json.JSONDecodeError, KeyError):
            pass
    return time.strftime("%Y-%m-%dT%H:%M:%S")
