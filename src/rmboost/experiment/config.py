"""The experiment file: its sections as dataclasses, loading with named errors, and the grid it asks for.

Unknown keys, wrong types and values outside a setting's choices fail before any work, named by
their path (`rm.epoch: unknown setting (did you mean 'epochs'?)`); `check_inputs` then checks the
task and the files named in `data` (`data.qa_feedback: /x not found`) before the run folder is made. The sections are the options
dataclasses the settings feed (rmboost.options): `judge` is JudgeOptions, `generation` takes
GenerateConfig's declarations, `generator` is BackendOptions plus GenerateConfig's sampling and
batch mode (`batch: true`, or a mapping of BatchOptions settings), `rm` is TrainRMConfig; so every
default is declared once, where `rmboost generate` and `rmboost train-rm` read it too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rmboost import options
from rmboost.backends import BackendOptions
from rmboost.data.inputs import SAMPLE_PREFIX, InputError, sample_path
from rmboost.generate import GenerateConfig
from rmboost.llm.batch import BatchOptions
from rmboost.methods.judge import JudgeOptions
from rmboost.options import OptionError, Setting, option, reuse
from rmboost.runfolder import REAL, Variant
from rmboost.tasks import TaskError, TaskSpec, load_task

METHOD_NAMES = ("rmboost", "rlcd", "rlaif", "west-of-n")
ABLATIONS = ("no-aspect", "no-filter", "sft-response")  # paper Table 3, all variants of rmboost
SETTINGS = ("real", "syn", "real+syn")


class ConfigError(ValueError):
    """A problem in the experiment file, named by its key."""


# ---------------------------------------------------------------------------------------------
# The config file


@dataclass
class DataSection:
    qa_feedback: str | None = None  # a QA-Feedback folder: prompts, real and test pairs split by question
    prompts: str | None = None  # or your own files: prompts (any input format generate reads)
    fields: dict[str, str] = field(default_factory=dict)  # task field -> column in the prompts file
    real_train: str | None = None  # human pairs for training
    test: str | None = None  # held-out human pairs (never trained on)
    test_fraction: float = 0.2  # QA-Feedback: share of questions held out
    split_seed: int = 0
    prompts_limit: int | None = None  # first N training questions / prompt rows
    real_limit: int | None = None  # a seeded sample of N real training pairs
    test_limit: int | None = None  # the first N test pairs (smoke runs only)


@dataclass
class GenerationSection:
    """How every variant generates: these GenerateConfig settings (declared and defaulted there)
    and the experiment's own quality check."""

    seed: int = reuse(GenerateConfig, "seed")
    aspect_mode: str = reuse(GenerateConfig, "aspect_mode")
    aspects_k: int = reuse(GenerateConfig, "aspects_k")
    quality_check: bool = option(True, help="rmboost's post-generation judge check (paper §4.1); off in no-filter.")
    n: int = reuse(GenerateConfig, "n")  # west-of-n pool size
    scorer: str = reuse(GenerateConfig, "scorer")
    max_attempts: int = reuse(GenerateConfig, "max_attempts")
    prefill: bool | None = reuse(GenerateConfig, "prefill")

    def generate_settings(self) -> dict[str, Any]:
        """The GenerateConfig fields this section sets."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "quality_check"}


@dataclass
class AnalysisSection:
    beta: bool = True  # score y2 under both prompts where the backend gives log-probabilities
    beta_limit: int | None = 50  # pairs per variant
    report: bool = True  # write report.html at the end


@dataclass
class ExperimentConfig:
    name: str
    task: str
    data: DataSection
    output: str | None = None  # the run folder; default runs/<name>
    generator: dict[str, Any] = field(default_factory=dict)  # BackendOptions fields + GENERATOR_SAMPLING
    judge: JudgeOptions = field(default_factory=JudgeOptions)
    generation: GenerationSection = field(default_factory=GenerationSection)
    methods: list[str] = field(default_factory=lambda: list(METHOD_NAMES))
    ablations: list[str] = field(default_factory=list)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> generate settings
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    mixture: dict[str, float] | None = None  # real+syn proportions, e.g. {real: 1, syn: 1}; none = concatenate
    rm: dict[str, Any] = field(default_factory=dict)  # TrainRMConfig fields (not RM_PER_CELL) + keep_models
    seeds: list[int] = field(default_factory=lambda: [0])
    analysis: AnalysisSection = field(default_factory=AnalysisSection)
    cache: str | None = None  # the LLM cache; default: rmboost's user cache


SECTIONS = {"data": DataSection, "judge": JudgeOptions, "generation": GenerationSection, "analysis": AnalysisSection}
# `generator` and `rm` stay mappings of the settings given, checked against the dataclasses they
# feed, so that those dataclasses' defaults apply. The generator's GenerateConfig settings (the
# rest are BackendOptions): sampling, prices and batch mode.
GENERATOR_SAMPLING = ("concurrency", "temperature", "top_p", "max_tokens", "price_in", "price_out", "batch")
RM_PER_CELL = ("train", "output", "seed", "validation", "show_progress", "extra")  # set by the grid


@dataclass
class RMExtras:
    keep_models: bool = option(False)  # keep every trained model (~90 MB each for MiniLM)


def generator_fields() -> dict[str, Setting]:
    return {**options.settings(BackendOptions, surface="yaml"),
            **options.settings(GenerateConfig, only=GENERATOR_SAMPLING)}


def batch_setting(value: Any, where: str = "generator.batch") -> BatchOptions:
    """`batch: true` (or false), or a mapping of BatchOptions settings, which turns batch mode on."""
    if value is None or isinstance(value, bool):
        return BatchOptions(enabled=bool(value))
    if isinstance(value, dict):
        value = {"enabled": True, **value}
    try:
        return options.load(BatchOptions, value, where)
    except OptionError as exc:
        raise OptionError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None


def generator_section(data: Any) -> dict[str, Any]:
    """The `generator` mapping, checked; its `batch` setting as BatchOptions."""
    known = generator_fields()
    section = options.check_settings(data, known, "generator", deep=False)
    for key, value in section.items():
        if key == "batch":
            section[key] = batch_setting(value)
        else:
            options.check_value(value, known[key], f"generator.{key}")
    return section


def rm_fields() -> dict[str, Setting]:
    from rmboost.rm.train import TrainRMConfig

    return {**options.settings(TrainRMConfig, skip=RM_PER_CELL), **options.settings(RMExtras)}


def _load(data: Any) -> ExperimentConfig:
    known = options.settings(ExperimentConfig)
    values = options.check_settings(data, known, "", deep=False)
    for key, value in values.items():
        if key in SECTIONS:
            values[key] = options.load(SECTIONS[key], value, key)
        elif key == "generator":
            values[key] = generator_section(value)
        elif key == "rm":
            values[key] = options.check_settings(value, rm_fields(), key)
        else:
            options.check_value(value, known[key], key)
    missing = [s.name for s in known.values() if s.required and s.name not in values]
    if missing:
        raise ConfigError(f"config: missing {', '.join(repr(m) for m in missing)}")
    return ExperimentConfig(**values)


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        cfg = _load(data)
        validate_config(cfg)
    except (ConfigError, OptionError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


def check_name(name: str) -> None:
    """A name that makes the default run folder runs/NAME must stay inside runs/."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"name: {name!r} names the run folder runs/NAME: use a plain name, no '/' or '..' "
                          "(or give output: or --out)")


def validate_config(cfg: ExperimentConfig) -> None:
    for name, allowed, values in (("methods", METHOD_NAMES, cfg.methods), ("ablations", ABLATIONS, cfg.ablations),
                                  ("settings", SETTINGS, cfg.settings)):
        for v in values:
            if v not in allowed:
                raise ConfigError(f"{name}: unknown {v!r} (use {', '.join(allowed)})")
    if not cfg.methods and not cfg.ablations and cfg.settings != [REAL]:
        raise ConfigError("methods: name at least one method or ablation (or use settings: [real])")
    if not cfg.seeds:
        raise ConfigError("seeds: give at least one seed")
    if not cfg.settings:
        raise ConfigError(f"settings: name at least one of {', '.join(SETTINGS)}")
    for name, values in (("methods", cfg.methods), ("ablations", cfg.ablations), ("settings", cfg.settings),
                         ("seeds", cfg.seeds)):
        if (twice := next((v for i, v in enumerate(values) if v in values[:i]), None)) is not None:
            raise ConfigError(f"{name}: {twice!r} is listed twice")
    d = cfg.data
    if d.qa_feedback is not None and (given := [k for k in ("prompts", "real_train", "test") if getattr(d, k)]):
        raise ConfigError(f"data: qa_feedback gives the prompts, real and test pairs; drop data.{given[0]} "
                          "(or drop qa_feedback to use your own files)")
    if d.qa_feedback is None and (d.prompts is None or d.test is None):
        raise ConfigError("data: give qa_feedback: FOLDER, or prompts: FILE and test: FILE (and real_train: FILE)")
    if d.qa_feedback is None and d.real_train is None and any(s != "syn" for s in cfg.settings):
        raise ConfigError("data.real_train: the real and real+syn settings need human training pairs")
    if cfg.mixture is not None and set(cfg.mixture) != {"real", "syn"}:
        raise ConfigError(f"mixture: give weights for exactly real and syn, got {sorted(cfg.mixture)}")
    for key, weight in (cfg.mixture or {}).items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise ConfigError(f"mixture.{key}: the weight must be a positive number, got {weight!r}")
    for variant in cfg.method_options:
        if variant not in [v.name for v in variants(cfg)]:
            raise ConfigError(f"method_options.{variant}: not a variant of this experiment")
        bad = set(cfg.method_options[variant]) - {f.name for f in dataclasses.fields(GenerateConfig)}
        if bad:
            raise ConfigError(f"method_options.{variant}: unknown generate setting {sorted(bad)[0]!r}")


def check_inputs(cfg: ExperimentConfig, path: str | Path) -> TaskSpec:
    """The task (returned) and the data files the run will read: checked before anything is
    written, each problem named by the config file and its key."""
    try:
        try:
            task = load_task(cfg.task)
        except TaskError as exc:
            raise ConfigError(f"task: {exc}") from None
        check_files(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return task


def check_files(cfg: ExperimentConfig) -> None:
    """Every file in `data` that the run reads exists (`data.qa_feedback: /x not found`)."""
    d = cfg.data
    if d.qa_feedback is not None:  # then prompts, real_train and test come from it
        folder = Path(d.qa_feedback)
        if not folder.exists():
            raise ConfigError(f"data.qa_feedback: {folder} not found")
        if folder.is_dir() and not (folder / "dev_feedback.json").is_file():
            raise ConfigError(f"data.qa_feedback: {folder} has no dev_feedback.json")
        return
    for key in ("prompts", "real_train", "test"):
        value = getattr(d, key)
        if value is None:
            continue
        if str(value).startswith(SAMPLE_PREFIX):
            try:
                sample_path(str(value)[len(SAMPLE_PREFIX):])
            except InputError as exc:
                raise ConfigError(f"data.{key}: {exc}") from None
        elif not Path(value).exists():
            raise ConfigError(f"data.{key}: {value} not found")
    if d.real_train and d.test and Path(d.real_train).resolve() == Path(d.test).resolve():
        raise ConfigError(f"data.real_train and data.test are the same file ({d.test}): the test pairs would be trained on")


# ---------------------------------------------------------------------------------------------
# The grid


def variants(cfg: ExperimentConfig) -> list[Variant]:
    out = [Variant(m, m) for m in cfg.methods]
    out += [Variant(f"rmboost-{a}", "rmboost", a) for a in cfg.ablations]
    return out


def cells(cfg: ExperimentConfig) -> list[tuple[str, str, int]]:
    """(variant, setting, seed) for every reward model the grid trains."""
    grid = []
    for seed in cfg.seeds:
        if REAL in cfg.settings:
            grid.append((REAL, REAL, seed))
        for v in variants(cfg):
            grid += [(v.name, s, seed) for s in cfg.settings if s != REAL]
    return grid
