"""The labeling web server: one static page and a small JSON API over a labeling folder (`labeling.store`).

Stdlib only (`http.server`), so `raylhf label` starts in about a second and adds no dependency.

Security, by default:
- it binds 127.0.0.1; another host needs a labelers file (`label.labelers`: labeler id -> token);
- a labeler's token comes once in the URL (`/?token=...`) and becomes an HttpOnly SameSite=Strict cookie,
  the URL is then redirected to `/` so the token does not stay in the address bar or the history;
- every write is a POST of JSON with the labeler's CSRF token in `X-CSRF-Token` and an `Origin` equal to the
  server's own, its body capped at `label.max_body_bytes` (413), its content checked against the item the
  labeler was served (400 with the reason);
- the page is static, its script inserts model text with `textContent` only, and a Content-Security-Policy
  allows no inline script or style and no other origin.
"""

from __future__ import annotations

import hashlib
import hmac
import http.cookies
import json
import logging
import math
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from raylhf.labeling import store

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": ("label.html", "text/html; charset=utf-8"), "/label.js": ("label.js", "text/javascript; charset=utf-8"),
         "/label.css": ("label.css", "text/css; charset=utf-8")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'")
COOKIE = "raylhf_label"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LIKERT = range(1, 8)
MAX_NOTE = 2000
MAX_SECONDS = 86400.0


class BadRequest(Exception):
    """A write the server refuses: status and a one-line reason for the labeler."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def shown_order(labeler: str, item_id: str, k: int) -> list[int]:
    """The order a labeler sees an item's responses in: shuffled against position bias, the same for every
    visit of that labeler (a reload does not reorder what they were ranking), different across labelers."""
    return sorted(range(k), key=lambda i: hashlib.sha1(f"{labeler}\n{item_id}\n{i}".encode()).digest())


class LabelingApp:
    """What the page can read and write, per labeler; all state lives in the labeling folder's two files."""

    def __init__(self, folder: Path, labelers: dict[str, str], metadata: list[str], flags: list[str],
                 overlap: float, on_append: Callable[[], None] | None = None):
        self.folder = Path(folder)
        self.items = {item.item_id: item for item in store.read_batch(folder)}
        self.labelers = dict(labelers)
        self.metadata, self.flags = list(metadata), list(flags)
        self.queues = store.assignments(self.items.values(), list(labelers), overlap)
        self.log = store.LabelsLog(folder)
        self.on_append = on_append or (lambda: None)
        self._write = threading.Lock()  # check-then-append is one step: two tabs cannot answer an item twice

    # -- who ----------------------------------------------------------------------------------------------
    def labeler_of(self, token: str | None) -> str | None:
        if not token:
            return None
        found = None
        for labeler, own in self.labelers.items():  # compare every token, in constant time each
            if hmac.compare_digest(own.encode(), token.encode()):
                found = labeler
        return found

    def csrf(self, labeler: str) -> str:
        # Derived from the secret token, so it survives a server restart and a page keeps working.
        return hmac.new(self.labelers[labeler].encode(), b"raylhf-label-csrf", hashlib.sha256).hexdigest()

    # -- reads ---------------------------------------------------------------------------------------------
    def state(self, labeler: str) -> dict:
        events = self.log.events
        assigned = self.queues.get(labeler, [])
        todo = store.queue(events, labeler, assigned)
        last = store.last_standing(events, labeler)
        item = self.items[todo[0]] if todo else None
        return {
            "labeler": labeler, "csrf": self.csrf(labeler), "metadata": self.metadata, "flags": self.flags,
            "progress": {"done": len(assigned) - len(todo), "remaining": len(todo), "assigned": len(assigned)},
            "item": self._shown(labeler, item, events) if item else None,
            "undo": {"item_id": last["item_id"], "event": last["event"], "seq": last["seq"]} if last else None,
        }

    def _shown(self, labeler: str, item: store.BatchItem, events: list[dict]) -> dict:
        order = shown_order(labeler, item.item_id, len(item.responses))
        earlier = (item.messages or [])[:-1]  # the last turn is the user's, whose content is `prompt`
        return {"item_id": item.item_id, "prompt": item.prompt, "k": len(order),
                "context": [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in earlier],
                "responses": [item.responses[i] for i in order], "previous": _previous(labeler, item, order, events)}

    # -- writes --------------------------------------------------------------------------------------------
    def submit(self, labeler: str, kind: str, body: dict) -> dict:
        """Validate one submission (in the order the labeler saw), append it, return the saved event."""
        with self._write:
            if kind == "undo":
                last = store.last_standing(self.log.events, labeler)
                if last is None:
                    raise BadRequest(400, "nothing to undo")
                event = {"event": "undo", "labeler": labeler, "item_id": last["item_id"]}
            else:
                item = self._served(labeler, body.get("item_id"))
                event = {"event": kind, "labeler": labeler, "item_id": item.item_id,
                         **getattr(self, f"_{kind}")(labeler, item, body),
                         "seconds": _seconds(body.get("seconds"))}
            saved = self.log.append(event)
        self.on_append()
        return saved

    def _served(self, labeler: str, item_id) -> store.BatchItem:
        if not isinstance(item_id, str) or item_id not in self.items:
            raise BadRequest(400, f"item_id: unknown item {item_id!r:.80}")
        if item_id not in self.queues.get(labeler, []):
            raise BadRequest(400, f"item_id: {item_id!r:.80} is not assigned to labeler {labeler!r}")
        if (labeler, item_id) in store.current(self.log.events):
            raise BadRequest(400, f"item_id: {item_id!r:.80} is already answered (undo it to change the answer)")
        return self.items[item_id]

    def _rank(self, labeler: str, item: store.BatchItem, body: dict) -> dict:
        k = len(item.responses)
        order = shown_order(labeler, item.item_id, k)
        ranks = _ints(body.get("ranks"), k, "ranks", range(1, k + 1))
        if sorted(set(ranks)) != list(range(1, max(ranks) + 1)):
            raise BadRequest(400, f"ranks: {ranks} must be dense 1..m (tied responses share a rank)")
        if len(set(ranks)) == 1:
            raise BadRequest(400, "ranks: all responses tied says nothing; rank them or skip the item")
        likert = _ints(body.get("likert"), k, "likert", LIKERT)
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise BadRequest(400, "metadata: expected an object of field -> [K booleans]")
        unknown = sorted(set(metadata) - set(self.metadata))
        if unknown:
            raise BadRequest(400, f"metadata: unknown field {unknown[0]!r:.60} (label.metadata)")
        flags = {}
        for field in self.metadata:
            values = metadata.get(field, [False] * k)
            if not (isinstance(values, list) and len(values) == k and all(isinstance(v, bool) for v in values)):
                raise BadRequest(400, f"metadata.{field}: expected {k} booleans")
            flags[field] = values

        # Back from the order shown to the batch's response order.
        def original(shown: list) -> list:
            return [shown[order.index(i)] for i in range(k)]

        return {"ranks": original(ranks), "shown": order, "likert": original(likert),
                "metadata": {field: original(values) for field, values in flags.items()}, "note": _text(body, "note")}

    def _skip(self, labeler: str, item: store.BatchItem, body: dict) -> dict:
        reason = _text(body, "reason")
        if not reason.strip():
            raise BadRequest(400, "reason: say why the item is skipped")
        return {"reason": reason}

    def _flag(self, labeler: str, item: store.BatchItem, body: dict) -> dict:
        flags = body.get("flags")
        if not (isinstance(flags, list) and flags and all(isinstance(f, str) for f in flags)):
            raise BadRequest(400, "flags: expected a non-empty list of flags")
        unknown = sorted(set(flags) - set(self.flags))
        if unknown:
            raise BadRequest(400, f"flags: unknown flag {unknown[0]!r:.60} (label.flags: {', '.join(self.flags)})")
        return {"flags": sorted(set(flags), key=self.flags.index), "note": _text(body, "note")}


def _previous(labeler: str, item: store.BatchItem, order: list[int], events: list[dict]) -> dict | None:
    """The labeler's undone answer to an item back on screen, in the order shown: an undo is for fixing a
    mistake, so the page starts from the answer rather than from scratch."""
    answers = [e for e in events if e["event"] in store.SUBMISSIONS and e["labeler"] == labeler
               and e["item_id"] == item.item_id]
    if not answers:
        return None
    last = answers[-1]

    def shown(values: list) -> list:
        return [values[i] for i in order]

    if last["event"] == "rank":
        return {"event": "rank", "ranks": shown(last["ranks"]), "likert": shown(last["likert"]),
                "metadata": {f: shown(v) for f, v in last.get("metadata", {}).items()}, "note": last.get("note", "")}
    return {key: last[key] for key in ("event", "reason", "flags", "note") if key in last}


def _ints(values, k: int, name: str, allowed: range) -> list[int]:
    if not (isinstance(values, list) and len(values) == k):
        raise BadRequest(400, f"{name}: expected {k} values, one per response")
    for v in values:
        if not (isinstance(v, int) and not isinstance(v, bool) and v in allowed):
            raise BadRequest(400, f"{name}: {v!r:.20} is not in {allowed.start}..{allowed.stop - 1}")
    return list(values)


def _text(body: dict, name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or len(value) > MAX_NOTE:
        raise BadRequest(400, f"{name}: expected text of at most {MAX_NOTE} characters")
    return value


def _seconds(value) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= MAX_SECONDS):
        raise BadRequest(400, f"seconds: {value!r:.20} is not a duration in 0..{MAX_SECONDS:.0f}")
    return round(float(value), 3)


class LabelingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted server takes its port back at once

    def __init__(self, address: tuple[str, int], app: LabelingApp, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.static = {path: ((STATIC / name).read_bytes(), kind) for path, (name, kind) in PAGES.items()}
        super().__init__(address, Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def allowed_hosts(self) -> set[str] | None:
        """The Host headers a loopback server answers (against DNS rebinding); None: any (a public bind)."""
        host = self.server_address[0]
        if host not in ("127.0.0.1", "::1"):
            return None
        return {f"{name}:{self.port}" for name in ("127.0.0.1", "localhost", "[::1]")}


class Handler(BaseHTTPRequestHandler):
    server: LabelingServer
    server_version = "raylhf-label"
    sys_version = ""

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    # -- responses -----------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _labeler(self) -> str | None:
        cookie = http.cookies.SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            return None
        morsel = cookie.get(COOKIE)
        return self.server.app.labeler_of(morsel.value if morsel else None)

    def _host_ok(self) -> bool:
        allowed = self.server.allowed_hosts()
        return allowed is None or self.headers.get("Host", "") in allowed

    # -- GET -----------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if not self._host_ok():
            return self._error(403, "unknown Host")
        if url.path == "/":
            token = urllib.parse.parse_qs(url.query).get("token", [None])[0]
            if token is not None:
                if self.server.app.labeler_of(token) is None:
                    return self._error(403, "unknown token")
                cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=2592000"
                return self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})
            if self._labeler() is None:
                return self._send(403, b"Open the link with your token that `raylhf label` printed.\n",
                                  "text/plain; charset=utf-8")
        if url.path == "/favicon.ico":  # browsers ask; nothing to show, and no 404 in their console
            return self._send(204, b"", "text/plain")
        if url.path in self.server.static:
            body, kind = self.server.static[url.path]
            return self._send(200, body, kind)
        if url.path == "/api/state":
            labeler = self._labeler()
            if labeler is None:
                return self._error(403, "not signed in: open the link with your token")
            return self._json(200, self.server.app.state(labeler))
        self._error(404, "not found")

    # -- POST ----------------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        kind = self.path.removeprefix("/api/")
        if self.path not in ("/api/rank", "/api/skip", "/api/flag", "/api/undo"):
            return self._error(404, "not found")
        labeler = self._labeler()
        host = self.headers.get("Host", "")
        if not self._host_ok() or labeler is None:
            return self._error(403, "not signed in: open the link with your token")
        if self.headers.get("Origin") != f"http://{host}":
            return self._error(403, "cross-origin request refused")
        if not hmac.compare_digest(self.headers.get("X-CSRF-Token", ""), self.server.app.csrf(labeler)):
            return self._error(403, "missing or wrong CSRF token: reload the page")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(411, "Content-Length required")
        if length < 0:  # read(-1) would read to the end of the stream, past any cap
            self.close_connection = True
            return self._error(400, "negative Content-Length")
        if length > self.server.max_body_bytes:
            self.close_connection = True
            return self._error(413, f"body of {length} bytes is over label.max_body_bytes "
                                    f"({self.server.max_body_bytes})")
        if "application/json" not in self.headers.get("Content-Type", ""):
            return self._error(400, "expected Content-Type: application/json")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return self._error(400, f"body is not a JSON object: {e}")
        try:
            saved = self.server.app.submit(labeler, kind, body)
        except BadRequest as e:
            return self._error(e.status, str(e))
        # Acknowledged only now: the event is on disk (fsync'd) before these bytes leave.
        self._json(200, {"saved": {"event": saved["event"], "seq": saved["seq"], "item_id": saved["item_id"]},
                         "state": self.server.app.state(labeler)})


class Mirror:
    """Mirrors the labels log to a run kept at a URI (`RunStorage.push`) in the background, at most every
    `every_s`: the acknowledgment waits for the local fsync only, never for the network."""

    def __init__(self, push: Callable[[], object], every_s: float = 5.0):
        self.push, self.every_s = push, every_s
        self._due = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="label-mirror", daemon=True)
        self._thread.start()

    def __call__(self) -> None:
        self._due.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._due.wait(timeout=0.5):
                self._due.clear()
                self._push()
                self._stop.wait(self.every_s)

    def _push(self) -> None:
        try:
            self.push()
        except Exception as e:  # the labels are safe on local disk; the next push retries
            log.warning("could not mirror the labels log: %s", e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._push()
