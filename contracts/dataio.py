"""Read and write records as JSONL or Parquet, validating every row.

Rows may come in the shapes other tools use (TRL, verl, chat datasets) and under the user's column names;
`row_shapes.normalise_row` turns each into the native row of its record first. A bad row is reported
with its file, line (JSONL, 1-based) or row (Parquet, 0-based) and the reason, `field '<name>': <reason>`
for a field (the name as the user's file spells it). With `on_bad_rows="error"` the first bad row raises
`DataError`; with `"skip"` bad rows are counted, in total and per reason (`ReadReport.by_reason`), and
logged, and every valid row is kept. Besides the record contract, a row is bad when its prompt id repeats an
earlier row's in a prompts file (the first is kept) or when the caller's `check` (e.g. a token-length limit
only the stage with the tokenizer knows) names a reason. A file without a single valid row is a
`DataError` under either policy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from raylhf.contracts.records import Prompt, Rollout, record_fields, to_row
from raylhf.contracts.row_shapes import RowError, check_columns, normalise_row

log = logging.getLogger(__name__)

R = TypeVar("R")
BadRowPolicy = Literal["error", "skip"]


class DataError(ValueError):
    """A dataset row (or file) that does not satisfy its record contract; `where` is the line or row,
    empty when the whole file is at fault."""

    def __init__(self, path: str | os.PathLike, where: str, reason: str):
        self.path, self.where, self.reason = str(path), where, reason
        super().__init__(f"{path}:{where}: {reason}" if where else f"{path}: {reason}")


@dataclass
class ReadReport:
    """What a read kept and what it skipped."""

    path: str
    n_rows: int = 0
    n_bad: int = 0
    errors: list[str] = field(default_factory=list)  # the first few skipped rows, for the log
    # skipped rows per reason, keyed without row-specific values: "field 'ranking': not a permutation",
    # "duplicate prompt_id", "invalid JSON", or a `check` reason with its numbers as N
    by_reason: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: what was kept and skipped, and the skipped rows per reason (most frequent first)."""
        reasons = sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        counts = "; ".join(f"{n} x {reason}" for reason, n in reasons)
        return f"{self.path}: skipped {self.n_bad} bad rows, kept {self.n_rows}" + (f": {counts}" if counts else "")


_MAX_LOGGED_ERRORS = 10


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Check one field against its dataclass annotation (string form, `from __future__`)."""
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None:
        if optional:
            return
        raise RowError(name, "must not be null")
    if base == "str":
        ok = isinstance(value, str)
    elif base == "bool":
        ok = isinstance(value, bool)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base.startswith("dict["):
        # dict[str, str] only: the {role, content} turns of a conversation
        ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    elif base.startswith("list["):
        inner = base[5:-1]
        if not isinstance(value, list):
            raise RowError(name, f"expected a list of {inner}, got {_type_name(value)}", "wrong type")
        for i, item in enumerate(value):
            _check_type(f"{name}[{i}]", item, inner)
        return
    else:  # pragma: no cover - a record declared a type this reader does not know
        raise TypeError(f"unsupported annotation {annotation!r}")
    if not ok:
        raise RowError(name, f"expected {base}, got {_type_name(value)}", "wrong type")


def parse_record(record_type: type[R], row: Any, max_prompt_chars: int | None = None,
                 columns: Mapping[str, str] | None = None) -> R:
    """Validate a decoded row (a dict in any shape `row_shapes` accepts) and build the record.

    Raises ValueError (a `RowError` for a field) with the reason."""
    if not isinstance(row, dict):
        error = ValueError(f"expected a JSON object, got {_type_name(row)}")
        error.category = "expected a JSON object"  # type: ignore[attr-defined]
        raise error
    native = normalise_row(record_type, row, columns, max_prompt_chars)
    kwargs = {}
    for f in record_fields(record_type):
        if f.name not in native:
            if f.default is not dataclasses.MISSING:
                continue  # optional field, the record's default applies
            raise RowError(f.name, "missing")
        _check_type(f.name, native[f.name], str(f.type))
        kwargs[f.name] = native[f.name]
    record = record_type(**kwargs)
    if isinstance(record, Rollout):
        _check_rollout(record)
    return record


def _check_rollout(record: Rollout) -> None:
    if not record.prompt_ids:
        raise RowError("prompt_ids", "empty prompt")
    for name in ("logprobs", "ref_logprobs"):
        values = getattr(record, name)
        if values is not None and len(values) != len(record.response_ids):
            raise RowError(name, f"{len(values)} values for {len(record.response_ids)} response tokens",
                           "not one value per response token")


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _category(reason: str, error: BaseException | None = None) -> str:
    """The key a skipped row is counted under: a `RowError`'s category, else the reason with its numbers
    replaced by N (a caller's `check` says "... 300 tokens, more than ... 256 tokens")."""
    category = getattr(error, "category", None)
    return category if category is not None else _NUMBER.sub("N", reason)


def _fmt(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataError(path, "", f"unknown file type '{suffix}' (use .jsonl or .parquet)")


def _iter_jsonl(path: Path):
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"line {lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, None, (f"invalid UTF-8 at byte {e.start}", "invalid UTF-8")
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text), None
            except json.JSONDecodeError as e:
                yield where, None, (f"invalid JSON: {e.msg} (column {e.colno})", "invalid JSON")


def _iter_parquet(path: Path):
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, "", f"unreadable Parquet file: {e}") from e
    for i, row in enumerate(table.to_pylist()):
        yield f"row {i}", row, None


def read_records(
    path: str | os.PathLike,
    record_type: type[R],
    on_bad_rows: BadRowPolicy = "error",
    max_prompt_chars: int | None = None,
    check: Callable[[R], str | None] | None = None,
    columns: Mapping[str, str] | None = None,
) -> tuple[list[R], ReadReport]:
    """Read a JSONL or Parquet file of `record_type` rows; see the module docstring for bad rows.

    `check(record)` returns why a parsed record is bad, or None when it is good. `columns` maps a canonical
    key (`row_shapes.CANONICAL_KEYS`) to the file's column name, e.g. `{"prompt": "question"}`; a bad
    mapping is a ValueError before the file is opened.
    """
    columns = check_columns(columns)
    path = Path(path)
    if not path.exists():
        raise DataError(path, "", "file not found")
    if path.is_dir():
        raise DataError(path, "", "is a directory, not a data file")
    report = ReadReport(path=str(path))
    records: list[R] = []
    first_seen: dict[str, str] = {}  # prompt id -> where it first occurred (prompts files)
    id_column = columns.get("prompt_id", "prompt_id")
    rows = _iter_jsonl(path) if _fmt(path) == "jsonl" else _iter_parquet(path)
    for where, row, decode_error in rows:
        reason, category = decode_error if decode_error is not None else (None, None)
        if reason is None:
            try:
                record = parse_record(record_type, row, max_prompt_chars, columns)
                reason = check(record) if check is not None else None
                if reason is None and record_type is Prompt:
                    if record.prompt_id in first_seen:
                        reason = f"duplicate prompt_id {record.prompt_id!r} (first at {first_seen[record.prompt_id]})"
                        if id_column not in row and "prompt_id" not in row:
                            reason += "; the file has no prompt ids and the id hashes the prompt: the prompt repeats"
                        category = "duplicate prompt_id"
                    else:
                        first_seen[record.prompt_id] = where
            except ValueError as e:
                reason, category = str(e), _category(str(e), e)
            if reason is None:
                records.append(record)
                continue
        if on_bad_rows == "error":
            raise DataError(path, where, reason)
        report.n_bad += 1
        key = category or _category(reason)
        report.by_reason[key] = report.by_reason.get(key, 0) + 1
        if len(report.errors) < _MAX_LOGGED_ERRORS:
            report.errors.append(f"{path}:{where}: {reason}")
    report.n_rows = len(records)
    if not records:
        if report.n_bad:
            first = report.errors[0].removeprefix(f"{path}:")
            bad = ("its only row is bad (data.on_bad_rows=skip): " if report.n_bad == 1
                   else f"all {report.n_bad} rows are bad (data.on_bad_rows=skip); first: ")
            raise DataError(path, "", f"no valid rows: {bad}{first}")
        raise DataError(path, "", f"empty dataset: no {record_type.__name__} rows")
    if report.n_bad:
        _log_skipped(path, report)
    return records, report


_logged_skips: set[tuple] = set()


def _log_skipped(path: Path, report: ReadReport) -> None:
    """Log what a read skipped, once per file version: a stage's input check and the stage itself read the
    same file, and its skipped rows are reported once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, report.n_bad, report.n_rows)
    if key in _logged_skips:
        return
    _logged_skips.add(key)
    log.warning("%s (data.on_bad_rows=skip). First: %s", report.summary(), "; ".join(report.errors[:3]))


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so the names created or renamed in it survive a crash as well as their contents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_records(path: str | os.PathLike, records: Sequence[Any], record_type: type | None = None) -> Path:
    """Write records as JSONL or Parquet (by suffix), atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if record_type is None:
        if not records:
            raise ValueError(f"{path}: cannot infer the record type of an empty list; pass record_type")
        record_type = type(records[0])
    rows = [to_row(r) for r in records]
    if _fmt(path) == "jsonl":
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        table = pa.Table.from_pylist(rows, schema=record_type.SCHEMA)
        pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path
