import json
from pathlib import Path

import pytest

from rmboost.data import qa_feedback
from rmboost.data.inputs import InputError, apply_field_map, parse_field_map, read_rows
from rmboost.data.pairs import PairWriter, sidecar
from rmboost.job_inputs import PromptSource, iter_prompt_rows, load_prompt_rows


def test_read_formats(tmp_path: Path):
    rows = [{"id": "a", "q": "x"}, {"id": "b", "q": "y"}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "r.json").write_text(json.dumps(rows))
    (tmp_path / "r.csv").write_text("id,q\na,x\nb,y\n")
    import datasets

    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "r.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved_dict"))
    for name in ("r.jsonl", "r.json", "r.csv", "r.parquet", "saved", "saved_dict"):
        assert read_rows(tmp_path / name) == rows, name


def test_bad_inputs_name_file_and_line(tmp_path: Path):
    with pytest.raises(InputError, match="input not found"):
        read_rows(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{oops\n')
    with pytest.raises(InputError, match=r"bad.jsonl, line 2: not valid JSON"):
        read_rows(bad)
    with pytest.raises(InputError, match="unsupported input format"):
        (tmp_path / "x.txt").write_text("hi")
        read_rows(tmp_path / "x.txt")


def test_field_map_and_ids():
    rows = apply_field_map([{"q": "x"}, {"q": "y", "id": 7}], parse_field_map(["question=q"]))
    assert [r["question"] for r in rows] == ["x", "y"]
    assert [r["id"] for r in rows] == ["row-0", "7"]
    with pytest.raises(InputError, match="input, row 1: no column 'nope'"):
        apply_field_map([{"q": 1}], {"question": "nope"})
    with pytest.raises(InputError, match="expected TASK_FIELD=COLUMN"):
        parse_field_map(["question"])
    with pytest.raises(InputError, match="input, row 2: id 'a' repeats row 1"):
        apply_field_map([{"id": "a"}, {"id": "a"}], {})


def test_prompt_rows_are_named_by_line_for_jsonl_and_by_row_otherwise_from_1(tmp_path: Path):
    src = tmp_path / "prompts.jsonl"
    src.write_text('{"q": "a", "ctx": "c"}\n{"q": "b"}\n')
    with pytest.raises(InputError, match=r"prompts.jsonl, line 2: no column 'ctx'"):
        list(iter_prompt_rows(PromptSource(input=str(src), fields={"passages": "ctx"})))
    src.write_text('{"q": "a", "ctx": "c"}\n\n{"q": "b"}\n')  # a blank line: the physical line is named
    with pytest.raises(InputError, match=r"prompts.jsonl, line 3: no column 'ctx'"):
        list(iter_prompt_rows(PromptSource(input=str(src), fields={"passages": "ctx"})))
    table = tmp_path / "prompts.csv"
    table.write_text("id,q\na,x\nb,y\na,z\n")
    with pytest.raises(InputError, match=r"prompts.csv, row 3: id 'a' repeats row 1"):
        load_prompt_rows(PromptSource(input=str(table)))
    assert [r["_where"] for r in iter_prompt_rows(PromptSource(input=str(table), limit=2))] == [
        f"{table}, row 1", f"{table}, row 2"]


def test_qa_feedback_loader(qa_feedback_dir: Path):
    prompts = qa_feedback.load_prompts(qa_feedback_dir)
    assert len(prompts) == 400
    assert {"id", "question", "passages", "reference"} <= set(prompts[0])
    assert prompts[0]["passages"].startswith("[1] ")
    pairs = qa_feedback.load_human_pairs(qa_feedback_dir)
    assert len(pairs) == 2098  # the README's count of non-tie comparisons
    raw = json.loads((qa_feedback_dir / "dev_feedback.json").read_text())
    first = raw[0]
    expected = sum(1 for p in first["preference"] if p != 0)
    mine = [p for p in pairs if p["group"] == qa_feedback.question_id(first["question"])]
    assert len(mine) == expected
    # preference [0, 1, 2, ...]: 1v3 -> prediction 1 wins; 1v4 -> prediction 4 wins
    by_id = {p["id"]: p for p in mine}
    assert by_id[f"{mine[0]['group']}-1v3"]["chosen"] == first["prediction 1"].strip()
    assert by_id[f"{mine[0]['group']}-1v4"]["chosen"] == first["prediction 4"].strip()


def test_split_by_question_never_leaks(qa_feedback_dir: Path):
    pairs = qa_feedback.load_human_pairs(qa_feedback_dir)
    train, test = qa_feedback.split_by_question(pairs, 0.25, seed=1)
    assert len(train) + len(test) == len(pairs)
    assert not {p["group"] for p in train} & {p["group"] for p in test}
    assert qa_feedback.split_by_question(pairs, 0.25, seed=1)[1] == test
    assert qa_feedback.split_by_question(pairs, 0.25, seed=2)[1] != test


def test_shipped_sample_carries_licence():
    rows = read_rows("sample:qa_feedback")
    assert len(rows) == 20 and rows[0]["reference"]
    from importlib import resources

    folder = resources.files("rmboost.data") / "samples"
    assert "Apache License" in (folder / "QA_FEEDBACK_LICENSE").read_text()
    assert "Wu et al. 2023" in (folder / "NOTICE.md").read_text()


def test_writer_resumes_after_a_torn_line(tmp_path: Path):
    out = tmp_path / "pairs.jsonl"
    w = PairWriter(out)
    w.write({"id": "a", "prompt": "p", "chosen": "c", "rejected": "r"})
    w.close()
    with out.open("a") as fh:
        fh.write('{"id": "b", "prompt": "p", "cho')  # kill -9 mid-write
    w2 = PairWriter(out)
    assert "a" in w2 and "b" not in w2 and len(w2) == 1
    w2.write({"id": "b", "prompt": "p", "chosen": "c", "rejected": "r"})
    with pytest.raises(ValueError, match="written twice"):
        w2.write({"id": "b", "prompt": "p", "chosen": "c", "rejected": "r"})
    w2.finalize(order=["b", "a"])
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["b", "a"]


def test_parquet_output(tmp_path: Path):
    out = tmp_path / "pairs.parquet"
    w = PairWriter(out)
    w.write({"id": "a", "prompt": "p", "chosen": "c", "rejected": "r"})
    w.finalize()
    assert read_rows(out) == [{"id": "a", "prompt": "p", "chosen": "c", "rejected": "r"}]
    assert not (tmp_path / "pairs.parquet.rows.jsonl").exists()
    again = PairWriter(out)  # resume from the finished parquet
    assert "a" in again and len(again) == 1


def test_sidecars():
    assert sidecar(Path("d/pairs.jsonl"), "failures") == Path("d/pairs.failures.jsonl")
    assert sidecar(Path("d/pairs.parquet"), "summary") == Path("d/pairs.summary.json")


def test_a_missing_qa_feedback_source_names_the_file_and_where_a_relative_path_starts(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"dev_feedback.json not found: ../shared/data/qa_feedback/dev_feedback.json \(from "):
        qa_feedback.load_prompts("../shared/data/qa_feedback")
    (tmp_path / "qaf").mkdir()
    with pytest.raises(InputError, match=r"not found: /.*/qaf/dev_feedback.json$"):
        qa_feedback.load_human_pairs(tmp_path / "qaf")
