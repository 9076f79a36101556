"""Read and write records as JSONL or Parquet, validating every row.

A bad row is reported with its file, line (JSONL, 1-based) or row (Parquet, 0-based) and the
reason. With `on_bad_rows="error"` the first bad row raises `DataError`; with `"skip"` bad rows
are counted and logged and every valid row is kept. Besides the record contract, a row is bad when
its prompt id repeats an earlier row's in a prompts file (the first is kept) or when the caller's
`check` (e.g. a token-length limit only the stage with the tokenizer knows) names a reason. A file
without a single valid row is a `DataError` under either policy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from raylhf.contracts.records import MAX_RESPONSES, MIN_RESPONSES, Comparison, Prompt, Rollout, record_fields, to_row

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
        raise ValueError(f"field '{name}': must not be null")
    if base == "str":
        ok = isinstance(value, str)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base.startswith("list["):
        inner = base[5:-1]
        if not isinstance(value, list):
            raise ValueError(f"field '{name}': expected a list of {inner}, got {_type_name(value)}")
        for i, item in enumerate(value):
            try:
                _check_type(f"{name}[{i}]", item, inner)
            except ValueError as e:
                raise ValueError(str(e)) from None
        return
    else:  # pragma: no cover - a record declared a type this reader does not know
        raise TypeError(f"unsupported annotation {annotation!r}")
    if not ok:
        raise ValueError(f"field '{name}': expected {base}, got {_type_name(value)}")


def parse_record(record_type: type[R], row: Any, max_prompt_chars: int | None = None) -> R:
    """Validate a decoded row (a dict) and build the record. Raises ValueError with the reason."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {_type_name(row)}")
    kwargs = {}
    for f in record_fields(record_type):
        if f.name not in row:
            if f.default is not dataclasses.MISSING:
                continue  # optional field, the record's default applies
            raise ValueError(f"missing field '{f.name}'")
        _check_type(f.name, row[f.name], str(f.type))
        kwargs[f.name] = row[f.name]
    record = record_type(**kwargs)
    _check_semantics(record, max_prompt_chars)
    return record


def _check_semantics(record: Any, max_prompt_chars: int | None) -> None:
    prompt = getattr(record, "prompt", None)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("field 'prompt': empty prompt")
        if max_prompt_chars is not None and len(prompt) > max_prompt_chars:
            raise ValueError(
                f"field 'prompt': {len(prompt)} characters, longer than the limit of {max_prompt_chars} "
                "(data.max_prompt_chars)"
            )
    if isinstance(record, Comparison):
        k = len(record.responses)
        if not MIN_RESPONSES <= k <= MAX_RESPONSES:
            raise ValueError(f"field 'responses': K={k} responses, must be {MIN_RESPONSES}..{MAX_RESPONSES}")
        if sorted(record.ranking) != list(range(k)):
            raise ValueError(f"field 'ranking': {record.ranking} is not a permutation of 0..{k - 1}")
    if isinstance(record, Rollout):
        if not record.prompt_ids:
            raise ValueError("field 'prompt_ids': empty prompt")
        if len(record.logprobs) != len(record.response_ids):
            raise ValueError(
                f"field 'logprobs': {len(record.logprobs)} values for {len(record.response_ids)} response tokens"
            )
        if record.ref_logprobs is not None and len(record.ref_logprobs) != len(record.response_ids):
            raise ValueError(
                f"field 'ref_logprobs': {len(record.ref_logprobs)} values for {len(record.response_ids)} response tokens"
            )


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
                yield where, None, f"invalid UTF-8 at byte {e.start}"
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text), None
            except json.JSONDecodeError as e:
                yield where, None, f"invalid JSON: {e.msg} (column {e.colno})"


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
) -> tuple[list[R], ReadReport]:
    """Read a JSONL or Parquet file of `record_type` rows; see the module docstring for bad rows.

    `check(record)` returns why a parsed record is bad, or None when it is good.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "", "file not found")
    if path.is_dir():
        raise DataError(path, "", "is a directory, not a data file")
    report = ReadReport(path=str(path))
    records: list[R] = []
    first_seen: dict[str, str] = {}  # prompt id -> where it first occurred (prompts files)
    rows = _iter_jsonl(path) if _fmt(path) == "jsonl" else _iter_parquet(path)
    for where, row, decode_error in rows:
        reason = decode_error
        if reason is None:
            try:
                record = parse_record(record_type, row, max_prompt_chars)
                reason = check(record) if check is not None else None
                if reason is None and record_type is Prompt:
                    if record.prompt_id in first_seen:
                        reason = f"duplicate prompt_id {record.prompt_id!r} (first at {first_seen[record.prompt_id]})"
                    else:
                        first_seen[record.prompt_id] = where
            except ValueError as e:
                reason = str(e)
            if reason is None:
                records.append(record)
                continue
        if on_bad_rows == "error":
            raise DataError(path, where, reason)
        report.n_bad += 1
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
    log.warning("%s: skipped %d bad rows, kept %d (data.on_bad_rows=skip). First: %s",
                path, report.n_bad, report.n_rows, "; ".join(report.errors[:3]))


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
