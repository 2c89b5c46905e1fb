from collections import Counter

import pytest

from rmboost.methods.common import derive_seed
from rmboost.methods.rmboost import assign_labels, match_aspects, sample_aspects
from rmboost.prompts import first_response_messages, format_value, rewrite_messages
from rmboost.tasks import load_task


@pytest.mark.parametrize("n", [1, 2, 7, 100, 101])
def test_labels_are_balanced_for_every_prefix(n):
    ids = [f"r{i}" for i in range(n)]
    labels = assign_labels(ids, seed=3)
    for k in range(1, n + 1):
        counts = Counter(labels[i] for i in ids[:k])
        assert abs(counts["better"] - counts["worse"]) <= 1


def test_labels_are_seeded_and_stable_under_limit():
    ids = [f"r{i}" for i in range(50)]
    assert assign_labels(ids, 1) == assign_labels(ids, 1)
    assert assign_labels(ids, 1) != assign_labels(ids, 2)
    short = assign_labels(ids[:20], 1)
    full = assign_labels(ids, 1)
    assert all(full[i] == short[i] for i in short)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "a", "y1", 0) == derive_seed(0, "a", "y1", 0)
    assert derive_seed(0, "a", "y1", 0) != derive_seed(0, "a", "y1", 1)
    assert 0 <= derive_seed("x") < 2**31


ROW = {
    "id": "q1",
    "question": "Who wrote Hamlet?",
    "passages": [["Hamlet", "Hamlet is a tragedy by William Shakespeare."]],
    "reference": "William Shakespeare wrote Hamlet.",
}


def test_first_response_prompt_structure():
    task = load_task("qa_feedback")
    [msg] = first_response_messages(task, ROW)
    text = msg["content"]
    assert msg["role"] == "user"
    for needle in ("<task_description>", "<guideline>", "<question>", "Who wrote Hamlet?",
                   "<passages>", "Hamlet: Hamlet is a tragedy", "<reference_answer>",
                   "<response>", "Completeness", "Factuality and faithfulness"):
        assert needle in text, needle


@pytest.mark.parametrize("label", ["better", "worse"])
def test_rewrite_prompt_names_label_and_y1(label):
    task = load_task("qa_feedback")
    [msg] = rewrite_messages(task, ROW, "Shakespeare did.", label)
    text = msg["content"]
    assert f"clearly {label} than the existing one" in text
    assert "<existing_answer>\nShakespeare did.\n</existing_answer>" in text
    assert "<aspects>" in text  # model-selects asks for the chosen aspects


def test_rewrite_prompt_sample_mode_names_targets():
    task = load_task("qa_feedback")
    targets = [task.aspect("completeness")]
    [msg] = rewrite_messages(task, ROW, "y1", "worse", "sample", targets)
    assert "on these aspects: Completeness" in msg["content"]
    assert "<aspects>" not in msg["content"]
    with pytest.raises(ValueError):
        rewrite_messages(task, ROW, "y1", "worse", "sample", [])


def test_no_aspect_mode_drops_aspect_definitions():
    task = load_task("qa_feedback")
    [msg] = rewrite_messages(task, ROW, "y1", "better", "none")
    assert "Completeness" not in msg["content"]
    assert "better" in msg["content"]
    [first] = first_response_messages(task, ROW, "none")
    assert "Completeness" not in first["content"]


def test_tasks_without_reference_render():
    task = load_task("ultrafeedback")
    [msg] = first_response_messages(task, {"instruction": "Say hi."})
    assert "<instruction>\nSay hi.\n</instruction>" in msg["content"]
    assert "<system_prompt>" not in msg["content"]  # optional and empty: left out
    assert "reference" not in msg["content"]


def test_sample_aspects_is_seeded():
    task = load_task("ultrafeedback")
    a = sample_aspects(task, "row1", 0, 2)
    assert a == sample_aspects(task, "row1", 0, 2)
    assert len(a) == 2 and len({x.name for x in a}) == 2


def test_match_aspects_maps_free_text_to_names():
    task = load_task("qa_feedback")
    assert match_aspects(task, ["Completeness", "factuality and faithfulness", "nonsense"]) == [
        "completeness",
        "factuality",
    ]
    assert match_aspects(task, ["Relevance"]) == ["relevance_coherence"]


def test_format_value_passages():
    assert format_value([["T", "T\n\ns1.", "s2."], ["U", "u1."]]) == "[1] T: s1. s2.\n[2] U: u1."
    assert format_value([{"title": "T", "content": "c"}]) == "[1] T: c"
    assert format_value(["a", "b"]) == "a\nb"
    assert format_value(None) == ""
