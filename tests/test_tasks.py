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
