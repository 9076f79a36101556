"""`raylhf label --stats`: per-labeler counts, agreement with its standard error, per-policy Likert and metadata."""

from __future__ import annotations

import math

import pytest

from raylhf.labeling import stats, store
from tests.labeling.conftest import make_items


def test_pair_agreement_counts_only_pairs_untied_by_both():
    # a: 0 > 1 > 2 = 3;  b: 1 > 0 > 2 > 3. Pairs: (0,1) a says 0 better, b says 1: disagree;
    # (0,2), (0,3), (1,2), (1,3): both agree; (2,3): tied by a, left out. 4 of 5.
    assert stats.pair_agreement([1, 2, 3, 3], [2, 1, 3, 4]) == (4, 5)
    assert stats.pair_agreement([1, 1], [1, 2]) == (0, 0)


def _rank(labeler, item_id, ranks, likert, seconds, metadata=None):
    return {"event": "rank", "labeler": labeler, "item_id": item_id, "ranks": ranks, "shown": [0, 1, 2, 3],
            "likert": likert, "metadata": metadata or {}, "note": "", "seconds": seconds}


def test_labeling_stats_by_hand(tmp_path):
    store.write_batch(tmp_path, make_items(3))  # sources: sft T=1.0 at 0 and 2, round0 T=0.7 at 1 and 3
    log = store.LabelsLog(tmp_path)
    hallucination = {"hallucination": [True, False, False, False]}
    log.append(_rank("alice", "p0", [1, 2, 3, 3], [7, 5, 3, 3], 10.0, hallucination))
    log.append(_rank("bob", "p0", [2, 1, 3, 4], [6, 7, 2, 1], 20.0))
    log.append(_rank("alice", "p1", [1, 2, 3, 4], [7, 6, 5, 4], 30.0))
    log.append(_rank("bob", "p1", [1, 2, 3, 4], [7, 6, 5, 4], 40.0))
    log.append({"event": "skip", "labeler": "alice", "item_id": "p2", "reason": "?", "seconds": 50.0})
    log.append({"event": "flag", "labeler": "bob", "item_id": "p2", "flags": ["personal_data"], "note": "",
                "seconds": 60.0})
    report = stats.labeling_stats(tmp_path, ["alice", "bob"], 0.999)
    assert report["labelers"] == {
        "alice": {"items": 3, "ranked": 2, "skips": 1, "flags": 0, "median_seconds": 30.0},
        "bob": {"items": 3, "ranked": 2, "skips": 0, "flags": 1, "median_seconds": 40.0},
    }
    # p0: 4 of 5 pairs (test above); p1: identical rankings, 6 of 6. p = 10/11.
    p = 10 / 11
    overall = report["agreement"]["overall"]
    assert (overall["agree"], overall["pairs"]) == (10, 11)
    assert overall["p"] == pytest.approx(p, abs=1e-4)
    assert overall["se"] == pytest.approx(math.sqrt(p * (1 - p) / 11), abs=1e-4)
    assert report["agreement"]["items"] == 2 and list(report["agreement"]["pairs"]) == ["alice/bob"]
    sft = report["sources"]["sft T=1.0"]  # responses 0 and 2 of the four rankings
    assert sft["responses"] == 8
    assert sft["likert_mean"] == pytest.approx((7 + 3 + 6 + 2 + 7 + 5 + 7 + 5) / 8, abs=1e-3)
    assert sft["metadata"] == {"hallucination": 0.5}  # only alice's p0 ranking records the field: 1 of 2
    table = stats.format_stats(report)
    assert "alice/bob" in table and "median s/item" in table and "round0 T=0.7" in table
