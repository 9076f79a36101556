import json

import pytest

from raylhf.contracts.dataio import DataError, read_records, write_records
from raylhf.contracts.records import Comparison, Demonstration, Prompt, Rollout

SAMPLES = {
    Prompt: [Prompt("p0", "Instruction: add 2 and 3.\nResponse:"), Prompt("p1", "héllo ✓")],
    Demonstration: [Demonstration("p0", "add 2 and 3", " 5"), Demonstration("p1", "say hi", " hi")],
    Comparison: [
        Comparison("p0", "add 2 and 3", [" 5", " 6", " five"], [0, 2, 1]),
        Comparison("p1", "say hi", [" hi", " bye"], [1, 0]),
    ],
    Rollout: [
        Rollout("p0", [1, 5, 6], [7, 8, 2], [-0.5, -1.25, -0.125], 3, "eos", 0.75, [-0.5, -1.0, -0.25], 1.5, 2.5, "s0",
                last_version=4),
        Rollout("p1", [1, 9], [4], [-2.0], 4, "length"),
    ],
}


@pytest.mark.parametrize("record_type", list(SAMPLES))
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, record_type, suffix):
    records = SAMPLES[record_type]
    path = write_records(tmp_path / f"data{suffix}", records)
    back, report = read_records(path, record_type)
    assert report.n_bad == 0 and report.n_rows == len(records)
    if record_type is Rollout:  # float32 on disk: compare with the precision of the schema
        for a, b in zip(back, records):
            assert a.logprobs == pytest.approx(b.logprobs) and a.response_ids == b.response_ids
            assert a.policy_version == b.policy_version and a.score == b.score and a.sample_id == b.sample_id
            assert a.last_version == b.last_version and a.spans_versions() == b.spans_versions()
    else:
        assert back == records


def _write_lines(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (line + "\n").encode())
    return path


GOOD = json.dumps({"prompt_id": "a", "prompt": "x", "responses": ["r1", "r2"], "ranking": [1, 0]})
BAD_ROWS = [
    (json.dumps({"prompt_id": "a", "responses": ["r1", "r2"], "ranking": [1, 0]}), "missing field 'prompt'"),
    (json.dumps({"prompt_id": "a", "prompt": 5, "responses": ["r1", "r2"], "ranking": [1, 0]}), "field 'prompt': expected str, got int"),
    (json.dumps({"prompt_id": "a", "prompt": "  ", "responses": ["r1", "r2"], "ranking": [1, 0]}), "empty prompt"),
    (json.dumps({"prompt_id": "a", "prompt": "x", "responses": ["r1"], "ranking": [0]}), "K=1 responses, must be 2..9"),
    (json.dumps({"prompt_id": "a", "prompt": "x", "responses": ["r"] * 10, "ranking": list(range(10))}), "K=10"),
    (json.dumps({"prompt_id": "a", "prompt": "x", "responses": ["r1", "r2"], "ranking": [0, 0]}), "not a permutation"),
    (json.dumps({"prompt_id": "a", "prompt": "x", "responses": ["r1", "r2"], "ranking": [0, 2]}), "not a permutation"),
    (json.dumps({"prompt_id": "a", "prompt": "x" * 50, "responses": ["r1", "r2"], "ranking": [0, 1]}), "longer than the limit of 20"),
    (json.dumps({"prompt_id": "a", "prompt": "x", "responses": ["r1", 3], "ranking": [0, 1]}), "field 'responses[1]': expected str"),
    (b'{"prompt_id": "a", "prompt": "\xff\xfe", "responses": ["r1", "r2"], "ranking": [1, 0]}\n', "invalid UTF-8"),
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
]


@pytest.mark.parametrize("bad,reason", BAD_ROWS)
def test_bad_row_names_file_line_and_reason(tmp_path, bad, reason):
    path = _write_lines(tmp_path / "cmp.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as exc:
        read_records(path, Comparison, max_prompt_chars=20)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:line 3: "), msg
    assert reason in msg, msg


def test_skip_policy_keeps_every_valid_row_and_counts(tmp_path):
    lines = [GOOD] + [b for b, _ in BAD_ROWS] + [GOOD.replace('"a"', '"b"')]
    path = _write_lines(tmp_path / "cmp.jsonl", lines)
    records, report = read_records(path, Comparison, on_bad_rows="skip", max_prompt_chars=20)
    assert [r.prompt_id for r in records] == ["a", "b"]
    assert report.n_bad == len(BAD_ROWS) and report.n_rows == 2
    assert report.errors[0].startswith(f"{path}:line 2: ")


def test_parquet_bad_row_reports_row_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt_id": "a", "prompt": "x"}, {"prompt_id": "b", "prompt": ""}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet:row 1: field 'prompt': empty prompt"):
        read_records(tmp_path / "p.parquet", Prompt)


def test_rollout_length_mismatch_is_bad(tmp_path):
    row = {"prompt_id": "a", "prompt_ids": [1], "response_ids": [3, 4], "logprobs": [-1.0],
           "policy_version": 0, "finish_reason": "eos"}
    path = _write_lines(tmp_path / "r.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match="line 1: field 'logprobs': 1 values for 2 response tokens"):
        read_records(path, Rollout)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "nope.jsonl", Prompt)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(DataError, match="unknown file type"):
        read_records(tmp_path / "x.csv", Prompt)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_names_the_file(tmp_path, content):
    path = tmp_path / "cmp.jsonl"
    path.write_text(content)
    for policy in ("error", "skip"):
        with pytest.raises(DataError) as exc:
            read_records(path, Comparison, on_bad_rows=policy)
        assert str(exc.value) == f"{path}: empty dataset: no Comparison rows"


def test_empty_parquet_file(tmp_path):
    path = write_records(tmp_path / "p.parquet", [], Prompt)
    with pytest.raises(DataError, match=r"p\.parquet: empty dataset: no Prompt rows"):
        read_records(path, Prompt)


def test_skip_policy_with_no_valid_row_is_an_error(tmp_path):
    path = _write_lines(tmp_path / "cmp.jsonl", ["{not json", "[1, 2]"])
    with pytest.raises(DataError) as exc:
        read_records(path, Comparison, on_bad_rows="skip")
    assert str(exc.value) == (f"{path}: no valid rows: all 2 rows are bad (data.on_bad_rows=skip); "
                              "first: line 1: invalid JSON: Expecting property name enclosed in double quotes (column 2)")
    path = _write_lines(tmp_path / "one.jsonl", ["[1, 2]"])
    with pytest.raises(DataError) as exc:
        read_records(path, Comparison, on_bad_rows="skip")
    assert str(exc.value) == (f"{path}: no valid rows: its only row is bad (data.on_bad_rows=skip): "
                              "line 1: expected a JSON object, got list")


def _prompt_lines(*ids):
    return [json.dumps({"prompt_id": i, "prompt": f"prompt {n}"}) for n, i in enumerate(ids)]


def test_duplicate_prompt_ids_name_file_line_and_id(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", _prompt_lines("a", "b", "c", "b"))
    with pytest.raises(DataError) as exc:
        read_records(path, Prompt)
    assert str(exc.value) == f"{path}:line 4: duplicate prompt_id 'b' (first at line 2)"


def test_duplicate_prompt_ids_skipped_keep_the_first(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", _prompt_lines("a", "b", "a", "b", "c"))
    records, report = read_records(path, Prompt, on_bad_rows="skip")
    assert [(r.prompt_id, r.prompt) for r in records] == [("a", "prompt 0"), ("b", "prompt 1"), ("c", "prompt 4")]
    assert report.n_bad == 2 and report.errors[0] == f"{path}:line 3: duplicate prompt_id 'a' (first at line 1)"


def test_duplicate_ids_in_parquet_name_the_row(tmp_path):
    path = write_records(tmp_path / "p.parquet", [Prompt("a", "x"), Prompt("a", "y")])
    with pytest.raises(DataError, match=r"p\.parquet:row 1: duplicate prompt_id 'a' \(first at row 0\)"):
        read_records(path, Prompt)


def test_other_records_may_share_a_prompt_id(tmp_path):
    # Comparisons of one prompt collected from two policies, say, keep the prompt's id.
    path = write_records(tmp_path / "c.jsonl", [SAMPLES[Comparison][0], SAMPLES[Comparison][0]])
    assert len(read_records(path, Comparison)[0]) == 2


def test_caller_check_is_a_bad_row_reason(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", _prompt_lines("a", "b", "c"))

    def check(p):
        return "too long for the model" if p.prompt_id == "b" else None

    with pytest.raises(DataError) as exc:
        read_records(path, Prompt, check=check)
    assert str(exc.value) == f"{path}:line 2: too long for the model"
    records, report = read_records(path, Prompt, on_bad_rows="skip", check=check)
    assert [r.prompt_id for r in records] == ["a", "c"] and report.n_bad == 1


def test_a_row_rejected_by_the_check_does_not_claim_its_id(tmp_path):
    # Nothing valid is lost under skip: the first *valid* row with an id is the one kept.
    lines = [json.dumps({"prompt_id": "a", "prompt": "x" * 30}), json.dumps({"prompt_id": "a", "prompt": "short"})]
    path = _write_lines(tmp_path / "p.jsonl", lines)
    records, _ = read_records(path, Prompt, on_bad_rows="skip", check=lambda p: "long" if len(p.prompt) > 20 else None)
    assert [r.prompt for r in records] == ["short"]


def test_directory_is_not_a_data_file(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(DataError, match=r"d\.jsonl: is a directory, not a data file"):
        read_records(tmp_path / "d.jsonl", Prompt)
