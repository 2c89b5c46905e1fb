"""One declaration per option: the command line and the experiment file come from config dataclasses.

rmboost.options and rmboost.options_cli themselves (flags, groups, checks, YAML checks), then the
real commands against their configs (a flag's default is the field's default), then the two bugs
the copies had caused: a judge model given without a backend, and West-of-N's pool size.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from conftest import ScriptedBackend, run
from typer.testing import CliRunner

from rmboost import options, options_cli
from rmboost.backends import BackendOptions
from rmboost.cli import app
from rmboost.options import OptionError, group, option

runner = CliRunner()


@dataclass
class Inner:
    mode: str = option("a", choices=("a", "b"), help="Inner mode.")
    level: int = option(1, check=options.at_least(0), help="Inner level.")


@dataclass
class Outer:
    path: Path = option(argument=True, help="A path.")
    name: str = option("x", flags=("--name", "-n"), help="The name.")
    shard: tuple[int, int] | None = option(None, cli_type=str | None, parse=lambda t: tuple(map(int, t.split("/"))))
    plain: Inner = group(Inner)
    other: Inner = group(Inner, prefix="other_", defaults={"mode": "b"}, help={"mode": "Other mode."})


def _app(cls: type, seen: list[Any]) -> typer.Typer:
    """A one-command app whose command records the config it was given."""
    toy = typer.Typer()
    toy.command()(options_cli.command(cls)(seen.append))
    toy.command("unused")(lambda: None)  # two commands, so the first is named on the command line
    return toy


def _built(cls: type, *args: str) -> Any:
    seen: list[Any] = []
    result = runner.invoke(_app(cls, seen), ["append", *args])
    assert result.exit_code == 0, result.output
    return seen[0]


# ---------------------------------------------------------------------------------------------
# rmboost.options and rmboost.options_cli


def test_flags_groups_and_parsing_build_the_config():
    cfg = _built(Outer, "p.txt", "-n", "y", "--shard", "2/4", "--mode", "b", "--other-level", "5")
    assert cfg == Outer(path=Path("p.txt"), name="y", shard=(2, 4), plain=Inner(mode="b"),
                        other=Inner(mode="b", level=5))
    assert _built(Outer, "p.txt") == Outer(path=Path("p.txt"))  # every default is the dataclass's
    assert Outer(path=Path("p")).other.mode == "b"  # a group's own default applies outside the CLI too


@dataclass
class Urls:
    url: str | list[str] | None = option(None, help="One or several URLs.")
    tags: list[str] = option(default_factory=list, help="Tags.")


def test_a_list_field_is_a_repeatable_flag_and_one_value_stays_single():
    assert _built(Urls) == Urls()
    assert _built(Urls, "--url", "a") == Urls(url="a")  # given once: the single value, as in YAML
    assert _built(Urls, "--url", "a", "--url", "b", "--tags", "x") == Urls(url=["a", "b"], tags=["x"])
    assert options.load(Urls, {"url": "a"}, "s") == Urls(url="a")
    assert options.load(Urls, {"url": ["a", "b"]}, "s") == Urls(url=["a", "b"])
    with pytest.raises(OptionError, match=r"s.url: expected str \| list\[str\], got \['a', 3\]"):
        options.load(Urls, {"url": ["a", 3]}, "s")


def test_generate_takes_base_url_once_or_per_replica(tmp_path, monkeypatch):
    import rmboost.generate as generate_module

    seen: list[Any] = []

    async def fake_run(cfg: Any, console: Any) -> Any:
        seen.append(cfg.backend)
        raise ValueError("stop here")

    monkeypatch.setattr(generate_module, "run_generate", fake_run)
    base = ["generate", "-o", str(tmp_path / "o.jsonl"), "--backend", "openai", "--model", "m"]
    runner.invoke(app, [*base, "--base-url", "http://a/v1"])
    runner.invoke(app, [*base, "--base-url", "http://a/v1", "--base-url", "http://b/v1", "--cache-identity", "dep",
                        "--breaker-failures", "7", "--breaker-seconds", "0"])
    assert seen[0].base_url == "http://a/v1" and seen[0].breaker_failures == 50
    assert (seen[1].base_url, seen[1].cache_identity, seen[1].breaker_failures, seen[1].breaker_seconds) == (
        ["http://a/v1", "http://b/v1"], "dep", 7, 0.0)
    bad = runner.invoke(app, [*base, "--base-url", "http://a/v1", "--base-url", "node2:8000/v1"])
    assert bad.exit_code == 2 and "--base-url must be an http:// or https:// URL, got 'node2:8000/v1'" in bad.output
    negative = runner.invoke(app, [*base, "--base-url", "http://a/v1", "--breaker-failures", "-1"])
    assert negative.exit_code == 2 and "--breaker-failures must be >= 0" in negative.output
    assert len(seen) == 2


def test_the_judge_takes_replicas_too(tmp_path, monkeypatch):
    import rmboost.generate as generate_module

    seen: list[Any] = []

    async def fake_run(cfg: Any, console: Any) -> Any:
        seen.append(cfg.judge.connection(cfg.backend))
        raise ValueError("stop here")

    monkeypatch.setattr(generate_module, "run_generate", fake_run)
    base = ["generate", "-o", str(tmp_path / "o.jsonl"), "--backend", "openai", "--model", "m",
            "--base-url", "http://gen/v1", "--judge-model", "j"]
    runner.invoke(app, [*base, "--judge-base-url", "http://j1/v1", "--judge-base-url", "http://j2/v1"])
    runner.invoke(app, [*base, "--judge-base-url", "http://j1/v1"])
    assert [(c.model, c.base_url) for c in seen] == [("j", ["http://j1/v1", "http://j2/v1"]), ("j", "http://j1/v1")]
    bad = runner.invoke(app, [*base, "--judge-base-url", "http://j1/v1", "--judge-base-url", "j2:80"])
    assert bad.exit_code == 2 and "--judge-base-url must be an http:// or https:// URL, got 'j2:80'" in bad.output

    from rmboost.methods.judge import JudgeOptions
    from rmboost.options import load

    judge = load(JudgeOptions, {"model": "j", "base_url": ["http://j1/v1", "http://j2/v1"]}, "judge")
    assert judge.connection(BackendOptions(backend="openai")).base_url == ["http://j1/v1", "http://j2/v1"]


def test_help_shows_per_command_help_and_defaults():
    result = runner.invoke(_app(Outer, []), ["append", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Inner mode." in result.output and "Other mode." in result.output
    assert "--other-mode" in result.output and "--other-level" in result.output and "--name" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "c"], "--mode: unknown mode 'c' (use a or b)"),
        (["--other-level", "-1"], "--other-level must be >= 0"),
        (["--shard", "x"], "invalid literal for int()"),
    ],
)
def test_bad_flag_values_are_one_line_naming_the_flag(args, message):
    result = runner.invoke(_app(Outer, []), ["append", "p", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_yaml_checks_name_the_key_path():
    with pytest.raises(OptionError, match=r"sec\.plain\.mdoe: unknown setting \(did you mean 'mode'\?\)"):
        options.load(Outer, {"path": "p", "plain": {"mdoe": "a"}}, "sec")
    with pytest.raises(OptionError, match=r"sec\.other\.level: expected int, got 'two'"):
        options.load(Outer, {"path": "p", "other": {"level": "two"}}, "sec")
    with pytest.raises(OptionError, match=r"sec\.other\.mode: unknown mode 'c' \(use a or b\)"):
        options.load(Outer, {"path": "p", "other": {"mode": "c"}}, "sec")
    with pytest.raises(OptionError, match=r"sec: missing 'path'"):
        options.load(Outer, {}, "sec")
    cfg = options.load(Outer, {"path": "p", "other": {"level": 3}}, "sec")
    assert cfg.other == Inner(mode="b", level=3) and cfg.plain == Inner()


def test_validate_checks_a_config_built_in_code():
    from rmboost.generate import GenerateConfig, run_generate
    from rmboost.methods.judge import JudgeOptions

    bad = GenerateConfig(output=Path("o.jsonl"), judge=JudgeOptions(mode="loud"))
    with pytest.raises(OptionError, match=r"judge\.mode: unknown judge mode 'loud' \(use text or logprobs\)"):
        options.validate(bad)
    with pytest.raises(OptionError, match=r"^method: unknown method 'dpo'"):
        run(run_generate(GenerateConfig(output=Path("o.jsonl"), method="dpo")))


# ---------------------------------------------------------------------------------------------
# The commands: a flag's default is its config field's default


def _configs() -> list[tuple[type, list[str], dict[str, Any]]]:
    from rmboost.align.dpo import DPOTrainConfig
    from rmboost.align.relabel import RelabelConfig
    from rmboost.align.sample import SampleConfig
    from rmboost.cli import FilterOptions
    from rmboost.generate import GenerateConfig
    from rmboost.power_cli import PowerOptions
    from rmboost.rm.cli import EvalRMOptions, QAFeedbackSplit, ScoreOptions
    from rmboost.rm.train import TrainRMConfig

    return [
        (GenerateConfig, ["-o", "o.jsonl"], {"output": Path("o.jsonl")}),
        (FilterOptions, ["p.jsonl", "-o", "o.jsonl"], {"pairs": Path("p.jsonl"), "output": Path("o.jsonl")}),
        (TrainRMConfig, ["-t", "a.jsonl", "-o", "m"], {"train": ["a.jsonl"], "output": Path("m")}),
        (EvalRMOptions, ["-m", "m", "--test", "t.jsonl"], {"model": [Path("m")], "test": Path("t.jsonl")}),
        (EvalRMOptions, ["-m", "a", "-m", "b", "--test", "t.jsonl"], {"model": [Path("a"), Path("b")], "test": Path("t.jsonl")}),
        (ScoreOptions, ["-m", "m", "-i", "i", "-o", "o"], {"model": Path("m"), "input": Path("i"), "output": Path("o")}),
        (QAFeedbackSplit, ["--out", "d"], {"out_dir": Path("d")}),
        (RelabelConfig, ["p.jsonl", "-o", "o.jsonl"], {"input": Path("p.jsonl"), "output": Path("o.jsonl")}),
        (DPOTrainConfig, ["-t", "p.jsonl", "-o", "m"], {"train": Path("p.jsonl"), "output": Path("m")}),
        (SampleConfig, ["-m", "m", "-i", "i", "-o", "o"], {"model": "m", "input": Path("i"), "output": Path("o")}),
        (PowerOptions, [], {}),
    ]


@pytest.mark.parametrize(("cls", "args", "required"), _configs(), ids=lambda x: getattr(x, "__name__", ""))
def test_command_defaults_are_the_config_defaults(cls, args, required):
    assert _built(cls, *args) == cls(**required)


def test_judge_defaults_per_command_are_explicit():
    from rmboost.align.relabel import RelabelConfig
    from rmboost.cli import FilterOptions
    from rmboost.generate import GenerateConfig

    assert GenerateConfig(output=Path("o")).judge.mode == "text"
    assert FilterOptions(pairs=Path("p"), output=Path("o")).judge.mode == "text"
    # relabel rates single responses: log-probabilities by default, declared on its judge group
    relabel = RelabelConfig(input=Path("p"), output=Path("o")).judge
    assert relabel.mode == "logprobs" and relabel.connection() == BackendOptions()


def test_real_commands_reject_bad_values_by_flag(tmp_path):
    cases = [
        (["relabel", "p.jsonl", "-o", "o.jsonl", "--judge-mode", "loud"], "--judge-mode: unknown judge mode 'loud'"),
        (["data", "qa-feedback", "--out", str(tmp_path), "--test-fraction", "1.5"],
         "--test-fraction must be in [0, 1), got 1.5"),
        (["report", str(tmp_path), "--max-pairs", "-1"], "--max-pairs must be >= 0"),
        (["generate", "-o", "o.jsonl", "--backend", "vllm"], "--backend: unknown backend 'vllm' (use llamacpp or openai)"),
        (["generate", "-o", "o.jsonl", "--scorer", "best"], "--scorer 'best': use judge or rm:PATH"),
        (["relabel", "p.jsonl", "-o", "o.jsonl", "--chosen-fine-grained", "a"],
         "give both --chosen-fine-grained and --rejected-fine-grained, or neither"),
        # Zero or fewer requests in flight would start a job that never sends one.
        (["generate", "-o", "o.jsonl", "--concurrency", "0"], "--concurrency must be >= 1"),
        (["filter", "p.jsonl", "-o", "o.jsonl", "--concurrency", "-1"], "--concurrency must be >= 1"),
        (["relabel", "p.jsonl", "-o", "o.jsonl", "--concurrency", "0"], "--concurrency must be >= 1"),
        # round(x, -1) rounds to tens: a 1-10 score would become 0 or 10.
        (["relabel", "p.jsonl", "-o", "o.jsonl", "--score-digits", "-1"], "--score-digits must be >= 0"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert not (tmp_path / "train.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# The judge's connection: one rule for the command line and the experiment


def test_judge_connection_fields_override_the_generators():
    from rmboost.methods.judge import JudgeOptions

    gen = BackendOptions(backend="openai", model="big", base_url="http://h/v1", api_key_env="K", timeout=5.0)
    assert JudgeOptions().connection(gen) == gen
    assert JudgeOptions(model="small").connection(gen) == BackendOptions(
        backend="openai", model="small", base_url="http://h/v1", api_key_env="K", timeout=5.0)
    local = JudgeOptions(backend="llamacpp").connection(gen)  # another kind: not the generator's model or URL
    assert (local.backend, local.model, local.base_url, local.timeout) == ("llamacpp", None, None, 5.0)


def test_the_generators_deployment_name_stays_with_the_generators_endpoint():
    from rmboost.methods.judge import JudgeOptions

    gen = BackendOptions(backend="openai", model="big", base_url=["http://a/v1", "http://b/v1"],
                         cache_identity="big-2024", breaker_failures=9)
    same_servers = JudgeOptions(model="big", mode="logprobs").connection(gen)
    assert (same_servers.base_url, same_servers.cache_identity) == (gen.base_url, "big-2024")
    own = JudgeOptions(base_url="http://judge/v1").connection(gen)
    assert (own.base_url, own.cache_identity, own.breaker_failures) == ("http://judge/v1", None, 9)
    assert JudgeOptions(backend="llamacpp").connection(gen).cache_identity is None


def test_experiment_generator_takes_one_url_or_replicas(tmp_path):
    from rmboost.experiment.config import ConfigError
    from rmboost.experiment.generation import generator_backend

    one = _experiment(tmp_path, generator={"backend": "openai", "model": "m", "base_url": "http://a/v1"})
    assert generator_backend(one).base_url == "http://a/v1"
    many = _experiment(tmp_path, generator={"backend": "openai", "model": "m", "cache_identity": "d",
                                            "base_url": ["http://a/v1", "http://b/v1"]})
    assert (generator_backend(many).base_url, generator_backend(many).cache_identity) == (
        ["http://a/v1", "http://b/v1"], "d")
    with pytest.raises(ConfigError, match=r"generator\.base_url must be an http:// or https:// URL, got 'a:1'"):
        _experiment(tmp_path, generator={"backend": "openai", "model": "m", "base_url": ["http://a/v1", "a:1"]})


def _experiment(tmp_path: Path, **sections: Any) -> Any:
    from rmboost.experiment import load_config

    base: dict[str, Any] = {"name": "t", "task": "qa_feedback",
                            "data": {"prompts": "p.jsonl", "test": "t.jsonl", "real_train": "r.jsonl"}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**base, **sections}), "utf-8")
    return load_config(path)


def test_experiment_judge_model_without_backend_is_used(tmp_path, monkeypatch):
    """Was: `judge: {model: X}` without `backend` silently judged with the generator's model."""
    import rmboost.methods.judge as judge_module
    from rmboost.experiment import Variant, generate_config
    from rmboost.generate import run_generate

    cfg = _experiment(tmp_path, generator={"backend": "openai", "model": "gen-7b", "base_url": "http://h/v1"},
                      judge={"model": "judge-70b"}, methods=["rlaif"])
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "question": "Q?", "passages": "P."}\n', "utf-8")
    gcfg = generate_config(cfg, Variant("rlaif", "rlaif"), prompts, tmp_path)
    built: list[BackendOptions] = []

    def fake_make_backend(opts: BackendOptions, concurrency: int | None = None) -> ScriptedBackend:
        built.append(opts)
        return ScriptedBackend(lambda m, p: "<decision>first</decision>", model=opts.model or "")

    monkeypatch.setattr(judge_module, "make_backend", fake_make_backend)
    generator = ScriptedBackend(lambda m, p: f"<response>answer {p.seed}</response>", model="gen-7b")
    run(run_generate(gcfg, backend=generator))  # the judge's backend is built from the options
    assert [(b.backend, b.model, b.base_url) for b in built] == [("openai", "judge-70b", "http://h/v1")]


def test_experiment_stage_records_the_judge_model(tmp_path):
    """stage.json keeps its shape: the judge's own backend, or None when it is the generator's."""
    import json

    from rich.console import Console

    from rmboost.experiment import Variant, generate_config, generate_variant

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "question": "Q?", "passages": "P."}\n', "utf-8")
    stages = {}
    for name, judge in (("own", {"model": "j.gguf"}), ("shared", {})):
        run_dir = tmp_path / name
        gcfg = generate_config(_experiment(tmp_path, judge=judge), Variant("rlaif", "rlaif"), prompts, run_dir)
        generator = ScriptedBackend(lambda m, p: f"<response>answer {p.seed}</response>")
        judge_llm = ScriptedBackend(lambda m, p: "<decision>first</decision>")
        run(generate_variant(gcfg, Console(quiet=True), generator, judge_llm))
        stages[name] = json.loads((Path(gcfg.output).parent / "stage.json").read_text("utf-8"))["generate"]["judge"]
    assert stages["own"]["backend"]["model"] == "j.gguf" and stages["own"]["backend"]["backend"] == "llamacpp"
    assert stages["shared"]["backend"] is None
    assert list(stages["shared"]) == ["backend", "mode", "temperature", "max_tokens", "margin", "max_attempts", "prefill"]


def test_experiment_judge_mode_is_checked_when_loading(tmp_path):
    from rmboost.experiment import ConfigError

    with pytest.raises(ConfigError, match=r"judge\.mode: unknown judge mode 'loud'"):
        _experiment(tmp_path, judge={"mode": "loud"})


# ---------------------------------------------------------------------------------------------
# West-of-N: one pool size, typed method settings


def test_west_of_n_pool_has_one_default(tmp_path):
    """Was: 8 on the command line, 4 in an experiment."""
    from rmboost.experiment import Variant, generate_config
    from rmboost.generate import GenerateConfig

    gcfg = generate_config(_experiment(tmp_path), Variant("west-of-n", "west-of-n"), tmp_path / "p.jsonl", tmp_path)
    cli = _built(GenerateConfig, "-o", "o.jsonl")
    assert gcfg.n == cli.n == GenerateConfig(output=Path("o")).n == 8
    assert generate_config(_experiment(tmp_path, generation={"n": 4}), Variant("west-of-n", "west-of-n"),
                           tmp_path / "p.jsonl", tmp_path).n == 4


def test_a_variant_is_refused_only_for_settings_that_shape_its_pairs(tmp_path):
    """The pool size is West-of-N's: changing it refuses a West-of-N folder, not an RMBoost one
    (nor a folder whose stage.json recorded it for RMBoost, as rmboost did before)."""
    import json

    from rich.console import Console

    from rmboost.experiment import ConfigError, Variant, generate_config, generate_variant

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "question": "Q?", "passages": "P."}\n', "utf-8")

    def generate(method: str, n: int) -> None:
        exp = _experiment(tmp_path, generation={"n": n}, judge={"model": "j.gguf"})
        gcfg = generate_config(exp, Variant(method, method), prompts, tmp_path / "run")
        answers = ScriptedBackend(lambda m, p: f"<response>answer {p.seed}</response><score>{p.seed % 9 + 1}</score>")
        judge = ScriptedBackend(lambda m, p: "<decision>first</decision><score>5</score>")
        run(generate_variant(gcfg, Console(quiet=True), answers, judge))

    generate("rlaif", 4)
    stage = tmp_path / "run" / "gen" / "rlaif" / "stage.json"
    assert "n" not in json.loads(stage.read_text("utf-8"))["generate"]
    generate("rlaif", 6)  # accepted: RLAIF draws no pool
    older = json.loads(stage.read_text("utf-8"))
    older["generate"]["n"] = 4  # what an older rmboost recorded for every method
    stage.write_text(json.dumps(older), "utf-8")
    generate("rlaif", 8)
    generate("west-of-n", 4)
    with pytest.raises(ConfigError, match=r"west-of-n was generated with other settings \(n\)"):
        generate("west-of-n", 6)


def test_west_of_n_draws_the_settings_pool():
    from rmboost.llm import LLM, SamplingParams
    from rmboost.methods.common import MethodContext, MethodSettings
    from rmboost.methods.west_of_n import west_of_n_pair
    from rmboost.tasks import load_task

    backend = ScriptedBackend(lambda m, p: f"<response>answer {p.seed}</response>")

    async def by_length(row: dict[str, Any], responses: list[str]) -> tuple[list[float], list[Any]]:
        return [float(len(r)) + i / 10 for i, r in enumerate(responses)], []

    ctx = MethodContext(llm=LLM(backend), task=load_task("qa_feedback"), params=SamplingParams(),
                        settings=MethodSettings(n=3), scorer=by_length)
    pair = run(west_of_n_pair(ctx, {"id": "a", "question": "Q?", "passages": "P."}))
    assert len(backend.calls) == 3 and pair["pool_size"] == 3


def test_every_method_rejects_a_second_answer_equal_to_the_first():
    from rmboost.llm import LLM, SamplingParams
    from rmboost.methods.common import MethodContext, StepFailed
    from rmboost.methods.rlcd import rlcd_pair
    from rmboost.methods.rmboost import rmboost_pair
    from rmboost.tasks import load_task

    for pair_fn, label in ((rmboost_pair, "better"), (rlcd_pair, None)):
        backend = ScriptedBackend(lambda m, p: "<response>Same  Answer</response>")
        ctx = MethodContext(llm=LLM(backend), task=load_task("qa_feedback"), params=SamplingParams(temperature=0.7),
                            max_attempts=2)
        with pytest.raises(StepFailed) as failed:
            run(pair_fn(ctx, {"id": "a", "question": "Q?", "passages": "P."}, label))
        assert (failed.value.step, failed.value.reason) == ("y2", "same_as_y1")
        assert len(failed.value.attempts) == 2  # resampled, then given up


def test_cli_start_imports_no_numpy_torch_or_transformers():
    # eval-rm's --format choices are declared without importing rm.rewardbench (and numpy with it).
    heavy = ("numpy", "torch", "transformers", "rmboost.rm.rewardbench")
    code = (
        "import sys, rmboost.cli\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
        "import rmboost.rm.rewardbench\n"  # the check sees an import when there is one
        "print('numpy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["[]", "True"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["power", "--accuracy", "abc"], "error: Invalid value for '--accuracy': "),
        (["power", "--acc", "60"], "error: No such option: --acc"),
        (["nope"], "error: No such command 'nope'."),
    ],
)
def test_the_command_line_reports_a_mistyped_flag_in_one_line(args, message):
    """The installed `rmboost` (cli.main): Click's usage errors were a box of several lines."""
    done = subprocess.run([sys.executable, "-m", "rmboost.cli", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--help')" in done.stderr


def test_the_command_line_keeps_help_and_exit_codes():
    help_ = subprocess.run([sys.executable, "-m", "rmboost.cli", "power", "--help"], capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "--accuracy" in help_.stdout
    bare = subprocess.run([sys.executable, "-m", "rmboost.cli", "data"], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and "qa-feedback" in bare.stdout + bare.stderr  # a group alone shows its help
    ok = subprocess.run([sys.executable, "-m", "rmboost.cli", "power", "--pairs", "100"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "smallest detectable difference" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "rmboost.cli", "power", "--accuracy", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --accuracy must be")
