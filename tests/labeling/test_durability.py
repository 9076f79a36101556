"""Acknowledged labels survive a killed server: `raylhf label` SIGKILLed after every answer, restarted, none lost."""

from __future__ import annotations

import json
import subprocess

from raylhf.labeling import store
from tests.labeling.conftest import REPO, TOKENS, Client, make_items


def test_twenty_acknowledged_answers_survive_a_sigkill_after_each(tmp_path, label_process):
    run = tmp_path / "runs" / "demo"
    folder = store.labeling_dir(run / "data" / "comparisons.jsonl")
    store.write_batch(folder, make_items(20, k=3))
    (tmp_path / "labelers.yaml").write_text("".join(f"{who}: {token}\n" for who, token in TOKENS.items()))
    server = label_process(run, f"label.labelers={tmp_path / 'labelers.yaml'}").start()
    second = subprocess.run([*server.args, "--port", "0"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert second.returncode == 2 and "another raylhf label is serving" in second.stderr
    acknowledged = []
    for n in range(20):
        who = ("alice", "bob")[n % 2]
        client = Client(server.port, TOKENS[who])
        item = client.state()["item"]
        if n % 5 == 4:
            status, reply = client.post("/api/skip", {"item_id": item["item_id"], "reason": f"r{n}", "seconds": n})
        else:
            status, reply = client.post("/api/rank", {"item_id": item["item_id"], "ranks": [3, 1, 2],
                                                      "likert": [1, 7, 4], "seconds": n})
        assert status == 200, reply
        acknowledged.append((reply["saved"]["seq"], who, item["item_id"]))
        server.restart()  # SIGKILL: no shutdown, no flush beyond what the write itself did
    events = store.read_events(folder)
    assert [(e["seq"], e["labeler"], e["item_id"]) for e in events] == acknowledged
    assert [e["seq"] for e in events] == list(range(1, 21))
    # each labeler's queue went on where it stopped: every item answered exactly once, in batch order
    assert sorted(item_id for _, _, item_id in acknowledged) == sorted(f"p{i}" for i in range(20))
    assert store.progress(folder, list(TOKENS), 0.0).answered == 20
    assert len(store.comparisons(folder)) == 16
    raw = (folder / store.LABELS_FILE).read_text().splitlines()
    assert len(raw) == 20 and all(json.loads(line)["seq"] == i + 1 for i, line in enumerate(raw))
