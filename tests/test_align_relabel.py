"""`rmboost relabel`: goal conditioning, the swap, formatting, the untouched test split, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import read_jsonl
from typer.testing import CliRunner

from rmboost.align.goals import DEFAULT_GOAL_TEMPLATE, GoalSpec, format_score, parse_scale
from rmboost.align.relabel import RelabelConfig, looks_like_test, relabel_pairs, run_relabel
from rmboost.align.scores import map_rewards
from rmboost.cli import app
from rmboost.data.messages import read_source_pairs, split_pair

X = "Question: Who wrote Hamlet?\n\nPassages:\n[1] Hamlet: a tragedy by William Shakespeare."
YW = "William Shakespeare wrote Hamlet around 1600."
YL = "Hamlet was written by Christopher Marlowe."


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def plain_pair(**extra) -> dict:
    return {"id": "p1", "prompt": X, "chosen": YW, "rejected": YL, "chosen_score": 8.0, "rejected_score": 3, **extra}


def goal(score: str, low: str = "1", high: str = "10") -> str:
    return DEFAULT_GOAL_TEMPLATE.format(score=score, low=low, high=high)


def test_format_score_and_scale() -> None:
    assert [format_score(v) for v in (8.0, 8, 7.25, -0.0, 10.5, 1 / 3)] == ["8", "8", "7.25", "0", "10.5", "0.333333"]
    assert parse_scale("1-10") == (1.0, 10.0) and parse_scale("0..1") == (0.0, 1.0) and parse_scale("1:7") == (1.0, 7.0)
    for bad in ("10-1", "one-ten", "5"):
        with pytest.raises(ValueError):
            parse_scale(bad)
    with pytest.raises(ValueError, match=r"\{score\}"):
        GoalSpec(template="Be good.")
    with pytest.raises(ValueError, match="only"):
        GoalSpec(template="Score {score} of {maximum}")
    assert GoalSpec(template="[{score}/{high}]", low=0, high=5).text(4.0) == "[4/5]"


def test_system_variant_swaps_and_formats_integers(tmp_path: Path) -> None:
    src = write(tmp_path / "pairs.jsonl", [plain_pair(group="g1")])
    out = tmp_path / "relabelled.jsonl"
    summary = run_relabel(RelabelConfig(input=src, output=out, spec=GoalSpec(variant="system")))
    rows = read_jsonl(out)
    assert len(rows) == 2 and summary["rows_out"] == 2 and summary["pairs_kept"] == 1
    w, lo = rows
    # Row 1: goal = chosen's score, original order. Plain rows become chat rows (a system message needs one).
    assert w["prompt"] == [{"role": "system", "content": goal("8")}, {"role": "user", "content": X}]
    assert w["chosen"] == [{"role": "assistant", "content": YW}]
    assert w["rejected"] == [{"role": "assistant", "content": YL}]
    # Row 2: goal = rejected's score, and the responses really swapped.
    assert lo["prompt"] == [{"role": "system", "content": goal("3")}, {"role": "user", "content": X}]
    assert lo["chosen"] == [{"role": "assistant", "content": YL}]
    assert lo["rejected"] == [{"role": "assistant", "content": YW}]
    assert "8.0" not in json.dumps(rows) and "rated 8 " in w["prompt"][0]["content"]
    assert (w["goal_swapped"], lo["goal_swapped"]) == (False, True)
    assert (w["score_chosen"], w["score_rejected"], lo["score_chosen"], lo["score_rejected"]) == (8, 3, 3, 8)
    assert (w["id"], lo["id"], w["source_id"], w["group"]) == ("p1#w", "p1#l", "p1", "g1")
    assert "chosen_score" not in w  # the input's score columns described the unswapped pair
    assert json.loads((tmp_path / "relabelled.summary.json").read_text())["goal_scores"] == {"3": 1, "8": 1}


def test_user_variant_prefixes_once_and_swaps(tmp_path: Path) -> None:
    src = write(tmp_path / "pairs.jsonl", [plain_pair(), {**plain_pair(), "id": "p2", "chosen_score": 7.5}])
    out = tmp_path / "relabelled.jsonl"
    run_relabel(RelabelConfig(input=src, output=out, spec=GoalSpec(variant="user")))
    rows = read_jsonl(out)
    assert len(rows) == 4
    w, lo, w2, _ = rows
    assert w["prompt"] == goal("8") + "\n\n" + X and (w["chosen"], w["rejected"]) == (YW, YL)
    assert lo["prompt"] == goal("3") + "\n\n" + X and (lo["chosen"], lo["rejected"]) == (YL, YW)
    assert w2["prompt"].startswith(goal("7.5") + "\n\n")
    for row in rows:  # exactly one goal per row, the original prompt exactly once
        assert row["prompt"].count("would be rated") == 1 and row["prompt"].count(X) == 1


def test_chat_rows_keep_their_turns_and_inputs_are_not_mutated() -> None:
    history = [
        {"role": "system", "content": "You answer questions about plays."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Who wrote Hamlet?"},
    ]
    row = {"id": "c1", "prompt": history, "chosen": [{"role": "assistant", "content": YW}],
           "rejected": [{"role": "assistant", "content": YL}]}
    before = copy.deepcopy(row)
    pair = read_source_pairs_from(row)
    user_rows, _ = relabel_pairs([pair], GoalSpec(variant="user"), [(9, 2)])
    for r, score in zip(user_rows, ("9", "2"), strict=True):
        assert r["prompt"][:3] == history[:3]  # earlier turns untouched, the goal on the LAST user turn only
        assert r["prompt"][3] == {"role": "user", "content": goal(score) + "\n\nWho wrote Hamlet?"}
        assert sum(m["content"].count("would be rated") for m in r["prompt"]) == 1
    assert user_rows[1]["chosen"] == row["rejected"] and user_rows[1]["rejected"] == row["chosen"]
    sys_rows, _ = relabel_pairs([pair], GoalSpec(variant="system"), [(9, 2)])
    assert [m["role"] for m in sys_rows[1]["prompt"]] == ["system", "user", "assistant", "user"]
    assert sys_rows[1]["prompt"][0]["content"] == goal("2") + "\n\nYou answer questions about plays."
    assert row == before


def read_source_pairs_from(row: dict, tmp: Path | None = None):
    return split_pair(row, "mem, line 1", 0)


def test_implicit_prompt_conversations_are_split(tmp_path: Path) -> None:
    turn = [{"role": "user", "content": X}]
    row = {"chosen": [*turn, {"role": "assistant", "content": YW}], "rejected": [*turn, {"role": "assistant", "content": YL}],
           "chosen_score": 6, "rejected_score": 6}
    out = tmp_path / "o.jsonl"
    s = run_relabel(RelabelConfig(input=write(tmp_path / "c.jsonl", [row]), output=out, spec=GoalSpec(variant="user")))
    rows = read_jsonl(out)
    assert rows[0]["prompt"] == [{"role": "user", "content": goal("6") + "\n\n" + X}]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": YL}]
    assert s["ties"] == 1  # kept by default; --drop-ties removes it
    s = run_relabel(RelabelConfig(input=tmp_path / "c.jsonl", output=out, drop_ties=True))
    assert s["rows_out"] == 0 and s["removed"] == {"tie": 1}
    assert s["mean_score_chosen"] is None  # was 6: the summary averaged the pair it had removed
    other = {**row, "chosen_score": 8, "rejected_score": 2}
    s = run_relabel(RelabelConfig(input=write(tmp_path / "d.jsonl", [row, other]), output=out, drop_ties=True))
    assert s["rows_out"] == 2 and (s["mean_score_chosen"], s["mean_score_rejected"]) == (8, 2)


@pytest.mark.parametrize(("name", "is_test"), [
    ("test.jsonl", True), ("qaf_test.parquet", True), ("v1.test-set.jsonl", True), ("data.test.jsonl", True),
    ("held-out.json", True), ("pairs.jsonl.gz", False), ("latest.jsonl", False), ("contest_train.jsonl", False),
    ("train.jsonl", False),
])
def test_test_file_names(name: str, is_test: bool) -> None:
    assert looks_like_test(Path(name)) is is_test


def test_test_split_is_never_augmented(tmp_path: Path) -> None:
    test = write(tmp_path / "test.jsonl", [plain_pair(id=f"t{i}") for i in range(3)])
    runner = CliRunner()
    r = runner.invoke(app, ["relabel", str(test), "-o", str(tmp_path / "r.jsonl")])
    assert r.exit_code == 2 and "looks like a test split" in r.output and "--split test" in r.output
    assert not (tmp_path / "r.jsonl").exists()
    r = runner.invoke(app, ["relabel", str(test), "-o", str(tmp_path / "r.jsonl"), "--split", "test", "--variant", "user",
                            "--chosen-score", "does-not-exist"])
    assert r.exit_code == 0, r.output
    rows = read_jsonl(tmp_path / "r.jsonl")
    assert len(rows) == 3  # not doubled
    for i, row in enumerate(rows):
        assert row["id"] == f"t{i}" and row["split"] == "test" and not row["goal_swapped"]
        assert (row["chosen"], row["rejected"]) == (YW, YL)  # not swapped
        assert row["prompt"] == goal("10") + "\n\n" + X  # the top goal: the condition it is evaluated under
        assert "score_chosen" not in row
    # A row marked split=test inside a "training" file is refused too.
    mixed = write(tmp_path / "mixed.jsonl", [plain_pair(), plain_pair(id="p9", split="test")])
    r = runner.invoke(app, ["relabel", str(mixed), "-o", str(tmp_path / "m.jsonl"), "--split", "train"])
    assert r.exit_code == 2 and "mixed.jsonl, line 2" in r.output and "split=test" in r.output


@pytest.mark.parametrize(
    ("rows", "args", "expected"),
    [
        ([plain_pair(), {**plain_pair(), "rejected_score": "high"}], [], ["bad.jsonl, line 2", "'rejected_score'", "'high'"]),
        ([plain_pair(), {k: v for k, v in plain_pair().items() if k != "chosen_score"}], [], ["line 2", "missing score column 'chosen_score'"]),
        ([plain_pair(chosen_score=11)], [], ["line 1", "outside the goal scale 1-10"]),
        ([plain_pair(chosen_score=None)], [], ["line 1", "must be a number"]),
        ([plain_pair(chosen_score=True)], [], ["line 1", "must be a number"]),
        ([plain_pair(), plain_pair(q={"good": 5})], ["--chosen-score", "q.good", "--rejected-score", "q.bad"], ["line 1", "'q.good'"]),
        ([plain_pair(), {"prompt": X, "chosen": YW}], [], ["line 2", "missing field 'rejected'"]),
        ([plain_pair(a=[4, 5], b=[3, "abc"])], ["--chosen-fine-grained", "a", "--rejected-fine-grained", "b"], ["line 1", "'b'", "'abc'"]),
    ],
)
def test_bad_score_columns_name_the_row(tmp_path: Path, rows: list[dict], args: list[str], expected: list[str]) -> None:
    bad = write(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(app, ["relabel", str(bad), "-o", str(out), *args])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    for piece in expected:
        assert piece in text, text
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--scores-from", "judge", "--scale", "1-7"], "rates on 1-10, but the goal scale is 1-7: use --scale 1-10"),
        (["--scores-from", "judge", "--task", "no_such_task"], "unknown task 'no_such_task'"),
        (["--scores-from", "rm:{tmp}/no-model"], "reward model not found: {tmp}/no-model"),
        (["--scores-from", "rm:"], "--scores-from 'rm:': use columns, judge or rm:PATH"),
        (["--scores-from", "rm:{tmp}", "--rm-mapping", "rank"], "unknown mapping 'rank'"),
        (["--split", "val"], "unknown split 'val'"),
        (["-o", "{tmp}/out.json"], "use a .jsonl file name"),
    ],
)
def test_option_errors_come_before_any_work(tmp_path: Path, args: list[str], expected: str) -> None:
    """Was: `--scores-from judge --scale 1-7` printed `rating N pairs with the judge` before the error.
    The input does not exist: an option error must come before the file is even read."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = CliRunner().invoke(app, ["relabel", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "out.jsonl"), *args],
                           env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert expected.replace("{tmp}", str(tmp_path)) in text, text
    assert "rating" not in text and "scoring" not in text and "not found: " + str(tmp_path / "missing") not in text


def test_judge_scale_is_checked_before_the_rating_message(tmp_path: Path) -> None:
    src = write(tmp_path / "pairs.jsonl", [plain_pair()])
    r = CliRunner().invoke(app, ["relabel", str(src), "-o", str(tmp_path / "out.jsonl"), "--scores-from", "judge",
                                 "--scale", "1-7"], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "use --scale 1-10" in r.output
    assert "rating" not in r.output and not (tmp_path / "out.jsonl").exists()


def test_csv_scores_are_read_as_numbers(tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text('prompt,chosen,rejected,chosen_score,rejected_score\n"Q?","good","bad","9","2.50"\n', "utf-8")
    run_relabel(RelabelConfig(input=csv, output=tmp_path / "o.jsonl", spec=GoalSpec(variant="user")))
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert rows[0]["prompt"].startswith(goal("9")) and rows[1]["prompt"].startswith(goal("2.5"))


def test_fine_grained_filter(tmp_path: Path) -> None:
    rows = [
        plain_pair(id="keep", fg_c={"help": 4, "honest": 5}, fg_r={"help": 4, "honest": 3}),
        plain_pair(id="equal", fg_c=[3, 3], fg_r=[2, 4]),
        plain_pair(id="below", fg_c=[2, 3], fg_r=[4, 4]),
        plain_pair(id="na", fg_c=[4, "N/A"], fg_r=[1, 1]),
        plain_pair(id="number", fg_c=4, fg_r="3.5"),
    ]
    out = tmp_path / "o.jsonl"
    s = run_relabel(RelabelConfig(input=write(tmp_path / "p.jsonl", rows), output=out, fine_grained=("fg_c", "fg_r")))
    kept = read_jsonl(out)
    assert [r["id"] for r in kept] == ["keep#w", "keep#l", "equal#w", "equal#l", "number#w", "number#l"]
    assert s["removed"] == {"fine_grained_chosen_below_rejected": 1, "fine_grained_na": 1}
    removed = read_jsonl(tmp_path / "o.filtered.jsonl")
    assert [(r["id"], r["relabel"]["reason"]) for r in removed] == [
        ("below", "fine_grained_chosen_below_rejected"), ("na", "fine_grained_na")]
    assert "fg_c" not in kept[0]  # per-aspect columns described the unswapped pair


def test_reward_mapping_onto_the_goal_scale() -> None:
    spec = GoalSpec(low=1, high=10)
    assert map_rewards([-3.0, 0.5, 0.2, 9.0], spec) == [1.0, 7.0, 4.0, 10.0]  # ranks 0..3 spread over 1-10
    assert map_rewards([1.0, 1.0, 5.0], spec) == [3.25, 3.25, 10.0]  # ties share their mean rank
    assert map_rewards([0.0, 1.0, 2.0], spec, "linear") == [1.0, 5.5, 10.0]
    assert map_rewards([2.0, 2.0], spec, "linear") == [5.5, 5.5]
    with pytest.raises(ValueError, match="rm-mapping"):
        map_rewards([1.0], spec, "zscore")


def test_judge_failures_remove_only_their_pairs(tmp_path: Path, scripted) -> None:
    """Control flow with a scripted judge (text mode): an unparseable rating drops that pair, not the job."""
    from rmboost.methods.judge import JudgeOptions

    rows = [
        {"id": "a", "prompt": X, "chosen": YW, "rejected": YL, "inputs": {"question": "Who wrote Hamlet?", "passages": "[1] ..."}},
        {"id": "b", "prompt": X, "chosen": "I cannot say.", "rejected": YL, "inputs": {"question": "Who wrote Hamlet?", "passages": "[1] ..."}},
    ]

    def answer(messages, params):
        text = messages[-1]["content"]
        if YW in text:
            return "Correct. <score>9</score>"
        if "I cannot say." in text:
            return "<score>great</score>"  # never a number: the pair loses its score
        return "Wrong author. <score>2</score>"

    backend = scripted(answer)
    out = tmp_path / "o.jsonl"
    cfg = RelabelConfig(
        input=write(tmp_path / "p.jsonl", rows), output=out, scores_from="judge",
        judge=JudgeOptions(mode="text"), cache=tmp_path / "cache.sqlite",
    )
    s = run_relabel(cfg, judge_backend=backend)
    kept = read_jsonl(out)
    assert [(r["id"], r["goal_score"]) for r in kept] == [("a#w", 9.0), ("a#l", 2.0)]
    assert s["removed"] == {"no_score": 1} and s["scores"]["responses_scored"] == 3  # YL is shared: rated once
    assert s["scores"]["judge_failures"] == {"bad_score": 1}
    calls = len(backend.calls)
    run_relabel(cfg, judge_backend=backend)  # a re-run is answered from the cache
    assert len(backend.calls) == calls


def test_relabelled_file_loads_in_datasets(tmp_path: Path) -> None:
    import datasets

    src = write(tmp_path / "pairs.jsonl", [plain_pair(id=f"p{i}", chosen_score=[4, 3.5, 6][i]) for i in range(3)])
    out = tmp_path / "o.jsonl"
    run_relabel(RelabelConfig(input=src, output=out))
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == 6 and ds[1]["chosen"][0]["content"] == YL and ds[0]["prompt"][0]["role"] == "system"
    assert ds["goal_score"] == [4, 3, 3.5, 3, 6, 3]  # ints and a 3.5 in one column
    assert read_source_pairs(out)[1].chosen == [{"role": "assistant", "content": YL}]
