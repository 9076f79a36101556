"""What a stage summary describes, and whether it still does.

Each stage's summary records the checkpoint it describes (`checkpoint`: the model a training stage wrote),
or the models its figures are about (`evaluated`: the policies and reward model an evaluation scored), each
as a path and the sha256 of its weights, and the inputs it read (`inputs`: paths, with the weights' sha256
for a checkpoint). Paths inside the run are recorded relative to it, so a run copied or moved elsewhere still
finds its own models; others are absolute.

Before a run's summaries are reported or built on (`raylhf run`'s report step, `raylhf iterate`, a stage
skipped because its output exists), `check_summary` compares those hashes with the weights in place: a model
replaced by hand, or by a command that did not write the stage's summary, is refused with one line naming
the summary and the checkpoint, instead of reporting another model's numbers. A summary written before the
hashes existed has none and is not checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from raylhf.configs.loader import ConfigError
from raylhf.orchestration.paths import RunPaths

_CHUNK = 1 << 20
# (file, size, mtime_ns, inode) of every weight file -> digest: a command that checks a model twice (a skipped
# stage, then the report) reads its bytes once. A replaced or rewritten file has a new inode or mtime.
_digests: dict[tuple, str] = {}


class SummaryMismatch(ConfigError):
    """A stage summary describes weights other than the checkpoint now in its place."""


def weights_digest(checkpoint: Path) -> str | None:
    """sha256 over a checkpoint's `*.safetensors` files (names and bytes, in name order), or None when it has
    none. Every byte is read: two fine-tunes of one model have the same sizes and headers, so nothing short of
    the whole tensors tells them apart (about a second per GB, once per command)."""
    files = sorted(p for p in Path(checkpoint).glob("*.safetensors") if p.is_file())
    if not files:
        return None
    key = tuple((str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino) for f in files for st in [f.stat()])
    if key not in _digests:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with f.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        _digests[key] = h.hexdigest()
    return _digests[key]


def recorded_path(paths: RunPaths | None, path: Path) -> str:
    """`path` as a summary records it: relative to the run when inside it, else (or without a run) absolute."""
    full = Path(path).expanduser().resolve()
    if paths is None:
        return str(full)
    try:
        return full.relative_to(paths.run_root.resolve()).as_posix()
    except ValueError:
        return str(full)


def located(paths: RunPaths, recorded: str) -> Path:
    """Where a path a summary recorded is now (a relative one is inside the run)."""
    p = Path(recorded)
    return p if p.is_absolute() else paths.run_root / p


def describe(paths: RunPaths | None, path: Path) -> dict[str, Any]:
    """A file or checkpoint as a summary records it: its path, and for a checkpoint its weights' sha256."""
    entry: dict[str, Any] = {"path": recorded_path(paths, path)}
    digest = weights_digest(Path(path)) if Path(path).is_dir() else None
    if digest is not None:
        entry["sha256"] = digest
    return entry


def provenance(paths: RunPaths | None, *, checkpoint: Path | None = None, evaluated: Mapping[str, Path] | None = None,
               inputs: Mapping[str, Path | Sequence[Path] | None] | None = None) -> dict[str, Any]:
    """The summary keys saying what a stage describes and read: `checkpoint` (the model it wrote), `evaluated`
    (the models its figures are about), `inputs` (what it read; None entries left out)."""
    out: dict[str, Any] = {}
    if checkpoint is not None:
        out["checkpoint"] = describe(paths, checkpoint)
    if evaluated:
        out["evaluated"] = {name: describe(paths, p) for name, p in evaluated.items() if p is not None}
    if inputs:
        out["inputs"] = {name: ([describe(paths, x) for x in p] if isinstance(p, (list, tuple)) else describe(paths, p))
                         for name, p in inputs.items() if p is not None}
    return out


def check_summary(paths: RunPaths, stage: str, summary: Mapping[str, Any]) -> None:
    """Refuse (`SummaryMismatch`) a summary whose `checkpoint` or `evaluated` models are not the weights in
    place now. Entries without a hash (older summaries, checkpoints without safetensors) are not checked."""
    described = [summary.get("checkpoint"), *(summary.get("evaluated") or {}).values()]
    for entry in described:
        if not isinstance(entry, Mapping) or not entry.get("sha256"):
            continue
        where = located(paths, entry["path"])
        now = weights_digest(where) if where.is_dir() else None
        if now != entry["sha256"]:
            state = f"holds other weights (sha256 {now[:12]})" if now else "has no weights any more"
            raise SummaryMismatch(
                f"{paths.stage_summary(stage)} describes the checkpoint {where} with weights sha256 "
                f"{entry['sha256'][:12]}, but {where} now {state}: the summary is another model's; put that model "
                f"back, or delete the summary (and the stages after it) to redo stage {stage}")


def check_summaries(paths: RunPaths, summaries: Mapping[str, Mapping[str, Any] | None]) -> None:
    """`check_summary` for each of a run's (or round's) summaries by stage."""
    for stage, summary in summaries.items():
        if summary:
            check_summary(paths, stage, summary)
