"""The labeling server over real HTTP: sign-in, CSRF, origin, body cap, validation, shown order -> batch order."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from raylhf.labeling import store
from raylhf.labeling.server import CSP, Mirror, shown_order
from tests.labeling.conftest import REPO, TOKENS, Client, make_items


def test_token_becomes_an_http_only_cookie_and_the_url_loses_it(serve):
    port = serve()
    anonymous = Client(port)
    status, headers, body = anonymous.request("GET", "/")
    assert status == 403 and b"token" in body
    assert anonymous.request("GET", "/?token=wrong-token-0123456789")[0] == 403
    assert anonymous.get("/api/state")[0] == 403
    status, headers, _ = anonymous.request("GET", f"/?token={TOKENS['alice']}")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    alice = Client(port, TOKENS["alice"])
    status, headers, body = alice.request("GET", "/")
    assert status == 200 and re.findall(rb"<script[^>]*>", body) == [b'<script src="/label.js" defer>']
    assert b"<style" not in body and b" style=" not in body and not re.search(rb"<[^>]* on[a-z]+=", body)  # nothing inline
    assert headers["Content-Security-Policy"] == CSP and headers["X-Content-Type-Options"] == "nosniff"
    assert alice.request("GET", "/label.js")[1]["Content-Type"].startswith("text/javascript")
    # DNS rebinding: a page of another name that resolves to 127.0.0.1 gets nothing.
    assert alice.request("GET", "/api/state", headers={"Host": "evil.example:80"})[0] == 403


def test_writes_need_csrf_same_origin_and_a_small_body(serve):
    port = serve(max_body_bytes=2048)
    alice = Client(port, TOKENS["alice"])
    item = alice.state()["item"]
    body = {"item_id": item["item_id"], "ranks": [1, 2, 3, 4], "likert": [4, 4, 4, 4], "seconds": 1.0}
    assert alice.post("/api/rank", body, {"X-CSRF-Token": "nope"})[0] == 403
    status, reply = alice.post("/api/rank", body, {"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in reply["error"]
    status, reply = alice.post("/api/rank", {**body, "note": "x" * 4000})
    assert status == 413 and "label.max_body_bytes" in reply["error"]
    sent = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}", "X-CSRF-Token": alice.csrf,
            "Content-Length": "-1"}
    assert alice.request("POST", "/api/rank", json.dumps(body).encode(), sent)[0] == 400  # no read to the end
    assert Client(port).post("/api/rank", body)[0] == 403  # no cookie
    assert alice.request("GET", "/api/rank")[0] == 404
    assert store.read_events(store.labeling_dir(REPO)) == []  # nothing was written anywhere
    assert alice.post("/api/rank", body)[0] == 200


def test_submissions_are_validated_with_a_reason(serve, label_folder):
    port = serve()
    alice, bob = Client(port, TOKENS["alice"]), Client(port, TOKENS["bob"])
    item = alice.state()["item"]
    ok = {"item_id": item["item_id"], "ranks": [1, 2, 2, 3], "likert": [7, 5, 5, 1], "seconds": 1.0}
    cases = [
        ({"ranks": [1, 2, 3]}, "ranks: expected 4 values"),
        ({"ranks": [1, 3, 3, 4]}, "dense"),
        ({"ranks": [1, 1, 1, 1]}, "all responses tied"),
        ({"likert": [8, 1, 1, 1]}, "likert: 8 is not in 1..7"),
        ({"metadata": {"made_up": [True] * 4}}, "metadata: unknown field 'made_up'"),
        ({"metadata": {"hallucination": [1, 0, 0, 0]}}, "metadata.hallucination: expected 4 booleans"),
        ({"seconds": -1}, "seconds"),
        ({"item_id": "nope"}, "unknown item"),
    ]
    for change, message in cases:
        status, reply = alice.post("/api/rank", {**ok, **change})
        assert status == 400 and message in reply["error"], (change, reply)
    status, reply = bob.post("/api/rank", ok)  # round robin: p0 is alice's
    assert status == 400 and "not assigned to labeler 'bob'" in reply["error"]
    assert alice.post("/api/flag", {"item_id": item["item_id"], "flags": ["spam"], "seconds": 1})[0] == 400
    assert alice.post("/api/skip", {"item_id": item["item_id"], "reason": " ", "seconds": 1})[0] == 400
    assert alice.post("/api/undo", {})[0] == 400  # nothing yet

    metadata = {"hallucination": [True, False, False, False]}
    status, reply = alice.post("/api/rank", {**ok, "metadata": metadata, "note": "B and C alike"})
    assert status == 200 and reply["saved"] == {"event": "rank", "seq": 1, "item_id": "p0"}
    assert reply["state"]["item"]["item_id"] == "p2" and reply["state"]["progress"] == {
        "done": 1, "remaining": 2, "assigned": 3}
    status, again = alice.post("/api/rank", ok)
    assert status == 400 and "already answered" in again["error"]
    # undo brings the item back first, with the answer as it was shown, to be fixed
    status, undone = alice.post("/api/undo", {})
    assert status == 200 and undone["saved"] == {"event": "undo", "seq": 2, "item_id": "p0"}
    previous = undone["state"]["item"]["previous"]
    assert undone["state"]["item"]["item_id"] == "p0" and previous["ranks"] == ok["ranks"]
    assert previous["likert"] == ok["likert"] and previous["metadata"]["hallucination"] == metadata["hallucination"]
    assert alice.post("/api/rank", {**ok, "metadata": metadata, "note": "B and C alike"})[0] == 200
    # On disk in the batch's response order: shown position s holds response order[s].
    event, _, again = store.read_events(label_folder)
    assert {k: v for k, v in again.items() if k not in ("seq", "time")} == \
        {k: v for k, v in event.items() if k not in ("seq", "time")}
    order = shown_order("alice", "p0", 4)
    assert event["shown"] == order and item["responses"] == [f"answer 0.{i}" for i in order]
    for s, i in enumerate(order):
        assert event["ranks"][i] == ok["ranks"][s] and event["likert"][i] == ok["likert"][s]
        assert event["metadata"]["hallucination"][i] == metadata["hallucination"][s]
    assert set(event["metadata"]) == set(alice.state()["metadata"]) and event["note"] == "B and C alike"


def test_shown_order_is_shuffled_per_labeler_and_stable():
    orders = {labeler: shown_order(labeler, "p7", 9) for labeler in ("alice", "bob", "carol")}
    assert all(sorted(o) == list(range(9)) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == 3
    assert shown_order("alice", "p7", 9) == orders["alice"]


def _label(tmp_path, *args, timeout=30):
    return subprocess.run([sys.executable, "-m", "raylhf", "label", f"output_dir={tmp_path / 'runs'}", "name=demo",
                           *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_cli_refuses_a_public_host_without_labelers_and_names_the_missing_batch(tmp_path):
    out = _label(tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "no batch to label" in out.stderr and "raylhf collect collect.labeler=human" in out.stderr
    store.write_batch(store.labeling_dir(tmp_path / "runs/demo/data/comparisons.jsonl"), [])
    out = _label(tmp_path, "--host", "0.0.0.0")
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("config error: label.labelers:")
    (tmp_path / "labelers.yaml").write_text("alice: short\n")
    out = _label(tmp_path, f"label.labelers={tmp_path / 'labelers.yaml'}")
    assert out.returncode == 2 and "label.labelers:" in out.stderr and "at least 16 characters" in out.stderr


def test_stats_on_the_latest_round_and_a_light_start(tmp_path):
    run = tmp_path / "runs" / "demo"
    store.write_batch(store.labeling_dir(run / "data" / "comparisons.jsonl"), [])
    round2 = store.labeling_dir(run / "rounds" / "2" / "comparisons.jsonl")
    store.write_batch(round2, make_items(2))
    store.LabelsLog(round2).append({"event": "skip", "labeler": "local", "item_id": "p0", "reason": "r",
                                    "seconds": 4.0})
    t0 = time.monotonic()
    out = _label(tmp_path, "--stats", "--json")
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 5  # no torch, Ray or vLLM on this path
    report = json.loads(out.stdout)
    assert report["folder"] == str(round2) and report["labelers"]["local"]["skips"] == 1
    imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "raylhf", "label", "--help"],
                             capture_output=True, text=True, cwd=REPO).stderr
    assert not any(f" {heavy}" in imports for heavy in ("torch\n", "ray\n", "vllm\n", "transformers\n"))


def test_mirror_pushes_after_appends_in_the_background_and_on_close():
    pushes = []
    mirror = Mirror(lambda: pushes.append(time.monotonic()), every_s=0.2)
    for _ in range(5):
        mirror()
    deadline = time.monotonic() + 5
    while not pushes and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    burst = len(pushes)
    assert burst in (1, 2)  # a burst of answers: a push or two, not five
    mirror.close()
    assert len(pushes) == burst + 1  # the last state goes up when the server stops
