"""The labeling folder of a collect output: the pending batch, the labels log, and what follows from them.

For a collect output `X/comparisons.jsonl` the folder is `X/comparisons.labeling/` (`labeling_dir`). It holds

- `batch.jsonl`: the prompts and their K responses to rank, written once (atomically) by the sample step and
  never rewritten, so a resumed run ranks what was sampled, not a fresh sample;
- `labels.jsonl`: the labels log, append-only. Every submission (`rank`, `skip`, `flag`) and every `undo` is
  one line, on disk (flushed and fsync'd) before the labeler is told it was saved. Everything else (each
  labeler's queue, the progress, the comparisons) is derived from the two files, so a server killed at any
  moment loses nothing it acknowledged and continues where each labeler left off.

Light on purpose (stdlib and the records): `raylhf label` and the pipeline's progress check import it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from raylhf.contracts.dataio import fsync_dir
from raylhf.contracts.records import MAX_RESPONSES, MIN_RESPONSES, Comparison

log = logging.getLogger(__name__)

BATCH_FILE = "batch.jsonl"
LABELS_FILE = "labels.jsonl"
SUBMISSIONS = ("rank", "skip", "flag")
EVENTS = (*SUBMISSIONS, "undo")


class LabelingError(ValueError):
    """A batch or labels file that cannot be read; the message names the file and line."""


def labeling_dir(comparisons: Path) -> Path:
    """The labeling folder of a collect output: `X/comparisons.jsonl` -> `X/comparisons.labeling/`."""
    comparisons = Path(comparisons)
    return comparisons.parent / (comparisons.stem + ".labeling")


@dataclass
class BatchItem:
    """One prompt of the pending batch and the K responses a labeler ranks."""

    item_id: str  # = prompt_id, unique within the batch
    prompt_id: str
    prompt: str
    # the conversation before the responses as {role, content} turns; None: `prompt` is the whole prompt
    messages: list[dict[str, str]] | None
    responses: list[str]  # [K], 2 <= K <= 9, distinct
    response_sources: list[str]  # [K], the policy and temperature that sampled each response ("sft T=1.0")
    round: int = 0
    source: str = ""  # the `source` tag the item's comparisons get ("round0", "sft")

    def check(self) -> str | None:
        """Why the item cannot be ranked, or None."""
        k = len(self.responses)
        if not MIN_RESPONSES <= k <= MAX_RESPONSES:
            return f"item {self.item_id!r}: {k} responses, expected {MIN_RESPONSES}..{MAX_RESPONSES}"
        if len(set(self.responses)) != k:
            return f"item {self.item_id!r}: responses are not distinct"
        if len(self.response_sources) != k:
            return f"item {self.item_id!r}: {len(self.response_sources)} response_sources for {k} responses"
        return None


def write_batch(folder: Path, items: list[BatchItem]) -> Path:
    """Write the batch once, atomically (tmp file, fsync, rename): a reader sees all of it or none."""
    folder = Path(folder)
    seen: set[str] = set()
    for item in items:
        problem = item.check() or (f"item {item.item_id!r} appears twice" if item.item_id in seen else None)
        if problem:
            raise LabelingError(f"{folder / BATCH_FILE}: {problem}")
        seen.add(item.item_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BATCH_FILE
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)
    return path


def read_batch(folder: Path) -> list[BatchItem]:
    path = Path(folder) / BATCH_FILE
    if not path.is_file():
        raise LabelingError(f"{path}: no batch file")
    items, seen = [], set()
    fields = set(BatchItem.__dataclass_fields__)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                item = BatchItem(**{k: v for k, v in row.items() if k in fields})
            except (ValueError, TypeError) as e:
                raise LabelingError(f"{path}:line {n}: not a batch item: {e}") from e
            problem = item.check() or (f"item {item.item_id!r} appears twice" if item.item_id in seen else None)
            if problem:
                raise LabelingError(f"{path}:line {n}: {problem}")
            seen.add(item.item_id)
            items.append(item)
    return items


def read_events(folder: Path) -> list[dict]:
    """The labels log's events in order. A torn last line (the writer was killed mid-line) is skipped with a
    warning: it was never acknowledged. A bad line before the last is damage, and an error."""
    path = Path(folder) / LABELS_FILE
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    last = max((n for n, raw in enumerate(lines, 1) if raw.strip()), default=0)
    events = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            event = _event(raw)
        except ValueError as e:
            if n == last:
                log.warning("%s:line %d: skipping a torn last line (%s)", path, n, e)
                continue
            raise LabelingError(f"{path}:line {n}: not a label event: {e}") from e
        if n == len(lines):  # no newline after it: the write was cut short, never acknowledged
            log.warning("%s:line %d: skipping a last line without its newline", path, n)
            continue
        events.append(event)
    return events


class LabelsLog:
    """The append-only labels log of one labeling folder, for one writing process (the label server)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LABELS_FILE
        self._lock = threading.Lock()
        self._drop_torn_tail()
        self._events = read_events(folder)
        self._seq = max((e.get("seq", 0) for e in self._events), default=0)

    def _drop_torn_tail(self) -> None:
        # A write killed mid-line leaves a last line without its newline (or not JSON); appending after it
        # would glue the next event onto it or bury it mid-file. It was never acknowledged, so it goes.
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        body = data.rstrip(b"\n")
        start = body.rfind(b"\n") + 1
        if not body or (data.endswith(b"\n") and _is_event(body[start:])):
            return
        log.warning("%s: dropping a torn last line of %d bytes", self.path, len(data) - start)
        with open(self.path, "r+b") as f:
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())

    @property
    def events(self) -> list[dict]:
        with self._lock:
            return list(self._events)

    def append(self, event: dict) -> dict:
        """Write one event (seq and time assigned here) and return it once it is on disk."""
        if event.get("event") not in EVENTS:
            raise ValueError(f"unknown label event {event.get('event')!r}")
        with self._lock:
            self._seq += 1
            row = {"event": event["event"], "seq": self._seq, "time": round(time.time(), 3),
                   **{k: v for k, v in event.items() if k not in ("event", "seq", "time")}}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._events.append(row)
            return row


def _event(raw: bytes) -> dict:
    event = json.loads(raw)
    if not isinstance(event, dict) or event.get("event") not in EVENTS:
        raise ValueError(f"unknown event {event!r:.80}")
    if not (isinstance(event.get("labeler"), str) and isinstance(event.get("item_id"), str)):
        raise ValueError("no labeler or item_id")
    return event


def _is_event(raw: bytes) -> bool:
    try:
        _event(raw)
        return True
    except ValueError:
        return False


def overlap_draw(item_id: str) -> float:
    """A stable number in [0, 1) per item: whether it goes to a second labeler does not depend on the order."""
    return int.from_bytes(hashlib.sha1(item_id.encode("utf-8")).digest()[:8], "big") / 2.0**64


def assignments(items: Iterable[BatchItem], labeler_ids: list[str], overlap: float) -> dict[str, list[str]]:
    """Item ids per labeler, in batch order: item i to ids[i % n] (ids sorted); an item whose `overlap_draw` is
    below `overlap` also to ids[(i + 1) % n], so that share is ranked twice (agreement, `raylhf label --stats`)."""
    ids = sorted(labeler_ids)
    items = list(items)
    queues: dict[str, list[str]] = {labeler: [] for labeler in ids}
    if not ids:
        return queues
    for i, item in enumerate(items):
        queues[ids[i % len(ids)]].append(item.item_id)
        if len(ids) >= 2 and overlap_draw(item.item_id) < overlap:
            queues[ids[(i + 1) % len(ids)]].append(item.item_id)
    for labeler in ids:  # the second labeler's items sit in batch order too
        order = {item_id: n for n, item_id in enumerate(i.item_id for i in items)} if not isinstance(items, list) else None
        if order is not None:
            queues[labeler].sort(key=order.__getitem__)
    return queues


def current(events: Iterable[dict]) -> dict[tuple[str, str], dict]:
    """Each labeler's standing submission per item: the latest rank/skip/flag not withdrawn by an undo."""
    stacks: dict[tuple[str, str], list[dict]] = {}
    for event in events:
        key = (event["labeler"], event["item_id"])
        if event["event"] == "undo":
            if stacks.get(key):
                stacks[key].pop()
        else:
            stacks.setdefault(key, []).append(event)
    return {key: stack[-1] for key, stack in stacks.items() if stack}


def queue(events: list[dict], labeler: str, assigned: list[str]) -> list[str]:
    """The labeler's items still to answer, in the order they are served: items whose answer was undone
    first (the latest undo first), then the rest in assignment order."""
    standing = current(events)
    todo = [item_id for item_id in assigned if (labeler, item_id) not in standing]
    undone = {e["item_id"]: e["seq"] for e in events if e["event"] == "undo" and e["labeler"] == labeler}
    position = {item_id: n for n, item_id in enumerate(todo)}
    return sorted(todo, key=lambda item_id: (-undone.get(item_id, -1), position[item_id]))


def last_standing(events: list[dict], labeler: str) -> dict | None:
    """The labeler's latest submission that an undo would withdraw, or None."""
    standing = current(events)
    mine = [e for (who, _), e in standing.items() if who == labeler]
    return max(mine, key=lambda e: e["seq"], default=None)


class Progress(NamedTuple):
    ranked_items: int  # items with at least one standing ranking
    rankings: int  # standing rankings (an item ranked by two labelers counts twice)
    answered: int  # assignments with a standing rank, skip or flag
    assigned: int  # assignments (an overlap item counts once per labeler)
    items: int  # items in the batch


def progress(folder: Path, labeler_ids: list[str], overlap: float) -> Progress:
    items = read_batch(folder)
    standing = current(read_events(folder))
    queues = assignments(items, labeler_ids, overlap)
    ranks = [e for e in standing.values() if e["event"] == "rank"]
    return Progress(
        ranked_items=len({e["item_id"] for e in ranks}),
        rankings=len(ranks),
        answered=sum((labeler, item_id) in standing for labeler, ids in queues.items() for item_id in ids),
        assigned=sum(len(ids) for ids in queues.values()),
        items=len(items),
    )


def ranking_of(ranks: list[int]) -> tuple[list[int], list[bool]]:
    """Ranks per response (1 = best, ties share one) -> (response indices best first, ties kept in index
    order; tied[i]: ranking[i] and ranking[i + 1] are equally good)."""
    ranking = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    return ranking, [ranks[a] == ranks[b] for a, b in zip(ranking, ranking[1:])]


def comparisons(folder: Path) -> list[Comparison]:
    """One Comparison per standing ranking, in batch order then labeler id; an all-tied ranking says nothing
    about any pair and is left out."""
    standing = current(read_events(folder))
    by_item: dict[str, list[dict]] = {}
    for (labeler, item_id), event in sorted(standing.items()):
        if event["event"] == "rank":
            by_item.setdefault(item_id, []).append(event)
    rows = []
    for item in read_batch(folder):
        for event in by_item.get(item.item_id, []):
            ranking, tied = ranking_of(event["ranks"])
            if all(tied):
                continue
            rows.append(Comparison(
                prompt_id=item.prompt_id, prompt=item.prompt, responses=list(item.responses), ranking=ranking,
                round=item.round, source=item.source, messages=item.messages, labeler=event["labeler"], tied=tied,
            ))
    return rows
