"""A hand-made batch in a run directory, and the labeling server over real HTTP (a thread or `raylhf label`)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raylhf.configs.sections.stages import LabelConfig
from raylhf.labeling import store
from raylhf.labeling.server import LabelingApp, LabelingServer

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef"}
LABEL = LabelConfig()


def make_items(n: int, k: int = 4, *, prefix: str = "p", round_: int = 0) -> list[store.BatchItem]:
    return [
        store.BatchItem(
            item_id=f"{prefix}{i}", prompt_id=f"{prefix}{i}", prompt=f"Write a word for the number {i}.",
            messages=None, responses=[f"answer {i}.{j}" for j in range(k)],
            response_sources=["sft T=1.0" if j % 2 == 0 else "round0 T=0.7" for j in range(k)],
            round=round_, source="round0",
        )
        for i in range(n)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """A labeler's browser reduced to HTTP: their cookie, their CSRF token, their server's origin."""

    def __init__(self, port: int, token: str | None = None):
        self.port, self.cookie, self.csrf = port, None, ""
        if token is not None:
            status, headers, _ = self.request("GET", f"/?token={token}")
            assert status == 303, status
            self.cookie = headers["Set-Cookie"].split(";", 1)[0]
            self.csrf = self.get("/api/state")[1]["csrf"]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = {"Host": f"127.0.0.1:{self.port}", **({"Cookie": self.cookie} if self.cookie else {}), **(headers or {})}
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, dict(response.getheaders()), data

    def get(self, path: str):
        status, _, data = self.request("GET", path)
        return status, json.loads(data) if data.startswith(b"{") else data

    def post(self, path: str, payload: dict, headers: dict | None = None):
        sent = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{self.port}",
                "X-CSRF-Token": self.csrf, **(headers or {})}
        status, _, data = self.request("POST", path, json.dumps(payload).encode(), sent)
        return status, json.loads(data)

    def state(self) -> dict:
        status, state = self.get("/api/state")
        assert status == 200, state
        return state

    def rank_shown(self, ranks: list[int], likert: list[int] | None = None, **extra) -> dict:
        """Rank the item on screen by shown position; returns the reply (asserting it was saved)."""
        item = self.state()["item"]
        status, reply = self.post("/api/rank", {"item_id": item["item_id"], "ranks": ranks,
                                                "likert": likert or [4] * item["k"], "seconds": 3.0, **extra})
        assert status == 200, reply
        return reply


@pytest.fixture
def label_folder(tmp_path) -> Path:
    """Round 0's labeling folder of run `demo` under tmp_path/runs, with five K = 4 items."""
    folder = store.labeling_dir(tmp_path / "runs" / "demo" / "data" / "comparisons.jsonl")
    store.write_batch(folder, make_items(5))
    return folder


@pytest.fixture
def serve(label_folder):
    """Start a labeling server in a thread: serve(labelers, overlap=..., max_body_bytes=...) -> port."""
    servers = []

    def start(labelers=TOKENS, overlap: float = 0.0, folder: Path = label_folder, max_body_bytes: int = 65536) -> int:
        app = LabelingApp(folder, labelers, LABEL.metadata, LABEL.flags, overlap)
        server = LabelingServer(("127.0.0.1", 0), app, max_body_bytes)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server.port

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class LabelProcess:
    """`raylhf label` as a real process on a fixed port, killed with SIGKILL and restarted like a crash."""

    def __init__(self, run_root: Path, *overrides: str, port: int | None = None):
        self.args = [sys.executable, "-m", "raylhf", "label", f"output_dir={run_root.parent}",
                     f"name={run_root.name}", *overrides]
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.stdout = ""

    def start(self, timeout: float = 20.0) -> "LabelProcess":
        self.proc = subprocess.Popen([*self.args, "--port", str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # up once the port answers
            if self.proc.poll() is not None:
                raise AssertionError(f"raylhf label exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("raylhf label did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> "LabelProcess":
        self.kill()
        return self.start()


@pytest.fixture
def label_process():
    started = []

    def make(run_root: Path, *overrides: str, port: int | None = None) -> LabelProcess:
        started.append(LabelProcess(run_root, *overrides, port=port))
        return started[-1]

    yield make
    for process in started:
        process.kill()
