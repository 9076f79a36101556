"""`raylhf label --stats`: what each labeler did, how often two labelers agree, and what the labels say per policy.

Agreement is InstructGPT's: on the items two labelers both ranked, the share of response pairs that both
order alike, among the pairs neither of them tied; its standard error is sqrt(p (1 - p) / n) over those pairs.
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

from raylhf.labeling import store


def labeling_stats(folder: Path, labeler_ids: list[str], overlap: float) -> dict:
    items = {item.item_id: item for item in store.read_batch(folder)}
    standing = store.current(store.read_events(folder))
    progress = store.progress(folder, labeler_ids, overlap)
    return {
        "folder": str(folder),
        "progress": progress._asdict(),
        "labelers": _per_labeler(standing, labeler_ids),
        "agreement": _agreement(standing),
        "sources": _per_source(standing, items),
    }


def _per_labeler(standing: dict, labeler_ids: list[str]) -> dict[str, dict]:
    out = {}
    for labeler in labeler_ids:
        mine = [e for (who, _), e in standing.items() if who == labeler]
        seconds = [e["seconds"] for e in mine if isinstance(e.get("seconds"), (int, float))]
        out[labeler] = {
            "items": len(mine),
            "ranked": sum(e["event"] == "rank" for e in mine),
            "skips": sum(e["event"] == "skip" for e in mine),
            "flags": sum(e["event"] == "flag" for e in mine),
            "median_seconds": round(statistics.median(seconds), 1) if seconds else None,
        }
    return out


def pair_agreement(ranks_a: list[int], ranks_b: list[int]) -> tuple[int, int]:
    """(pairs ordered alike, pairs untied by both) of two rankings of the same responses (ranks, 1 = best)."""
    agree = n = 0
    for i, j in itertools.combinations(range(len(ranks_a)), 2):
        a, b = ranks_a[i] - ranks_a[j], ranks_b[i] - ranks_b[j]
        if a and b:
            n += 1
            agree += (a > 0) == (b > 0)
    return agree, n


def _share(agree: int, n: int) -> dict:
    p = agree / n if n else None
    return {"agree": agree, "pairs": n, "p": round(p, 4) if n else None,
            "se": round(math.sqrt(p * (1 - p) / n), 4) if n else None}


def _agreement(standing: dict) -> dict:
    by_item: dict[str, dict[str, list[int]]] = {}
    for (labeler, item_id), event in standing.items():
        if event["event"] == "rank":
            by_item.setdefault(item_id, {})[labeler] = event["ranks"]
    total = [0, 0]
    pairs: dict[str, list[int]] = {}
    items = 0
    for rankings in by_item.values():
        if len(rankings) < 2:
            continue
        items += 1
        for a, b in itertools.combinations(sorted(rankings), 2):
            agree, n = pair_agreement(rankings[a], rankings[b])
            counts = pairs.setdefault(f"{a}/{b}", [0, 0])
            for c in (total, counts):
                c[0] += agree
                c[1] += n
    return {"items": items, "overall": _share(*total), "pairs": {key: _share(*c) for key, c in sorted(pairs.items())}}


def _per_source(standing: dict, items: dict) -> dict[str, dict]:
    """Likert mean and each metadata field's rate over the responses each policy sampled (`response_sources`)."""
    likert: dict[str, list[int]] = {}
    fields: dict[str, dict[str, list[bool]]] = {}
    for (_, item_id), event in sorted(standing.items()):
        if event["event"] != "rank" or item_id not in items:
            continue
        sources = items[item_id].response_sources
        for i, source in enumerate(sources):
            likert.setdefault(source, []).append(event["likert"][i])
            for field, values in event.get("metadata", {}).items():
                fields.setdefault(source, {}).setdefault(field, []).append(bool(values[i]))
    return {source: {"responses": len(scores), "likert_mean": round(statistics.fmean(scores), 3),
                     "metadata": {f: round(sum(v) / len(v), 3) for f, v in sorted(fields.get(source, {}).items())}}
            for source, scores in sorted(likert.items())}


def format_stats(report: dict) -> str:
    p = report["progress"]
    lines = [f"{report['folder']}: {p['answered']} of {p['assigned']} assignments answered; "
             f"{p['ranked_items']} of {p['items']} items ranked ({p['rankings']} rankings)", ""]
    lines += _table(["labeler", "items", "ranked", "skips", "flags", "median s/item"],
                    [[who, s["items"], s["ranked"], s["skips"], s["flags"],
                      "-" if s["median_seconds"] is None else s["median_seconds"]]
                     for who, s in report["labelers"].items()])
    agreement = report["agreement"]
    lines += ["", f"agreement on {agreement['items']} items ranked twice (pairs untied by both ordered alike):"]
    rows = [["overall", *_share_cells(agreement["overall"])]]
    rows += [[pair, *_share_cells(share)] for pair, share in agreement["pairs"].items()]
    lines += _table(["labelers", "agree", "pairs", "share", "± se"], rows)
    sources = report["sources"]
    if sources:  # one column per policy: there are few of them, and many metadata fields
        fields = sorted({f for s in sources.values() for f in s["metadata"]})
        lines += ["", "per source policy: responses ranked, Likert mean (1-7), share of responses marked per field"]
        lines += _table(["", *sources],
                        [["responses", *(s["responses"] for s in sources.values())],
                         ["likert mean", *(s["likert_mean"] for s in sources.values())],
                         *([field, *(s["metadata"].get(field, "-") for s in sources.values())] for field in fields)])
    return "\n".join(lines)


def _share_cells(share: dict) -> list:
    return [share["agree"], share["pairs"], "-" if share["p"] is None else f"{share['p']:.3f}",
            "-" if share["se"] is None else f"{share['se']:.3f}"]


def _table(header: list[str], rows: list[list]) -> list[str]:
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def fmt(row: list[str]) -> str:  # the first column left-aligned (names), the others right (numbers)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return [fmt(cells[0]), fmt(["-" * w for w in widths]), *(fmt(row) for row in cells[1:])]
