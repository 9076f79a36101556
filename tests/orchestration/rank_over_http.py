"""A labeler ranking a round's whole batch through the labeling server's HTTP API, as the page does: sign in with
the token, read the item on screen, post its ranks in the order shown."""

import http.client
import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from raylhf.configs.schema import LabelConfig
from raylhf.labeling.command import LOCAL_LABELER
from raylhf.labeling.server import LabelingApp, LabelingServer


@dataclass
class Ranked:
    """What the labeler answered: item ids ranked, the one ranked with a tie, the one skipped."""

    ranked: list[str] = field(default_factory=list)
    tied: str | None = None
    skipped: str | None = None


class _Browser:
    def __init__(self, port: int, token: str):
        self.port, self.cookie, self.csrf = port, "", ""
        status, headers, _ = self._request("GET", f"/?token={token}")
        assert status == 303, status
        self.cookie = headers["Set-Cookie"].split(";", 1)[0]

    def _request(self, method: str, path: str, body: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Host": f"127.0.0.1:{self.port}", "Cookie": self.cookie}
        if body is not None:
            headers.update({"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{self.port}",
                            "X-CSRF-Token": self.csrf})
        conn.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, dict(response.getheaders()), data

    def state(self) -> dict:
        status, _, data = self._request("GET", "/api/state")
        assert status == 200, data
        state = json.loads(data)
        self.csrf = state["csrf"]
        return state

    def post(self, path: str, body: dict) -> dict:
        status, _, data = self._request("POST", path, body)
        assert status == 200, data
        return json.loads(data)["state"]


def rank_batch(folder: Path, label: LabelConfig, rank: Callable[[str, Sequence[str]], list[int]]) -> Ranked:
    """Answer every item of the batch in `folder` as the one local labeler: ranked by `rank(prompt, responses)`
    (indices best first, as the task's labeler ranks), except the first item of K >= 3, whose two worst are
    ranked as a tie, and the second item, skipped."""
    token = secrets.token_urlsafe(24)
    server = LabelingServer(("127.0.0.1", 0), LabelingApp(folder, {LOCAL_LABELER: token}, label.metadata,
                                                          label.flags, label.overlap), label.max_body_bytes)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    done = Ranked()
    try:
        browser = _Browser(server.port, token)
        state = browser.state()
        while state["item"] is not None:
            item = state["item"]
            if len(done.ranked) == 1 and done.skipped is None:
                state = browser.post("/api/skip", {"item_id": item["item_id"], "reason": "unclear", "seconds": 1.0})
                done.skipped = item["item_id"]
                continue
            shown = item["responses"]
            ranks = [0] * len(shown)
            for position, i in enumerate(rank(item["prompt"], shown)):
                ranks[i] = position + 1
            if done.tied is None and len(shown) >= 3:
                worst = max(ranks)
                ranks = [worst - 1 if r == worst else r for r in ranks]  # the last two share a rank
                done.tied = item["item_id"]
            state = browser.post("/api/rank", {"item_id": item["item_id"], "ranks": ranks,
                                               "likert": [4] * len(shown), "seconds": 1.0})
            done.ranked.append(item["item_id"])
    finally:
        server.shutdown()
        server.server_close()
    return done
