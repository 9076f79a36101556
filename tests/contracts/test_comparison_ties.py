"""Comparisons ranked by people: `labeler` and `tied` survive JSONL and Parquet, are left out of a row while they
hold their defaults (the simulated labeler's rows keep their bytes), load with defaults from older files, and a row
whose responses are all tied is a bad row."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylhf.contracts.dataio import DataError, read_records, write_records
from raylhf.contracts.records import Comparison, to_row

HUMAN = Comparison("p0", "add 2 and 3", [" 5", " 6", " five"], [0, 2, 1], round=1, source="round0",
                   labeler="ann", tied=[True, False])
SIMULATED = Comparison("p1", "add 1 and 1", [" 2", " 3"], [0, 1], round=0, source="sft")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_labeler_and_ties_round_trip(tmp_path, suffix):
    path = write_records(tmp_path / f"c{suffix}", [HUMAN, SIMULATED])
    back, report = read_records(path, Comparison)
    assert back == [HUMAN, SIMULATED] and report.n_bad == 0
    assert back[1].labeler == "" and back[1].tied is None


def test_default_labeler_and_ties_are_left_out_of_the_row(tmp_path):
    # The bytes of a simulated row are what they were before the fields existed.
    path = write_records(tmp_path / "c.jsonl", [SIMULATED, HUMAN])
    first, second = path.read_text().splitlines()
    assert first == ('{"prompt_id": "p1", "prompt": "add 1 and 1", "responses": [" 2", " 3"], "ranking": [0, 1], '
                     '"round": 0, "source": "sft", "messages": null}')
    assert json.loads(second)["labeler"] == "ann" and json.loads(second)["tied"] == [True, False]
    assert "labeler" not in to_row(SIMULATED) and "tied" not in to_row(SIMULATED)


def test_a_parquet_file_without_the_columns_loads_with_defaults(tmp_path):
    old_schema = pa.schema([f for f in Comparison.SCHEMA if f.name not in ("labeler", "tied")])
    rows = [{k: v for k, v in to_row(SIMULATED).items()}]
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), tmp_path / "old.parquet")
    back, _ = read_records(tmp_path / "old.parquet", Comparison)
    assert back == [SIMULATED]


@pytest.mark.parametrize("tied,reason", [
    ([True, True], "field 'tied': every response is tied: no pair to train on"),
    ([True], "field 'tied': 1 values for K=3 responses, must be K-1"),
    ([1, 0], "field 'tied[0]': expected bool, got int"),
    ("no", "field 'tied': expected a list of bool, got str"),
])
def test_bad_ties_are_bad_rows(tmp_path, tied, reason):
    row = {**to_row(HUMAN), "tied": tied}
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(to_row(SIMULATED)) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match="line 2: " + reason.replace("[", r"\[").replace("]", r"\]")):
        read_records(path, Comparison)
    kept, report = read_records(path, Comparison, on_bad_rows="skip")
    assert kept == [SIMULATED] and report.n_bad == 1


def test_a_user_file_with_ties_and_labelers(tmp_path):
    # K-wise rows as another tool writes them: a null labeler is the default, ties as given.
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1],
                                "tied": [False, True], "labeler": None}) + "\n")
    (c,), _ = read_records(path, Comparison)
    assert (c.ranking, c.tied, c.labeler) == ([2, 0, 1], [False, True], "")
