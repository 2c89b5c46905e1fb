"""`rmboost experiment CONFIG.yaml`: the paper's study (Table 2 grid and Table 3 ablations) from one file.

Stages, each resumable: data (prompts, real training pairs, held-out test pairs) -> generation per
variant (a method or an ablation; every LLM call cached, pairs resumed by id) -> the log-probability
terms of the re-weighting factor beta -> one reward model per (variant, setting, seed), trained and
scored on the test pairs -> results.json and a Table-2-style table -> analysis.json -> report.html.
A finished stage is recognised by a fingerprint of everything it depends on, so a re-run after a
crash continues where it stopped and changes only what its inputs changed.

Modules: config (the file and the grid), data, generation, beta, training (one reward model per
cell), results (the table and the paired comparisons), log (log.jsonl), run (the whole run). The
run folder's layout is rmboost.runfolder, shared with the analysis that reads it.
"""

from rmboost.experiment.beta import beta_stage, score_beta
from rmboost.experiment.config import (
    ABLATIONS,
    METHOD_NAMES,
    SETTINGS,
    ConfigError,
    ExperimentConfig,
    cells,
    check_inputs,
    load_config,
    validate_config,
    variants,
)
from rmboost.experiment.data import prepare_data
from rmboost.experiment.generation import generate_config, generate_variant, generator_backend
from rmboost.experiment.log import RunLog
from rmboost.experiment.results import (
    cell_outcomes,
    compare_run,
    format_table,
    heldout_info,
    summarize_table,
)
from rmboost.experiment.run import run_experiment
from rmboost.experiment.training import rm_config, rm_settings, run_cell, train_specs
from rmboost.runfolder import REAL, Variant

__all__ = [
    "ABLATIONS",
    "METHOD_NAMES",
    "REAL",
    "SETTINGS",
    "ConfigError",
    "ExperimentConfig",
    "RunLog",
    "Variant",
    "beta_stage",
    "cell_outcomes",
    "cells",
    "check_inputs",
    "compare_run",
    "format_table",
    "generate_config",
    "generate_variant",
    "generator_backend",
    "heldout_info",
    "load_config",
    "prepare_data",
    "rm_config",
    "rm_settings",
    "run_cell",
    "run_experiment",
    "score_beta",
    "summarize_table",
    "train_specs",
    "validate_config",
    "variants",
]
