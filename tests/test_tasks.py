from pathlib import Path

import pytest

from rmboost.tasks import TaskError, builtin_task_names, load_task


def test_builtin_tasks_and_aspects():
    assert builtin_task_names() == ["qa_feedback", "tldr", "ultrafeedback"]
    assert [a.name for a in load_task("qa_feedback").aspects] == [
        "relevance_coherence", "factuality", "completeness"]
    assert [a.name for a in load_task("ultrafeedback").aspects] == [
        "honesty", "truthfulness", "helpfulness", "instruction_following", "verbalized_calibration"]
    assert [a.name for a in load_task("tldr").aspects] == ["coherence", "accuracy", "coverage"]


def test_render_prompt_and_missing_fields():
    task = load_task("qa_feedback")
    assert task.render_prompt({"question": "Q?", "passages": "P."}) == "Question: Q?\n\nPassages:\nP."
    assert task.missing_fields({"question": "Q?"}) == ["passages"]
    assert load_task("ultrafeedback").missing_fields({"instruction": "x"}) == []


USER_TASK = """
name: code_review
description: Review a code diff.
role: You are a senior engineer.
goal: You get a diff.
response_noun: review
inputs:
  - {name: diff, tag: diff}
prompt_template: "Review this diff:\\n{{ diff }}"
guideline: A good review finds real problems.
aspects:
  - {name: correctness, description: Finds the bugs.}
  - {name: tone, title: Tone, description: Is kind.}
"""


def test_user_task_yaml(tmp_path: Path):
    path = tmp_path / "review.yaml"
    path.write_text(USER_TASK)
    task = load_task(str(path))
    assert task.name == "code_review"
    assert task.response_noun == "review"
    assert task.aspect("correctness").title == "correctness"
    assert task.render_prompt({"diff": "+x"}) == "Review this diff:\n+x"


def test_bad_tasks_name_the_problem(tmp_path: Path):
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(TaskError, match="not found"):
        load_task(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrole: r\n")
    with pytest.raises(TaskError, match="missing key"):
        load_task(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text(USER_TASK.replace("{{ diff }}", "{{ diff "))
    with pytest.raises(TaskError, match="Jinja2"):
        load_task(str(broken))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # the newcomer's case: an unquoted comma in flow-mapping text makes a stray key `briefly.: null`
        ("{name: tone, title: Tone, description: Is kind.}", "{name: tone, title: Tone, description: Is kind, briefly.}",
         "aspects[1] (tone): unknown key 'briefly.' (known: name, title, description); a comma in unquoted text"),
        ("{name: correctness, description: Finds the bugs.}", "{name: correctness, descripton: Finds the bugs.}",
         "aspects[0] (correctness): unknown key 'descripton' (did you mean 'description'?)"),
        ("{name: diff, tag: diff}", "{name: diff, tag: diff, requird: false}",
         "inputs[0] (diff): unknown key 'requird' (did you mean 'required'?)"),
        ("response_noun: review", "response_nouns: review", "unknown key 'response_nouns' (did you mean 'response_noun'?)"),
    ],
)
def test_unknown_task_keys_are_errors_naming_file_and_key(tmp_path: Path, old: str, new: str, message: str):
    path = tmp_path / "review.yaml"
    assert old in USER_TASK
    path.write_text(USER_TASK.replace(old, new))
    with pytest.raises(TaskError) as err:
        load_task(str(path))
    assert f"task {path}: " in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_task_key_fails_the_cli_in_one_line(tmp_path: Path):
    from typer.testing import CliRunner

    from rmboost.cli import app

    path = tmp_path / "review.yaml"
    path.write_text(USER_TASK + "aspect_mode: all\n")
    res = CliRunner().invoke(app, ["tasks", str(path)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())  # the console wraps long lines
    assert "unknown key 'aspect_mode'" in text and "Traceback" not in text
