"""`rmboost experiment CONFIG.yaml`: the paper's study (Table 2 grid and Table 3 ablations) from one file.

Stages, each resumable: data (prompts, real training pairs, held-out test pairs) -> generation per
variant (a method or an ablation; every LLM call cached, pairs resumed by id) -> the log-probability
terms of the re-weighting factor beta -> one reward model per (variant, setting, seed), trained and
scored on the test pairs -> results.json and a Table-2-style table -> analysis.json -> report.html.
A finished stage is recognised by a fingerprint of everything it depends on, so a re-run after a
crash continues where it stopped and changes only what its inputs changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import hashlib
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from rmboost.backends import BackendOptions, make_backend
from rmboost.comparisons import compare_run, format_comparisons
from rmboost.data import qa_feedback
from rmboost.data.inputs import read_rows
from rmboost.data.pairs import atomic_write_jsonl, read_jsonl_tolerant, sidecar
from rmboost.generate import GenerateConfig, estimate_cost, load_prompt_rows, run_generate
from rmboost.llm import Backend, LLMError
from rmboost.methods.judge import JudgeOptions
from rmboost.tasks import load_task

METHOD_NAMES = ("rmboost", "rlcd", "rlaif", "west-of-n")
ABLATIONS = ("no-aspect", "no-filter", "sft-response")  # paper Table 3, all variants of rmboost
SETTINGS = ("real", "syn", "real+syn")
REAL = "real"  # the variant name of the real-only row


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
class JudgeSection:
    backend: str | None = None  # None: the generator's connection settings
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    mode: str = "text"  # text (tagged verdicts) or logprobs (next-token probabilities; small models)
    temperature: float = 0.0
    max_tokens: int = 512
    margin: float = 0.0


@dataclass
class GenerationSection:
    seed: int = 0
    aspect_mode: str = "model-selects"
    aspects_k: int = 2
    quality_check: bool = True  # rmboost's post-generation judge check (paper §4.1); off in no-filter
    n: int = 4  # west-of-n pool size
    scorer: str = "judge"  # west-of-n: judge or rm:PATH
    max_attempts: int = 3
    prefill: bool | None = None


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
    judge: JudgeSection = field(default_factory=JudgeSection)
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


SECTIONS = {"data": DataSection, "judge": JudgeSection, "generation": GenerationSection, "analysis": AnalysisSection}
# `generator` and `rm` are the settings of the dataclasses they feed, checked against those, so
# their defaults live in one place.
GENERATOR_SAMPLING = ("concurrency", "temperature", "top_p", "max_tokens", "price_in", "price_out")
RM_PER_CELL = ("train", "output", "seed", "validation", "show_progress", "extra")  # set by the grid


def _fields(cls: type, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in skip and (only is None or f.name in only)}


def generator_fields() -> dict[str, Any]:
    return {**_fields(BackendOptions, skip=("logits_all",)), **_fields(GenerateConfig, only=GENERATOR_SAMPLING)}


def rm_fields() -> dict[str, Any]:
    from rmboost.rm.train import TrainRMConfig

    keep = dataclasses.field(default=False)
    keep.name, keep.type = "keep_models", "bool"  # keep every trained model (~90 MB each for MiniLM)
    return {**_fields(TrainRMConfig, skip=RM_PER_CELL), "keep_models": keep}
_TYPES: dict[str, Any] = {"str": str, "Path": str, "int": int, "float": (int, float), "bool": bool, "list": list,
                          "dict": dict}


def _check_value(value: Any, type_text: str, where: str) -> None:
    """Check a YAML value against a field's annotation (the few shapes the config uses)."""
    options = [t.strip().split("[")[0] for t in type_text.split("|")]
    if value is None:
        if "None" in options:
            return
        raise ConfigError(f"{where}: a value is required")
    for option in options:
        if option == "Any":
            return
        wanted = _TYPES.get(option)
        # YAML's true/false are ints to Python; only a bool field takes them.
        if wanted is not None and isinstance(value, wanted) and (option == "bool" or not isinstance(value, bool)):
            return
    raise ConfigError(f"{where}: expected {type_text.replace(' | None', '')}, got {value!r}")


def _check_settings(data: Any, known: dict[str, Any], where: str) -> dict[str, Any]:
    """Unknown keys (with a suggestion) and wrong types fail here, named by their path."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {data!r}")
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise ConfigError(f"{path}: unknown setting{hint}")
        if not (where == "" and key in (*SECTIONS, "generator", "rm")):
            _check_value(value, str(known[key].type), path)
    return dict(data)


def _section(cls: type, data: Any, where: str) -> Any:
    values = _check_settings(data, _fields(cls), where)
    if cls is ExperimentConfig:
        values.update({k: _section(SECTIONS[k], v, k) for k, v in values.items() if k in SECTIONS})
        values["generator"] = _check_settings(values.get("generator"), generator_fields(), "generator")
        values["rm"] = _check_settings(values.get("rm"), rm_fields(), "rm")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing {', '.join(repr(m) for m in missing)}")
    return cls(**values)


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        cfg = _section(ExperimentConfig, data, "")
        validate_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


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
    d = cfg.data
    if d.qa_feedback is None and (d.prompts is None or d.test is None):
        raise ConfigError("data: give qa_feedback: FOLDER, or prompts: FILE and test: FILE (and real_train: FILE)")
    if d.qa_feedback is None and d.real_train is None and any(s != "syn" for s in cfg.settings):
        raise ConfigError("data.real_train: the real and real+syn settings need human training pairs")
    if cfg.mixture is not None and set(cfg.mixture) != {"real", "syn"}:
        raise ConfigError(f"mixture: give weights for exactly real and syn, got {sorted(cfg.mixture)}")
    for variant in cfg.method_options:
        if variant not in [v.name for v in variants(cfg)]:
            raise ConfigError(f"method_options.{variant}: not a variant of this experiment")
        bad = set(cfg.method_options[variant]) - {f.name for f in dataclasses.fields(GenerateConfig)}
        if bad:
            raise ConfigError(f"method_options.{variant}: unknown generate setting {sorted(bad)[0]!r}")


# ---------------------------------------------------------------------------------------------
# The grid


@dataclass(frozen=True)
class Variant:
    name: str  # folder name and table row: "rmboost", "rmboost-no-aspect", ...
    method: str
    ablation: str | None = None


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


def cell_dir(variant: str, setting: str, seed: int) -> str:
    return f"rm/{variant}__{setting.replace('+', '-')}__s{seed}"


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "absent"


# ---------------------------------------------------------------------------------------------
# Stage 1: data


def prepare_data(cfg: ExperimentConfig, run: Path) -> dict[str, Path]:
    """Write data/prompts.jsonl, real_train.jsonl and test.jsonl; deterministic, so always rewritten.

    With QA-Feedback, pairs are split by question and prompts come from training questions only:
    no test question is ever generated for or trained on.
    """
    d = cfg.data
    out = run / "data"
    out.mkdir(parents=True, exist_ok=True)
    if d.qa_feedback is not None:
        human = qa_feedback.load_human_pairs(d.qa_feedback)
        train, test = qa_feedback.split_by_question(human, d.test_fraction, d.split_seed)
        train_groups = {p["group"] for p in train}
        prompts = [r for r in qa_feedback.load_prompts(d.qa_feedback) if r["id"] in train_groups]
        (out / "NOTICE.md").write_text(
            "Derived from QA-Feedback (Wu et al. 2023; allenai/FineGrainedRLHF), Apache License 2.0.\n"
            f"Split by question: test_fraction={d.test_fraction}, split_seed={d.split_seed}.\n", "utf-8")
    else:
        assert d.prompts is not None and d.test is not None
        spec = GenerateConfig(task=cfg.task, input=d.prompts, output=out / "unused", fields=dict(d.fields))
        prompts = [_public(r) for r in load_prompt_rows(spec)]  # ids assigned, columns mapped
        train = [_public(r) for r in read_rows(d.real_train)] if d.real_train else []
        test = [_public(r) for r in read_rows(d.test)]
    if d.prompts_limit is not None:
        prompts = prompts[: d.prompts_limit]
    if d.real_limit is not None and d.real_limit < len(train):
        keep = set(random.Random(d.split_seed).sample(range(len(train)), d.real_limit))
        train = [p for i, p in enumerate(train) if i in keep]
    if d.test_limit is not None:
        test = test[: d.test_limit]
    if not test:
        raise ConfigError("data: the test split is empty")
    paths = {"prompts": out / "prompts.jsonl", "real": out / "real_train.jsonl", "test": out / "test.jsonl"}
    for key, rows in (("prompts", prompts), ("real", train), ("test", test)):
        _write_if_changed(paths[key], rows)
    return paths


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _write_if_changed(path: Path, rows: list[dict[str, Any]]) -> None:
    """Keep the file (and its mtime) when the rows are the same, so nothing downstream looks stale."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.exists() or path.read_text("utf-8") != text:
        atomic_write_jsonl(path, rows)


# ---------------------------------------------------------------------------------------------
# Stage 2: generation


def generator_backend(cfg: ExperimentConfig) -> BackendOptions:
    return BackendOptions(**{k: v for k, v in cfg.generator.items() if k not in GENERATOR_SAMPLING})


def generate_config(cfg: ExperimentConfig, variant: Variant, prompts: Path, run: Path) -> GenerateConfig:
    gen = cfg.generation
    backend = generator_backend(cfg)
    sampling = {k: v for k, v in cfg.generator.items() if k in GENERATOR_SAMPLING}
    j = cfg.judge
    judge_backend = None
    if j.backend is not None:
        judge_backend = replace(backend, backend=j.backend, model=j.model, base_url=j.base_url,
                                api_key_env=j.api_key_env or backend.api_key_env)
    gcfg = GenerateConfig(
        task=cfg.task, input=str(prompts), output=run / "gen" / variant.name / "pairs.jsonl",
        method=variant.method, input_format="rows", seed=gen.seed,
        backend=backend, cache=Path(cfg.cache) if cfg.cache else None,
        aspect_mode=gen.aspect_mode, aspects_k=gen.aspects_k, max_attempts=gen.max_attempts,
        prefill=gen.prefill, n=gen.n, scorer=gen.scorer,
        judge=JudgeOptions(backend=judge_backend, mode=j.mode, temperature=j.temperature,
                           max_tokens=j.max_tokens, margin=j.margin),
        filter=variant.method == "rmboost" and gen.quality_check,
        show_progress=False, **sampling,
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
    skip = {"output", "input", "limit", "concurrency", "show_progress", "cache", "use_cache", "price_in", "price_out"}
    ident = {k: v for k, v in asdict(gcfg).items() if k not in skip}
    for options in (ident["backend"], ident["judge"].get("backend") or {}):
        for detail in ("timeout", "max_retries", "requests_per_minute", "tokens_per_minute", "threads"):
            options.pop(detail, None)  # how requests are made, not what they answer
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
        changed = sorted(k for k in set(before) | set(ident) if before.get(k) != ident.get(k))
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
            replay = replace(gcfg, output=Path(scratch) / "pairs.jsonl")
            judge_opts = gcfg.judge.backend or gcfg.backend
            full = await run_generate(
                replay, console, backend=CacheOnly(backend or make_backend(gcfg.backend)),
                judge_backend=CacheOnly(judge_backend or make_backend(judge_opts)),
            )
        # The variant's summary then describes the whole job, as an uninterrupted run's would.
        record_summary = {**asdict(full), "output": summary.output, "failures_file": summary.failures_file,
                          "replayed_from_cache": True}
        sidecar(Path(gcfg.output), "summary").write_text(json.dumps(record_summary, indent=2) + "\n", "utf-8")
    usage = {"generator": _tokens(full.usage), "judge": _tokens(full.judge_usage)}
    filtered = _count_rows(sidecar(Path(gcfg.output), "filtered"))
    failures = _count_rows(sidecar(Path(gcfg.output), "failures"))
    pairs = summary.pairs_total
    record = {
        "prompts": summary.prompts,
        "pairs": pairs,
        "failures": failures,
        "filtered": filtered,
        "filter_rate": round(filtered / (pairs + filtered), 4) if gcfg.filter and pairs + filtered else None,
        "tokens_in": usage["generator"]["in"],
        "tokens_out": usage["generator"]["out"],
        "judge_tokens_in": usage["judge"]["in"],
        "judge_tokens_out": usage["judge"]["out"],
        "tokens_per_pair": round(sum(u["in"] + u["out"] for u in usage.values()) / pairs, 1) if pairs else None,
        "cost_usd": (estimate_cost([full.usage, full.judge_usage], gcfg.price_in, gcfg.price_out) or {}).get("total"),
        "calls_this_run": summary.llm_calls,
        "cache_hits_this_run": summary.cache_hits,
        "wall_seconds": summary.wall_seconds,
        "model": summary.model,
    }
    (folder / "accounting.json").write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    return record


class CacheOnly:
    """A backend that answers nothing: a replay through it can only read the cache, never pay."""

    def __init__(self, inner: Backend):
        self.inner, self.name, self.model = inner, inner.name, inner.model

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()  # the same cache keys as the real backend

    async def check(self) -> None:
        return None

    async def complete(self, messages: Any, params: Any) -> Any:
        raise LLMError("not_cached: this replay reads the cache only")

    async def aclose(self) -> None:
        return None


def _tokens(usage: dict[str, Any]) -> dict[str, int]:
    steps = usage.values()
    return {
        "in": sum(s["tokens_in"] + s["cached_tokens_in"] for s in steps),
        "out": sum(s["tokens_out"] + s["cached_tokens_out"] for s in steps),
    }


# ---------------------------------------------------------------------------------------------
# Stage 3: beta (paper Eq. 12)


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
    out = pairs_path.parent / "beta.jsonl"
    done = {r["id"] for r in read_jsonl_tolerant(out)[0]} if out.exists() else set()
    pairs = read_jsonl_tolerant(pairs_path)[0] if pairs_path.exists() else []
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


# ---------------------------------------------------------------------------------------------
# Stage 4: reward models


def rm_config(cfg: ExperimentConfig, specs: list[str], output: Path, seed: int) -> Any:
    """train-rm's config for one cell: the experiment's rm settings over train-rm's defaults."""
    from rmboost.rm.train import TrainRMConfig

    settings = {"show_progress": False, "logging_steps": 10_000, **cfg.rm}
    settings.pop("keep_models", None)
    return TrainRMConfig(train=specs, output=output, seed=seed, **settings)


def rm_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The effective reward-model settings (defaults included), for results.json and fingerprints."""
    full = asdict(rm_config(cfg, [], Path("."), 0))
    return json.loads(json.dumps({k: v for k, v in full.items() if k not in RM_PER_CELL}, default=str))


def train_specs(cfg: ExperimentConfig, variant: str, setting: str, real: Path, run: Path) -> list[str]:
    syn = run / "gen" / variant / "pairs.jsonl"
    if setting == REAL:
        return [str(real)]
    if setting == "syn":
        return [str(syn)]
    if cfg.mixture:
        return [f"{real}:{cfg.mixture['real']}", f"{syn}:{cfg.mixture['syn']}"]
    return [str(real), str(syn)]


def _count_rows(path: Path) -> int:
    return len(read_jsonl_tolerant(path)[0]) if path.exists() else 0


def run_cell(
    cfg: ExperimentConfig, variant: str, setting: str, seed: int, paths: dict[str, Path], run: Path
) -> dict[str, Any]:
    """Train and evaluate one reward model unless an identical one is already evaluated."""
    from rmboost.rm.data import parse_train_spec, read_pairs
    from rmboost.rm.evaluate import evaluate_scores
    from rmboost.rm.score import RewardScorer
    from rmboost.rm.train import train_rm

    rel = cell_dir(variant, setting, seed)
    folder = run / rel
    specs = train_specs(cfg, variant, setting, paths["real"], run)
    files = [parse_train_spec(s)[0] for s in specs]
    base = {"variant": variant, "setting": setting, "seed": seed}
    counts = {f: _count_rows(f) for f in files}
    train_pairs = sum(counts.values())
    if empty := next((f for f, n in counts.items() if n == 0), None):
        return {**base, "status": "no_data", "accuracy": None, "ci": None, "train_pairs": train_pairs,
                "eval_file": None, "error": f"no pairs in {empty.relative_to(run) if empty.is_relative_to(run) else empty}"}
    ident = {"rm": rm_settings(cfg), "specs": [s.replace(str(run), "RUN") for s in specs], "seed": seed,
             "data": [file_digest(f) for f in files], "test": file_digest(paths["test"])}
    stamp = folder / "stage.json"
    eval_file = folder / "eval.json"
    if stamp.exists() and eval_file.exists() and json.loads(stamp.read_text("utf-8")).get("fingerprint") == fingerprint(ident):
        metrics = json.loads(eval_file.read_text("utf-8"))
    else:
        if folder.exists():
            shutil.rmtree(folder)
        tcfg = rm_config(cfg, specs, folder / "model", seed)
        summary = train_rm(tcfg)
        device = None if tcfg.device == "auto" else tcfg.device
        scorer = RewardScorer(folder / "model", device=device, batch_size=32)
        pairs = read_pairs(paths["test"], scorer.prompt_field)
        chosen, rejected = scorer.score_pairs(pairs)
        metrics = evaluate_scores(pairs, chosen, rejected, resamples=2000, seed=0)
        metrics.pop("groups", None)
        metrics["rewards"] = {"chosen": [round(float(c), 5) for c in chosen],
                              "rejected": [round(float(x), 5) for x in rejected]}
        metrics["train"] = {k: summary.get(k) for k in ("pairs", "mixture", "steps", "train_loss", "train_seconds")}
        metrics["train_pairs"] = train_pairs
        del scorer
        if not cfg.rm.get("keep_models", False):
            shutil.rmtree(folder / "model", ignore_errors=True)
        eval_file.write_text(json.dumps(metrics, indent=1) + "\n", "utf-8")
        stamp.write_text(json.dumps({"fingerprint": fingerprint(ident), "config": ident}, indent=2) + "\n", "utf-8")
    return {**base, "status": "ok", "accuracy": metrics["accuracy"], "ci": metrics["ci95"],
            "train_pairs": metrics.get("train_pairs", train_pairs), "eval_file": str(eval_file.relative_to(run))}


# ---------------------------------------------------------------------------------------------
# Results


def summarize_table(cells_done: list[dict[str, Any]], run: Path, test: Path) -> list[dict[str, Any]]:
    """One row per (variant, setting): mean over seeds, per-seed numbers, and a 95% interval.

    The interval resamples test questions (pairs when ungrouped) of the per-pair outcome averaged
    over the seeds, so it reflects the test set's size, not only the seeds' spread.
    """
    import numpy as np

    from rmboost.rm.data import read_pairs
    from rmboost.rm.evaluate import bootstrap_ci, outcomes, resampling_units

    pairs = read_pairs(test, "none")
    unit, n_units, _ = resampling_units(pairs)
    table = []
    keys = list(dict.fromkeys((c["variant"], c["setting"]) for c in cells_done))
    for variant, setting in keys:
        group = [c for c in cells_done if c["variant"] == variant and c["setting"] == setting]
        ok = [c for c in group if c["status"] == "ok"]
        row: dict[str, Any] = {"variant": variant, "setting": setting, "seeds_ok": len(ok),
                               "per_seed": {str(c["seed"]): c["accuracy"] for c in ok}}
        if ok:
            per_pair = []
            for c in ok:
                r = json.loads((run / c["eval_file"]).read_text("utf-8"))["rewards"]
                per_pair.append(outcomes(r["chosen"], r["rejected"]))
            mean_outcome = np.mean(per_pair, axis=0)
            row["mean"] = float(np.mean([c["accuracy"] for c in ok]))
            row["std"] = float(np.std([c["accuracy"] for c in ok], ddof=1)) if len(ok) > 1 else None
            row["ci"] = list(bootstrap_ci(mean_outcome, unit, n_units))
        else:
            row.update(mean=None, std=None, ci=None,
                       status=next((c["status"] for c in group if c["status"] != "pending"), "pending"))
        table.append(row)
    return table


def format_table(results: dict[str, Any]) -> str:
    """Table 2 as text: variants down, settings across, mean accuracy [95% CI] (per-seed)."""
    settings = [s for s in results["settings"] if s != REAL]
    rows = {(r["variant"], r["setting"]): r for r in results["table"]}

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        if r.get("mean") is None:
            return r.get("status", "pending")
        seeds = "/".join(f"{v * 100:.1f}" for v in r["per_seed"].values())
        return f"{r['mean'] * 100:.1f} [{r['ci'][0] * 100:.1f}, {r['ci'][1] * 100:.1f}] ({seeds})"

    header = ["variant", *settings] if settings else ["variant", REAL]
    lines = [header]
    if REAL in results["settings"]:
        lines.append(["real only", *([cell(rows.get((REAL, REAL)))] + ["-"] * (len(settings) - 1) if settings else [cell(rows.get((REAL, REAL)))])])
    for v in results["variants"]:
        lines.append([v["name"], *(cell(rows.get((v["name"], s))) for s in settings)])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    base = results.get("baselines", {})
    if lw := base.get("longer_wins"):
        text.append(f"baselines: longer-wins {lw['accuracy'] * 100:.1f} "
                    f"[{lw['ci'][0] * 100:.1f}, {lw['ci'][1] * 100:.1f}], coin 50.0; "
                    f"test: {results['test']['pairs']} pairs, {results['test']['groups']} questions")
    if "comparisons" in results:
        text.append(format_comparisons(results))
    return "\n".join(text)


def _test_info(test: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from rmboost.rm.data import read_pairs
    from rmboost.rm.evaluate import bootstrap_ci, longer_wins, resampling_units

    pairs = read_pairs(test, "none")
    unit, n_units, _ = resampling_units(pairs)
    lw = longer_wins(pairs)
    info = {"path": "data/test.jsonl", "pairs": len(pairs), "groups": len({p.group for p in pairs})}
    baselines = {"longer_wins": {"accuracy": float(lw.mean()), "ci": list(bootstrap_ci(lw, unit, n_units))},
                 "coin": {"accuracy": 0.5}}
    return info, baselines


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclass
class RunLog:
    """One JSON line per finished stage and invocation: what it did and how many calls it made."""

    path: Path
    console: Console
    invocation: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    def event(self, stage: str, message: str, **data: Any) -> None:
        self.console.print(f"[bold]{stage}[/bold] {message}", highlight=False)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"invocation": self.invocation, "time": time.time(), "stage": stage, **data}) + "\n")


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
    run = Path(out or cfg.output or Path("runs") / cfg.name)
    run.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_path, run / "config.yaml")
    log = RunLog(run / "log.jsonl", console)
    task = load_task(cfg.task)
    paths = prepare_data(cfg, run)
    test_info, baselines = _test_info(paths["test"])
    log.event("data", f"{_count_rows(paths['prompts'])} prompts, {_count_rows(paths['real'])} real training pairs, "
                      f"{test_info['pairs']} test pairs ({test_info['groups']} groups) in {run / 'data'}")
    vs = variants(cfg)
    grid = cells(cfg)
    generator = generator_backend(cfg)
    results: dict[str, Any] = {
        "name": cfg.name, "task": task.name, "command": command or f"rmboost experiment {config_path}",
        "created": _created(run), "updated": None,
        "generator": {"backend": generator.backend, "model": None},
        "judge": {"backend": cfg.judge.backend or generator.backend,
                  "model": cfg.judge.model if cfg.judge.backend else generator.model, "mode": cfg.judge.mode},
        "rm": rm_settings(cfg), "mixture": cfg.mixture, "test": test_info, "baselines": baselines,
        "data": {"prompts": _count_rows(paths["prompts"]), "real_train": _count_rows(paths["real"])},
        "variants": [{"name": v.name, "method": v.method, "ablation": v.ablation,
                      "pairs_file": f"gen/{v.name}/pairs.jsonl"} for v in vs],
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
        tmp = run / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
        tmp.replace(run / "results.json")

    save()
    needs_syn = any(s != REAL for s in cfg.settings)
    for i, v in enumerate(vs if needs_syn else [], 1):
        gcfg = generate_config(cfg, v, paths["prompts"], run)
        record = await generate_variant(gcfg, console, backend, judge_backend)
        results["generation"][v.name] = record
        results["generator"]["model"] = record["model"]
        if cfg.judge.backend is None:
            results["judge"]["model"] = record["model"]
        log.event(f"generate {i}/{len(vs)}", f"{v.name}: {record['pairs']} pairs, {record['failures']} failures, "
                  f"{record['filtered']} filtered; {record['calls_this_run']} calls made, "
                  f"{record['cache_hits_this_run']} from cache", variant=v.name, calls=record["calls_this_run"],
                  cache_hits=record["cache_hits_this_run"], pairs=record["pairs"])
        save()
        if cfg.analysis.beta and (v.method == "rlcd" or v.method == "rmboost"):
            await _beta_stage(gcfg, v, cfg, backend, log)
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
    log.event("done", f"results: {run / 'results.json'}")
    return results


async def _beta_stage(gcfg: GenerateConfig, v: Variant, cfg: ExperimentConfig, backend: Backend | None, log: RunLog) -> None:
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


def _analyse_and_report(run: Path, log: RunLog, command: str) -> None:
    from rmboost.analysis import analyze_run, write_report

    analyze_run(run)  # writes analysis.json and the figures
    log.event("report", str(write_report(run, command=command)))


def _created(run: Path) -> str:
    existing = run / "results.json"
    if existing.exists():
        try:
            return json.loads(existing.read_text("utf-8"))["created"]
        except (json.JSONDecodeError, KeyError):
            pass
    return time.strftime("%Y-%m-%dT%H:%M:%S")
