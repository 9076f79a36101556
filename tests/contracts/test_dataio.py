import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylhf.contracts.dataio import DataError, read_records, write_records
from raylhf.contracts.records import Comparison, Demonstration, Prompt, Rollout
from raylhf.contracts.row_shapes import prompt_hash

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo ✓"}]
SAMPLES = {
    Prompt: [Prompt("p0", "Instruction: add 2 and 3.\nResponse:"), Prompt("p1", "héllo ✓", CONV)],
    Demonstration: [Demonstration("p0", "add 2 and 3", " 5"), Demonstration("p1", "héllo ✓", " hi", CONV)],
    Comparison: [
        Comparison("p0", "add 2 and 3", [" 5", " 6", " five"], [0, 2, 1]),
        Comparison("p1", "héllo ✓", [" hi", " bye"], [1, 0], round=1, source="sft", messages=CONV),
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
    (json.dumps({"prompt_id": "a", "responses": ["r1", "r2"], "ranking": [1, 0]}), "field 'prompt': missing"),
    (json.dumps({"prompt_id": "a", "prompt": 5, "responses": ["r1", "r2"], "ranking": [1, 0]}),
     "field 'prompt': expected str or a list of {role, content} messages, got int"),
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


# ---------------------------------------------------------------------------------------------- row shapes
def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def _write(path, rows):
    """Rows as a user's file: JSONL lines, or a Parquet table whose column types pyarrow infers (a list of
    {role, content} dicts becomes list<struct>, an integer id int64)."""
    if path.suffix == ".jsonl":
        return _write_lines(path, [json.dumps(r) for r in rows])
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


SHAPES = [
    # (record type, rows in the user's shape, the records they read as)
    (Prompt, [{"prompt_id": 7, "prompt": "add 2 and 3"}], [Prompt("7", "add 2 and 3")]),
    (Prompt, [{"prompt": [user("add 2 and 3")]}],
     [Prompt(prompt_hash("add 2 and 3", [user("add 2 and 3")]), "add 2 and 3", [user("add 2 and 3")])]),
    (Prompt, [{"prompt_id": 1, "messages": CONV}], [Prompt("1", "héllo ✓", CONV)]),
    (Demonstration, [{"prompt_id": 3, "prompt": "q", "completion": " a"}], [Demonstration("3", "q", " a")]),
    (Demonstration, [{"prompt_id": "d", "messages": [*CONV, assistant("hi")]}],
     [Demonstration("d", "héllo ✓", "hi", CONV)]),
    (Demonstration, [{"prompt_id": "d", "prompt": CONV, "completion": [assistant("hi")]}],
     [Demonstration("d", "héllo ✓", "hi", CONV)]),
    (Comparison, [{"prompt_id": 5, "prompt": "Q:", "chosen": " a", "rejected": " b"}],
     [Comparison("5", "Q:", [" a", " b"], [0, 1])]),
    (Comparison, [{"chosen": "Q: sky? A: blue", "rejected": "Q: sky? A: green"}],
     [Comparison(prompt_hash("Q: sky? A:"), "Q: sky? A:", [" blue", " green"], [0, 1])]),
    (Comparison, [{"prompt_id": "c", "chosen": [*CONV, assistant("hi")], "rejected": [*CONV, assistant("bye")]}],
     [Comparison("c", "héllo ✓", ["hi", "bye"], [0, 1], messages=CONV)]),
    (Comparison, [{"prompt_id": "c", "prompt": CONV, "chosen": [assistant("hi")], "rejected": [assistant("bye")]}],
     [Comparison("c", "héllo ✓", ["hi", "bye"], [0, 1], messages=CONV)]),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("record_type,rows,expected", SHAPES)
def test_row_shapes_read_as_records(tmp_path, suffix, record_type, rows, expected):
    path = _write(tmp_path / f"data{suffix}", rows)
    assert read_records(path, record_type)[0] == expected


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_chosen_rejected_file_reads_as_the_native_pair(tmp_path, suffix):
    pairs = _write(tmp_path / f"pairs{suffix}", [{"prompt_id": "a", "prompt": "q", "chosen": " x", "rejected": " y"}])
    native = _write(tmp_path / f"native{suffix}", [{"prompt_id": "a", "prompt": "q", "responses": [" x", " y"],
                                                    "ranking": [0, 1]}])
    assert read_records(pairs, Comparison)[0] == read_records(native, Comparison)[0]


def test_files_written_before_messages_still_load(tmp_path):
    old_jsonl = _write(tmp_path / "old.jsonl", [{"prompt_id": "a", "prompt": "q", "response": " r"}])
    assert read_records(old_jsonl, Demonstration)[0] == [Demonstration("a", "q", " r")]
    old_schema = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string())])
    old_table = pa.Table.from_pylist([{"prompt_id": "a", "prompt": "q"}], schema=old_schema)
    pq.write_table(old_table, tmp_path / "old.parquet")
    assert read_records(tmp_path / "old.parquet", Prompt)[0] == [Prompt("a", "q")]


def test_rows_without_a_conversation_write_null_and_read_back(tmp_path):
    path = write_records(tmp_path / "p.jsonl", [Prompt("a", "q")])
    assert json.loads(path.read_text()) == {"prompt_id": "a", "prompt": "q", "messages": None}
    table = pq.read_table(write_records(tmp_path / "c.parquet", SAMPLES[Comparison]))
    assert table.schema.field("messages").type == Comparison.SCHEMA.field("messages").type
    assert table.column("messages").to_pylist() == [None, CONV]


def test_column_mapping_reads_the_users_columns(tmp_path):
    rows = [{"id": 1, "question": "q1", "good": " a", "bad": " b"},
            {"id": 2, "question": "q2", "good": " c", "bad": " d"}]
    columns = {"prompt_id": "id", "prompt": "question", "chosen": "good", "rejected": "bad"}
    for suffix in (".jsonl", ".parquet"):
        records, _ = read_records(_write(tmp_path / f"c{suffix}", rows), Comparison, columns=columns)
        assert records == [Comparison("1", "q1", [" a", " b"], [0, 1]), Comparison("2", "q2", [" c", " d"], [0, 1])]


def test_a_mapped_column_missing_names_the_users_column(tmp_path):
    path = _write(tmp_path / "c.jsonl", [{"question": "q", "good": " a", "bad": " b"}, {"question": "q", "good": " a"}])
    with pytest.raises(DataError) as exc:
        read_records(path, Comparison, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert str(exc.value) == f"{path}:line 2: field 'bad': missing"


def test_a_bad_mapping_fails_before_the_file_is_read(tmp_path):
    with pytest.raises(ValueError, match="columns: unknown key 'question'"):
        read_records(tmp_path / "missing.jsonl", Prompt, columns={"question": "q"})


@pytest.mark.parametrize("record_type,bad,message", [
    (Prompt, {"prompt_id": "b", "messages": [user("q"), {"role": "bot", "content": "x"}]},
     "field 'messages[1]': unknown role 'bot' (allowed: system, user, assistant)"),
    (Prompt, {"prompt_id": "b", "messages": [user("q"), assistant("a")]},
     "field 'messages': the prompt conversation must end with a user turn, not 'assistant'"),
    (Demonstration, {"prompt_id": "b", "messages": [user("q"), user("again")]},
     "field 'messages': no final assistant turn (the response): the last turn is 'user'"),
    (Demonstration, {"prompt_id": "b", "messages": [user("q"), assistant("")]},
     "field 'messages[1]': empty content (assistant turn)"),
    (Comparison, {"prompt_id": "b", "prompt": "q", "chosen": "x", "rejected": "x"},
     "field 'rejected': same as 'chosen'"),
    (Comparison, {"prompt_id": "b", "prompt": "q", "responses": ["x", "y"], "ranking": [0, 0]},
     "field 'ranking': [0, 0] is not a permutation of 0..1"),
    (Comparison, {"prompt_id": "b", "prompt": "q", "responses": ["x"] * 10, "ranking": list(range(10))},
     "field 'responses': K=10 responses, must be 2..9"),
    (Comparison, {"prompt_id": "b", "responses": ["x", "y"], "ranking": [0, 1]},
     {".jsonl": "field 'prompt': missing", ".parquet": "field 'prompt': must not be null"}),  # Parquet: a null cell
])
@pytest.mark.parametrize("suffix,where", [(".jsonl", "line 2"), (".parquet", "row 1")])
def test_bad_shaped_row_is_one_line_naming_the_row(tmp_path, record_type, bad, message, suffix, where):
    good = {Prompt: {"prompt_id": "a", "messages": [user("q0")]},
            Demonstration: {"prompt_id": "a", "messages": [user("q0"), assistant("a0")]},
            Comparison: {**bad, "prompt_id": "a", "prompt": "q0"}}[record_type]
    if record_type is Comparison and "chosen" in bad:
        good = {**good, "chosen": "x", "rejected": "y"}
    elif record_type is Comparison:
        good = {**good, "responses": ["x", "y"], "ranking": [0, 1]}
    path = _write(tmp_path / f"data{suffix}", [good, bad])
    with pytest.raises(DataError) as exc:
        read_records(path, record_type)
    message = message[suffix] if isinstance(message, dict) else message
    assert str(exc.value) == f"{path}:{where}: {message}"


def test_float_prompt_id_is_a_bad_row(tmp_path):
    # JSONL only: a Parquet column has one type, so a file cannot mix string and float ids.
    rows = [{"prompt_id": "a", "prompt": "q0", "responses": ["x", "y"], "ranking": [0, 1]},
            {"prompt_id": 1.5, "prompt": "q", "responses": ["x", "y"], "ranking": [0, 1]}]
    path = _write(tmp_path / "data.jsonl", rows)
    with pytest.raises(DataError) as exc:
        read_records(path, Comparison)
    assert str(exc.value) == f"{path}:line 2: field 'prompt_id': expected str or int, got float"


def test_skip_counts_per_reason(tmp_path):
    lines = [
        json.dumps({"prompt_id": "a", "prompt": "q", "responses": ["x", "y"], "ranking": [0, 1]}),
        json.dumps({"prompt": "q", "responses": ["x", "y"], "ranking": [0, 0]}),
        json.dumps({"prompt": "q", "responses": ["x", "y", "z"], "ranking": [2, 2, 0]}),
        json.dumps({"prompt": "q", "chosen": "x", "rejected": "x"}),
        json.dumps({"messages": [user("q"), {"role": "tool", "content": "x"}, user("q")], "responses": ["x", "y"],
                    "ranking": [0, 1]}),
        json.dumps({"prompt": "q", "responses": ["x", "y"], "ranking": [0, 1]}),  # the check refuses it
        "{not json",
        "[1]",
        json.dumps({"prompt": "q", "responses": ["x", "y"]}),
    ]
    path = _write_lines(tmp_path / "c.jsonl", lines)

    def check(c):
        return f"prompt + response 1 are {300 + len(c.prompt_id)} tokens, more than 256" if c.prompt_id != "a" else None

    records, report = read_records(path, Comparison, on_bad_rows="skip", check=check)
    assert [r.prompt_id for r in records] == ["a"] and report.n_bad == 8
    assert report.by_reason == {
        "field 'ranking': not a permutation": 2,
        "field 'rejected': same as 'chosen'": 1,
        "field 'messages': unknown role": 1,
        "prompt + response N are N tokens, more than N": 1,
        "invalid JSON": 1,
        "expected a JSON object": 1,
        "field 'ranking': missing": 1,
    }
    assert report.summary().startswith(f"{path}: skipped 8 bad rows, kept 1: 2 x field 'ranking': not a permutation; ")


def test_skip_counts_duplicate_ids_and_names_hashed_ones(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": p}) for p in ("q1", "q2", "q1", "q1")])
    records, report = read_records(path, Prompt, on_bad_rows="skip")
    assert [r.prompt for r in records] == ["q1", "q2"] and report.by_reason == {"duplicate prompt_id": 2}
    assert report.errors[0] == (f"{path}:line 3: duplicate prompt_id {prompt_hash('q1')!r} (first at line 1); the file "
                                "has no prompt ids and the id hashes the prompt: the prompt repeats")


def test_ids_hashed_from_the_prompt_are_stable_across_files_and_formats(tmp_path):
    rows = [{"prompt": "q1"}, {"messages": [user("q2")]}]
    a = read_records(_write(tmp_path / "a.jsonl", rows[:1]), Prompt)[0] + read_records(
        _write(tmp_path / "b.parquet", rows[1:]), Prompt)[0]
    b = read_records(_write(tmp_path / "c.jsonl", rows), Prompt)[0]
    assert [r.prompt_id for r in a] == [r.prompt_id for r in b] == [prompt_hash("q1"), prompt_hash("q2", [user("q2")])]
