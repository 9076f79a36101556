"""The labeling folder: batch, labels log (durability, torn lines), queues, progress and the comparisons."""

from __future__ import annotations

import json
import logging

import pytest

from raylhf.contracts.records import Comparison
from raylhf.labeling import store
from tests.labeling.conftest import make_items


def test_labeling_dir_sits_beside_the_comparisons(tmp_path):
    assert store.labeling_dir(tmp_path / "rounds" / "1" / "comparisons.jsonl") == tmp_path / "rounds/1/comparisons.labeling"


def test_batch_round_trips_and_bad_items_name_the_file(tmp_path):
    items = make_items(3, k=3)
    items[1].messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": items[1].prompt}]
    store.write_batch(tmp_path, items)
    assert store.read_batch(tmp_path) == items
    assert not list(tmp_path.glob("*.tmp"))
    bad = make_items(1, k=2)
    bad[0].responses = ["same", "same"]
    with pytest.raises(store.LabelingError, match=r"batch.jsonl: item 'p0': responses are not distinct"):
        store.write_batch(tmp_path / "x", bad)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "batch.jsonl").write_text(json.dumps({"item_id": "a"}) + "\n")
    with pytest.raises(store.LabelingError, match=r"batch.jsonl:line 1: not a batch item"):
        store.read_batch(tmp_path / "y")


def test_torn_last_line_is_skipped_and_dropped_before_the_next_append(tmp_path, caplog):
    log = store.LabelsLog(tmp_path)
    first = log.append({"event": "skip", "labeler": "a", "item_id": "p0", "reason": "r", "seconds": 1.0})
    assert first["seq"] == 1 and list(first)[:3] == ["event", "seq", "time"]
    with open(tmp_path / store.LABELS_FILE, "a") as f:
        f.write('{"event": "rank", "seq": 2, "lab')  # a write cut short by a kill
    with caplog.at_level(logging.WARNING):
        assert [e["seq"] for e in store.read_events(tmp_path)] == [1]
    assert "skipping" in caplog.text and "labels.jsonl:line 2" in caplog.text
    restarted = store.LabelsLog(tmp_path)
    second = restarted.append({"event": "undo", "labeler": "a", "item_id": "p0"})
    assert second["seq"] == 2
    assert [e["seq"] for e in store.read_events(tmp_path)] == [1, 2]
    assert (tmp_path / store.LABELS_FILE).read_text().count("\n") == 2


def test_bad_line_inside_the_log_is_an_error_naming_the_line(tmp_path):
    undo = json.dumps({"event": "undo", "labeler": "a", "item_id": "p0"})
    (tmp_path / store.LABELS_FILE).write_text(f"{undo}\nnot json\n{undo}\n")
    with pytest.raises(store.LabelingError, match=r"labels.jsonl:line 2: not a label event"):
        store.read_events(tmp_path)


def test_assignments_round_robin_with_a_stable_overlap():
    items = make_items(40)
    queues = store.assignments(items, ["bob", "alice"], 0.3)
    twice = [i.item_id for i in items if store.overlap_draw(i.item_id) < 0.3]
    assert 4 <= len(twice) <= 20
    for n, item in enumerate(items):
        first, second = ("alice", "bob") if n % 2 == 0 else ("bob", "alice")
        assert item.item_id in queues[first]
        assert (item.item_id in queues[second]) == (item.item_id in twice)
    assert queues == store.assignments(items, ["alice", "bob"], 0.3)  # deterministic, order of ids irrelevant
    assert store.assignments(items, ["solo"], 0.9) == {"solo": [i.item_id for i in items]}


def _rank(labeler, item_id, ranks, **extra):
    return {"event": "rank", "labeler": labeler, "item_id": item_id, "ranks": ranks, "shown": list(range(len(ranks))),
            "likert": [4] * len(ranks), "metadata": {}, "note": "", "seconds": 2.0, **extra}


def test_undo_withdraws_the_latest_submission_and_requeues_the_item_first(tmp_path):
    log = store.LabelsLog(tmp_path)
    log.append(_rank("a", "p0", [1, 2, 3, 4]))
    log.append({"event": "skip", "labeler": "a", "item_id": "p1", "reason": "unclear", "seconds": 1.0})
    assert store.queue(log.events, "a", ["p0", "p1", "p2", "p3"]) == ["p2", "p3"]
    assert store.last_standing(log.events, "a")["item_id"] == "p1"
    log.append({"event": "undo", "labeler": "a", "item_id": "p1"})
    assert store.queue(log.events, "a", ["p0", "p1", "p2", "p3"]) == ["p1", "p2", "p3"]
    log.append({"event": "undo", "labeler": "a", "item_id": "p0"})
    assert store.queue(log.events, "a", ["p0", "p1", "p2", "p3"]) == ["p0", "p1", "p2", "p3"]
    log.append(_rank("a", "p0", [2, 1, 1, 3]))
    standing = store.current(log.events)
    assert list(standing) == [("a", "p0")] and standing[("a", "p0")]["ranks"] == [2, 1, 1, 3]


def test_progress_and_comparisons_row_by_row(tmp_path):
    items = make_items(3, k=4)
    store.write_batch(tmp_path, items)
    log = store.LabelsLog(tmp_path)
    log.append(_rank("bob", "p0", [3, 1, 2, 2]))
    log.append(_rank("alice", "p0", [1, 2, 3, 4]))
    log.append(_rank("alice", "p1", [1, 1, 1, 1]))  # all tied: no pair to learn from
    log.append(_rank("alice", "p2", [4, 3, 2, 1]))
    log.append({"event": "undo", "labeler": "alice", "item_id": "p2"})
    log.append({"event": "flag", "labeler": "bob", "item_id": "p2", "flags": ["bad_prompt"], "note": "", "seconds": 1.0})
    assert store.progress(tmp_path, ["alice", "bob"], 0.0) == store.Progress(
        ranked_items=2, rankings=3, answered=1, assigned=3, items=3)  # alice has p0 (answered) and p2, bob p1
    rows = store.comparisons(tmp_path)
    common = dict(prompt_id="p0", prompt=items[0].prompt, responses=items[0].responses, round=0, source="round0",
                  messages=None)
    assert rows == [
        Comparison(**common, ranking=[0, 1, 2, 3], labeler="alice", tied=[False, False, False]),
        Comparison(**common, ranking=[1, 2, 3, 0], labeler="bob", tied=[False, True, False]),
    ]
