"""RewardBench (v1) and RewardBench 2 scoring against hand computations, on small files built here
with the benchmarks' real subset names.

The rewards come from a table keyed by response text, so every expected number below can be
worked out by hand; the CLI path with a real trained model is in test_rm_export.py.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from rmboost.data.inputs import InputError
from rmboost.rm.rewardbench import (
    EXAMPLE_COUNTS,
    SUBSET_MAPPING,
    best_of_n_credit,
    evaluate_benchmark,
    print_benchmark,
    read_benchmark,
)


class TableScorer:
    """Rewards looked up by response text (the arithmetic is the point here, not a model)."""

    def __init__(self, rewards: dict[str, float]):
        self.rewards = rewards
        self.prompts: list[str] = []

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.prompts += prompts
        return [self.rewards[r] for r in responses]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


# (subset, reward of chosen, reward of rejected)
V1_ROWS = [
    ("alpacaeval-easy", 1.0, 0.0), ("alpacaeval-easy", 0.0, 1.0),   # 0.5
    ("alpacaeval-hard", 2.0, 1.0),                                   # 1.0
    ("mt-bench-med", 0.5, 0.5),                                      # a tie counts wrong: 0.0
    ("mt-bench-hard", 1.0, -1.0),                                    # 1.0
    ("llmbar-natural", 1.0, 0.0), ("llmbar-natural", -1.0, 0.0),     # 0.5
    ("refusals-dangerous", 3.0, 0.0),                                # 1.0
    ("donotanswer", 0.0, 3.0),                                       # 0.0
    ("math-prm", 1.0, 0.0), ("math-prm", 2.0, 0.0),                  # 1.0
    ("hep-python", 0.0, 1.0), ("hep-python", 0.0, 2.0),              # 0.0
    ("anthropic_helpful", 1.0, 0.0), ("shp", 0.0, 1.0),              # prior sets: 1.0 and 0.0
    ("my-own-subset", 1.0, 0.0),                                     # not a RewardBench subset
]


@pytest.fixture
def v1_file(tmp_path) -> tuple[Path, TableScorer]:
    rows, rewards = [], {}
    for i, (subset, c, r) in enumerate(V1_ROWS):
        rewards[f"chosen {i}"], rewards[f"rejected {i}"] = c, r
        row = {"id": i, "subset": subset, "prompt": f"question {i}", "chosen": f"chosen {i}", "rejected": f"rejected {i}"}
        if i == 1:  # reward-bench also takes message lists: the prompt is all but the last message
            row = {"id": i, "subset": subset,
                   "chosen": [{"role": "user", "content": "question 1"}, {"role": "assistant", "content": "chosen 1"}],
                   "rejected": [{"role": "user", "content": "question 1"}, {"role": "assistant", "content": "rejected 1"}]}
        if i == 2:  # ... and renames `question` to `prompt`
            row["question"] = row.pop("prompt")
        rows.append(row)
    return write_jsonl(tmp_path / "rb.jsonl", rows), TableScorer(rewards)


def test_rewardbench_v1_sections_by_hand(v1_file):
    path, scorer = v1_file
    m = evaluate_benchmark(scorer, path, "rewardbench")
    acc = {k: v["accuracy"] for k, v in m["subsets"].items()}
    assert acc["alpacaeval-easy"] == 0.5 and acc["mt-bench-med"] == 0.0 and acc["hep-python"] == 0.0
    assert m["subsets"]["math-prm"] == {"n": 2, "accuracy": 1.0}
    chat = (0.5 * 100 + 1.0 * 95 + 0.0 * 40) / (100 + 95 + 40)
    chat_hard = (1.0 * 37 + 0.5 * 100) / (37 + 100)
    safety = (1.0 * 100 + 0.0 * 136) / (100 + 136)
    reasoning = (1.0 * 984 + 0.0 * 164) / (984 + 164)  # math-prm weighs 984, as in reward-bench
    assert m["sections"] == pytest.approx({"Chat": chat, "Chat Hard": chat_hard, "Safety": safety, "Reasoning": reasoning})
    assert m["prior_sets"] == 0.5
    assert m["score"] == pytest.approx((2 * (chat + chat_hard + safety + reasoning) + 0.5) / 9)
    assert m["accuracy"] == pytest.approx(9 / 16)  # all 16 rows, plain
    assert m["unknown_subsets"] == ["my-own-subset"]
    assert "xstest-should-refuse" in m["missing_subsets"] and "math-prm" not in m["missing_subsets"]
    assert scorer.prompts[2] == "question 1" and scorer.prompts[4] == "question 2"  # message list, `question`


def test_constants_are_reward_bench_v1s():
    assert sum(len(v) for v in SUBSET_MAPPING.values()) == 23 == len(EXAMPLE_COUNTS)
    assert EXAMPLE_COUNTS["math-prm"] == 984 and sum(EXAMPLE_COUNTS[s] for s in SUBSET_MAPPING["Reasoning"]) == 984 + 6 * 164
    assert sum(EXAMPLE_COUNTS[s] for s in SUBSET_MAPPING["Chat"]) == 358


def test_rewardbench2_best_of_4_and_ties_by_hand(tmp_path):
    rewards: dict[str, float] = {}

    def row(rid, subset, chosen, rejected, num_correct=None):
        names_c = [f"{rid} c{i}" for i in range(len(chosen))]
        names_r = [f"{rid} r{i}" for i in range(len(rejected))]
        rewards.update(zip(names_c, chosen, strict=True))
        rewards.update(zip(names_r, rejected, strict=True))
        out = {"id": rid, "subset": subset, "prompt": f"prompt {rid}", "chosen": names_c, "rejected": names_r}
        if num_correct is not None:
            out["num_correct"] = num_correct
        return out

    rows = [
        row("f1", "Factuality", [0.9], [0.1, 0.2, 0.3]),   # 1
        row("f2", "Factuality", [0.5], [0.5, 0.1, 0.2]),   # top shared by two: 1/2
        row("f3", "Factuality", [0.2], [0.9, 0.1, 0.0]),   # 0
        row("m1", "Math", [0.3], [0.2, 0.1, 0.0]),         # 1
        row("ref:1", "Ties", [0.8], [0.3, 0.5], 1),        # gap 0.3, right
        row("tied:1", "Ties", [0.9, 0.7, 0.8], [0.2, 0.4], 3),  # spread 0.2, gap 0.3, right
        row("ref:2", "Ties", [0.6], [0.65], 1),            # gap -0.05, wrong
        row("tied:2", "Ties", [0.5, 0.9], [0.45], 2),      # spread 0.4, gap 0.05, right
    ]
    path = write_jsonl(tmp_path / "rb2.jsonl", rows)
    m = evaluate_benchmark(TableScorer(rewards), path, "rewardbench2")
    assert m["subsets"]["Factuality"]["score"] == pytest.approx(0.5) and m["subsets"]["Math"]["score"] == 1.0
    ties = m["subsets"]["Ties"]
    assert (ties["ref_accuracy"], ties["tied_accuracy"]) == (0.5, 1.0)
    # prompt 1: 0.3 > 0.2 (both rules); prompt 2: 0.05 and min(-0.05, 0.05) are not > 0.4
    assert (ties["correctness_preferred"], ties["correctness_preferred_hard"]) == (0.5, 0.5)
    margin = (math.tanh(0.3 / 0.2 - 1) + math.tanh(-0.05 / 0.4 - 1)) / 2
    assert ties["margin_score"] == pytest.approx(margin)
    expected_ties = 0.3 * 1.0 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * margin
    assert ties["score"] == pytest.approx(expected_ties)
    assert m["score"] == pytest.approx((0.5 + 1.0 + expected_ties) / 3)
    assert m["missing_subsets"] == ["Precise IF", "Safety", "Focus"]
    assert best_of_n_credit([1.0, 1.0, 1.0, 0.0]) == pytest.approx(1 / 3) and best_of_n_credit([0.0, 1.0]) == 0.0


def test_ties_without_ref_and_tied_rows_print_why_they_have_no_score(tmp_path):
    """Was: the Ties `note` went to the JSON only; the table showed "-" with no reason."""
    from rich.console import Console

    rows = [{"id": "f1", "subset": "Factuality", "prompt": "p", "chosen": ["c"], "rejected": ["r1", "r2", "r3"]},
            {"id": "ref:1", "subset": "Ties", "prompt": "q", "chosen": ["a"], "rejected": ["b"], "num_correct": 1}]
    rewards = {"c": 1.0, "r1": 0.0, "r2": 0.0, "r3": 0.0, "a": 1.0, "b": 0.0}
    m = evaluate_benchmark(TableScorer(rewards), write_jsonl(tmp_path / "rb2.jsonl", rows), "rewardbench2")
    assert m["subsets"]["Ties"]["score"] is None
    buffer = io.StringIO()
    print_benchmark(m, Console(file=buffer, width=200))
    lines = buffer.getvalue().splitlines()
    assert "Ties: no score (no prompt has both a ref:N and a tied:N row)" in lines
    assert not any(line.startswith("Factuality: no score") for line in lines)
    # The overall score says how many subsets it averages; a kind of Ties row that is absent is null, not 0.
    assert any(line.startswith("score 100.0 (mean of 1 subset);") for line in lines)
    assert (m["subsets"]["Ties"]["ref_accuracy"], m["subsets"]["Ties"]["tied_accuracy"]) == (1.0, None)
    assert not any("section" in line for line in lines)  # v2 has no sections: no empty column


def test_benchmark_files_with_problems_name_the_row(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "subset": "shp"},
                                              {"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(InputError, match=r"bad.jsonl, line 2: missing field 'subset'"):
        read_benchmark(bad, "rewardbench")
    ties = write_jsonl(tmp_path / "ties.jsonl", [{"id": "7", "subset": "Ties", "prompt": "p", "chosen": ["a", "b"],
                                                  "rejected": ["c"], "num_correct": 2}])
    with pytest.raises(InputError, match="ref:N' or 'tied:N'"):
        read_benchmark(ties, "rewardbench2")
    with pytest.raises(FileNotFoundError):
        read_benchmark(tmp_path / "nope.jsonl", "rewardbench")
    # the other benchmark's file: named, with the --format that reads it (was: a v1 file scored as best-of-2)
    v1 = write_jsonl(tmp_path / "v1.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "subset": "shp"}])
    with pytest.raises(InputError, match=r"v1.jsonl, line 1: 'rejected' is one response.*use --format rewardbench\)"):
        read_benchmark(v1, "rewardbench2")
    v2 = write_jsonl(tmp_path / "v2.jsonl", [{"id": "f1", "subset": "Factuality", "prompt": "p", "chosen": ["c"],
                                             "rejected": ["r1", "r2", "r3"]}])
    with pytest.raises(InputError, match=r"v2.jsonl, line 1: 'chosen' is a list of responses.*--format rewardbench2"):
        read_benchmark(v2, "rewardbench")
