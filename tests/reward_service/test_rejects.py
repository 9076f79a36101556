"""The rejects file and the reject-rate limit (no Ray, no models)."""

from __future__ import annotations

import json

import pytest

from raylhf.contracts.records import Rollout
from raylhf.reward_service.rejects import NONFINITE_RM_SCORE, TOKEN_OUT_OF_VOCAB, Reject, RejectLog


def rollout(i: int) -> Rollout:
    return Rollout(f"p{i}", [1, 5, 6], [7, 2], [-1.0, -1.0], policy_version=3, finish_reason="eos", sample_id=f"s{i}")


def test_rejects_file_has_one_row_per_rollout_with_its_cause(tmp_path):
    path = tmp_path / "out" / "rejects.jsonl"  # the folder is created
    log = RejectLog(path, max_rate=1.0, min_rollouts=1)
    log.record([Reject.of(rollout(0), TOKEN_OUT_OF_VOCAB, "response token id 999 ...")], scored=4)
    log.record([], scored=3)
    log.record([Reject.of(rollout(1), NONFINITE_RM_SCORE, "reward model returned nan")], scored=0)
    log.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["sample_id"], r["cause"]) for r in rows] == [("s0", TOKEN_OUT_OF_VOCAB), ("s1", NONFINITE_RM_SCORE)]
    assert rows[0]["prompt_id"] == "p0" and rows[0]["policy_version"] == 3
    assert rows[0]["prompt_ids"] == [1, 5, 6] and rows[0]["response_ids"] == [7, 2]
    assert rows[1]["detail"] == "reward model returned nan" and rows[1]["time"] > 0
    assert set(rows[0]) == {
        "sample_id", "prompt_id", "policy_version", "prompt_ids", "response_ids", "cause", "detail", "time"
    }
    assert log.stats() == {
        "rejected": 2,
        "rejected_by_cause": {TOKEN_OUT_OF_VOCAB: 1, NONFINITE_RM_SCORE: 1},
        "reject_rate": 2 / 9,
        "rejects_path": str(path),
    }
    again = RejectLog(path, max_rate=1.0, min_rollouts=1)  # a resumed run appends
    again.record([Reject.of(rollout(2), NONFINITE_RM_SCORE, "x")], scored=0)
    again.close()
    assert len(path.read_text().splitlines()) == 3


def test_rate_is_enforced_only_after_min_rollouts_and_names_key_limit_and_file(tmp_path):
    log = RejectLog(tmp_path / "r.jsonl", max_rate=0.25, min_rollouts=8)
    log.record([Reject.of(rollout(i), TOKEN_OUT_OF_VOCAB, "x") for i in range(3)], scored=2)
    assert log.over_limit() is None  # 3 of 5 rejected, but only 5 seen
    log.record([], scored=3)  # 3 of 8 = 0.375 > 0.25
    reason = log.over_limit()
    assert reason is not None
    for needle in ("reward.max_reject_rate", "3 of 8", "0.3750", "limit 0.25", "reward.reject_rate_min_rollouts=8",
                   "token_out_of_vocab 3", str(tmp_path / "r.jsonl")):
        assert needle in reason, needle
    log.record([], scored=4)  # 3 of 12 = 0.25: at the limit is within it
    assert log.over_limit() is None
    log.close()

    counted_only = RejectLog(None, max_rate=0.0, min_rollouts=1)
    counted_only.record([Reject.of(rollout(0), NONFINITE_RM_SCORE, "x")], scored=10)
    assert "no rejects file configured" in counted_only.over_limit()


def test_reject_counts_survive_a_resume():
    log = RejectLog(None, max_rate=0.5, min_rollouts=1)
    log.record([Reject.of(rollout(0), NONFINITE_RM_SCORE, "x")], scored=5)
    resumed = RejectLog(None, max_rate=0.5, min_rollouts=1)
    resumed.load_state_dict(json.loads(json.dumps(log.state_dict())))
    assert resumed.stats() == log.stats()


def test_unknown_cause_is_refused():
    with pytest.raises(ValueError, match="unknown reject cause"):
        Reject.of(rollout(0), "bad_luck", "x")
