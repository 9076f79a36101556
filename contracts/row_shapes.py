"""The row shapes users bring, normalised to the native rows of `records`.

Datasets come in the shapes of the tools they were made for (TRL, verl, Hugging Face chat datasets).
`normalise_row` turns one decoded row into the native dict of its record type, or raises `RowError`
(`field '<name>': <reason>`, the name being the user's column) for a bad row. Accepted shapes:

- prompts: `prompt` as text, or as a list of `{role, content}` turns; or `messages`. A conversation must end
  with a user turn.
- demonstrations: `prompt` (text or turns) with `response` or `completion` (text, or a list holding one
  assistant turn); or `messages` whose last turn is the assistant's (the response; the turns before it are
  the prompt).
- comparisons: `responses` + `ranking` (K = 2..9, best first), optionally `tied` (K-1 bools, `tied[i]`: the
  responses at ranking positions i and i+1 are equally good; not all of them) and `labeler` (who ranked it); or `chosen` + `rejected`, read as K = 2 with
  `responses = [chosen, rejected]`, `ranking = [0, 1]`. Their prompt is `prompt` when it is of the same kind
  as the completions (both text, or both turns), or text completions with a conversation prompt; otherwise it
  is the part chosen and rejected share, cut by TRL's `extract_prompt` rule. In that shape a `messages`
  column is ignored (UltraFeedback-binarized repeats the chosen conversation there).

A row given as turns keeps them whole in `messages` and puts the content of the last user turn in `prompt`
(for display, labelers and the id). `prompt_id` may be text or an integer; without one, it is
`prompt_hash` of the prompt, so repeated reads give the same ids. `columns` maps a canonical key to the
user's column name (see `CANONICAL_KEYS`); a field the row needs is reported under the user's name when
the row has neither that column nor one of the canonical name.

Every `RowError` carries a `category`: its reason without row-specific values (ids, indices, lengths), so
skipped rows can be counted per reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping

from raylhf.contracts.records import MAX_RESPONSES, MIN_RESPONSES, Comparison, Demonstration, Document, Prompt

ROLES = ("system", "user", "assistant")
CANONICAL_KEYS = ("prompt_id", "prompt", "response", "messages", "chosen", "rejected", "responses", "ranking",
                  "text")
ColumnMap = Mapping[str, str]  # canonical key -> the user's column name
_INDEX = re.compile(r"\[\d+\]")

# The canonical keys each record type reads; a mapping of other keys is ignored for it, so one mapping
# can serve the files of several stages.
_KEYS: dict[type, tuple[str, ...]] = {
    Prompt: ("prompt_id", "prompt", "messages"),
    Demonstration: ("prompt_id", "prompt", "response", "messages"),
    Comparison: ("prompt_id", "prompt", "messages", "chosen", "rejected", "responses", "ranking"),
    Document: ("text",),
}


class RowError(ValueError):
    """A bad row, `field '<name>': <reason>`. `category` is `field '<name>': <short reason>` with the
    row-specific parts left out (list indices in the name, values in the reason)."""

    def __init__(self, name: str, reason: str, category: str | None = None):
        super().__init__(f"field '{name}': {reason}")
        base = _INDEX.sub("", name)  # messages[2] -> messages: the category is per column, not per turn
        self.category = f"field '{base}': {category or reason}"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_columns(columns: ColumnMap | None) -> dict[str, str]:
    """The column mapping as a dict, or ValueError naming an unknown canonical key or a non-text name."""
    if columns is None:
        return {}
    for key, name in columns.items():
        if key not in CANONICAL_KEYS:
            raise ValueError(f"columns: unknown key {key!r} (known: {', '.join(CANONICAL_KEYS)})")
        if not isinstance(name, str) or not name:
            raise ValueError(f"columns: {key!r} must map to a column name, got {name!r}")
    return dict(columns)


def prompt_hash(prompt: str, messages: list[dict[str, str]] | None = None) -> str:
    """The id of a prompt without one: the first 16 hex digits of the SHA-1 of the canonical JSON of its
    conversation (`messages`), or of its text when it has none. Stable across runs, machines and files."""
    payload = messages if messages is not None else prompt
    canonical = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


class _Row:
    """A row after column mapping, with the user's name of every canonical key for the error text.

    A mapped column replaces the column of the canonical name (`response` replaces `completion` too). When
    a row lacks the mapped column but has the canonical one, the canonical one is read: one `data.columns`
    serves every file of a run, and the files raylhf writes itself (prompts, corpus) use canonical names.
    A field missing under both names is reported under the user's."""

    def __init__(self, row: dict[str, Any], columns: dict[str, str], keys: tuple[str, ...]):
        mapped = {key: col for key, col in columns.items() if key in keys}
        self.names = {}
        if not mapped:  # the common case: read the row as it is (never modified)
            self.data = row
            return
        present = {key: col for key, col in mapped.items() if col in row}
        shadowed = set(present.values()) | set(present) | ({"completion"} if "response" in present else set())
        self.data = {k: v for k, v in row.items() if k not in shadowed}
        self.data.update({key: row[col] for key, col in present.items()})  # from `row`: a swap reads both first
        self.names = {key: col for key, col in mapped.items() if key in present or key not in row}

    def name(self, key: str) -> str:
        return self.names.get(key, key)

    def has(self, key: str) -> bool:
        # null is what Parquet (and our own JSONL) holds for an optional column a row does not use
        return self.data.get(key) is not None

    def text(self, key: str) -> str:
        if key not in self.data:
            raise RowError(self.name(key), "missing")
        value = self.data[key]
        if not isinstance(value, str):
            raise RowError(self.name(key), f"expected str, got {_type_name(value)}", "wrong type")
        return value


def _turns(value: Any, name: str) -> list[dict[str, str]]:
    """A validated conversation: each turn `{role, content}` with a known role and non-empty content."""
    if not isinstance(value, list):
        raise RowError(name, f"expected a list of {{role, content}} messages, got {_type_name(value)}", "wrong type")
    if not value:
        raise RowError(name, "empty conversation")
    turns = []
    for i, turn in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(where, f"expected a {{role, content}} message, got {_type_name(turn)}", "wrong type")
        role, content = turn.get("role"), turn.get("content")
        for key, v in (("role", role), ("content", content)):
            if not isinstance(v, str):
                raise RowError(where, f"'{key}' must be a string, got {_type_name(v)}", "wrong type")
        if role not in ROLES:
            raise RowError(where, f"unknown role {role!r} (allowed: {', '.join(ROLES)})", "unknown role")
        if not content.strip():
            raise RowError(where, f"empty content ({role} turn)", "empty content")
        turns.append({"role": role, "content": content})  # other keys (e.g. `name`) are not part of the contract
    return turns


def _prompt_turns(turns: list[dict[str, str]], name: str) -> list[dict[str, str]]:
    if turns[-1]["role"] != "user":
        raise RowError(name, f"the prompt conversation must end with a user turn, not {turns[-1]['role']!r}",
                       "does not end with a user turn")
    return turns


def _one_assistant_turn(value: list, name: str) -> str:
    """The content of a completion given as turns (TRL conversational): exactly one assistant turn."""
    turns = _turns(value, name)
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        got = ", ".join(t["role"] for t in turns)
        raise RowError(name, f"expected a list holding one assistant message, got [{got}]",
                       "not one assistant message")
    return turns[0]["content"]


def _prompt(r: _Row, use_messages: bool = True) -> tuple[str, list[dict[str, str]] | None, str]:
    """(prompt text, conversation or None, the user's name of the column it came from)."""
    if use_messages and r.has("messages"):
        name = r.name("messages")
        turns = _prompt_turns(_turns(r.data["messages"], name), name)
        return turns[-1]["content"], turns, name
    name = r.name("prompt")
    if not r.has("prompt"):
        raise RowError(name, "must not be null" if "prompt" in r.data else "missing")
    value = r.data["prompt"]
    if isinstance(value, str):
        if not value.strip():
            raise RowError(name, "empty prompt")
        return value, None, name
    if isinstance(value, list):
        turns = _prompt_turns(_turns(value, name), name)
        return turns[-1]["content"], turns, name
    raise RowError(name, f"expected str or a list of {{role, content}} messages, got {_type_name(value)}",
                   "wrong type")


def _check_length(text: str, turns: list[dict[str, str]] | None, name: str, max_chars: int | None) -> None:
    n = sum(len(t["content"]) for t in turns) if turns is not None else len(text)
    if max_chars is not None and n > max_chars:
        raise RowError(name, f"{n} characters, longer than the limit of {max_chars} (data.max_prompt_chars)",
                       "longer than data.max_prompt_chars")


def _prompt_id(r: _Row, text: str, turns: list[dict[str, str]] | None) -> str:
    if "prompt_id" not in r.data:
        return prompt_hash(text, turns)
    value = r.data["prompt_id"]
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RowError(r.name("prompt_id"), f"expected str or int, got {_type_name(value)}", "wrong type")


def _response(r: _Row) -> str:
    if r.has("response") and r.has("completion"):
        raise RowError(r.name("completion"), f"given together with '{r.name('response')}'; give one",
                       "conflicting shapes")
    key = "response" if r.has("response") else "completion"
    value = r.data[key]
    if isinstance(value, list):
        return _one_assistant_turn(value, r.name(key))
    if not isinstance(value, str):
        raise RowError(r.name(key), f"expected str or a list holding one assistant message, got {_type_name(value)}",
                       "wrong type")
    return value


def _demonstration(r: _Row) -> dict[str, Any]:
    if r.has("response") or r.has("completion"):
        response = _response(r)
        text, turns, source = _prompt(r)
    elif r.has("messages"):
        source = r.name("messages")
        conversation = _turns(r.data["messages"], source)
        if conversation[-1]["role"] != "assistant":
            last = conversation[-1]["role"]
            raise RowError(source, f"no final assistant turn (the response): the last turn is {last!r}",
                           "no final assistant turn")
        response, turns = conversation[-1]["content"], conversation[:-1]
        if not turns or turns[-1]["role"] != "user":
            raise RowError(source, "the turn before the final assistant turn must be a user turn",
                           "no user turn before the response")
        text = turns[-1]["content"]
    else:
        _prompt(r)  # a row with neither is missing its prompt first
        raise RowError(r.name("response"), "missing")
    return {"prompt": text, "messages": turns, "response": response, "_source": source}


def _shared_prefix(chosen: list | str, rejected: list | str) -> int:
    """Where TRL's `extract_prompt` cuts: the first position where chosen and rejected differ, moved back one
    when the text before it ends with a space (the space then starts both completions). For turns the prefix
    is whole turns. Returns the length of the shorter one when it is a prefix of the other."""
    n = min(len(chosen), len(rejected))
    idx = next((i for i in range(n) if chosen[i] != rejected[i]), n)
    if 0 < idx < n and chosen[idx - 1] == " ":
        idx -= 1
    return idx


def _implicit_prompt(r: _Row, chosen: Any, rejected: Any) -> tuple[str, list | None, str, str]:
    """(prompt text, conversation or None, chosen, rejected) from the prefix they share."""
    cname, rname = r.name("chosen"), r.name("rejected")
    idx = _shared_prefix(chosen, rejected)
    if idx == min(len(chosen), len(rejected)):
        raise RowError(cname, f"one of '{cname}' and '{rname}' is a prefix of the other: no response after the "
                              "shared prompt", "no response after the shared prompt")
    prompt = chosen[:idx]
    if isinstance(chosen, str):
        if not prompt.strip():
            raise RowError(cname, f"no shared prompt prefix with '{rname}' (give a prompt column)", "no shared prompt")
        return prompt, None, chosen[idx:], rejected[idx:]
    if not prompt:
        raise RowError(cname, f"no shared prompt turns with '{rname}' (give a prompt column)", "no shared prompt")
    if prompt[-1]["role"] != "user":
        raise RowError(cname, f"the turns shared with '{rname}' must end with a user turn, not {prompt[-1]['role']!r}",
                       "does not end with a user turn")
    return (prompt[-1]["content"], prompt, _one_assistant_turn(chosen[idx:], cname),
            _one_assistant_turn(rejected[idx:], rname))


def _pair(r: _Row) -> dict[str, Any]:
    """chosen/rejected as a comparison of K = 2 ranked [0, 1]."""
    cname, rname = r.name("chosen"), r.name("rejected")
    for key in ("chosen", "rejected"):
        if not r.has(key):
            raise RowError(r.name(key), "missing")
    chosen, rejected = r.data["chosen"], r.data["rejected"]
    for name, value in ((cname, chosen), (rname, rejected)):
        if not isinstance(value, (str, list)):
            raise RowError(name, f"expected str or a list of {{role, content}} messages, got {_type_name(value)}",
                           "wrong type")
    if isinstance(chosen, list):
        chosen = _turns(chosen, cname)
    if isinstance(rejected, list):
        rejected = _turns(rejected, rname)
    if type(chosen) is not type(rejected):
        raise RowError(rname, f"is {'messages' if isinstance(rejected, list) else 'text'} but '{cname}' is "
                              f"{'messages' if isinstance(chosen, list) else 'text'}; give both in one form",
                       "text and messages mixed")
    if chosen == rejected:
        raise RowError(rname, f"same as '{cname}'")
    conversational = isinstance(chosen, list)
    prompt_kind = r.data.get("prompt")
    # TRL's `maybe_extract_prompt`: a prompt column of the other kind than the completions (UltraFeedback's
    # text prompt beside full conversations) is not the prompt; the shared prefix is. Text completions after
    # a conversation prompt are read as given, the same as a demonstration's.
    explicit = r.has("prompt") and (not conversational or isinstance(prompt_kind, list))
    if explicit:
        text, turns, source = _prompt(r, use_messages=False)
        if conversational:
            chosen, rejected = _one_assistant_turn(chosen, cname), _one_assistant_turn(rejected, rname)
    else:
        text, turns, chosen, rejected = _implicit_prompt(r, chosen, rejected)
        source = cname
    for name, value in ((cname, chosen), (rname, rejected)):
        if not value.strip():
            raise RowError(name, "empty response")
    return {"prompt": text, "messages": turns, "responses": [chosen, rejected], "ranking": [0, 1], "_source": source}


def _ranked(r: _Row) -> dict[str, Any]:
    """Native K-wise comparison: `responses` and their `ranking`, best first."""
    text, turns, source = _prompt(r)
    rname, kname = r.name("responses"), r.name("ranking")
    for key in ("responses", "ranking"):
        if key not in r.data:
            raise RowError(r.name(key), "missing")
    responses, ranking = r.data["responses"], r.data["ranking"]
    for name, value, kind in ((rname, responses, str), (kname, ranking, int)):
        if not isinstance(value, list):
            raise RowError(name, f"expected a list of {kind.__name__}, got {_type_name(value)}", "wrong type")
        for i, item in enumerate(value):
            if not isinstance(item, kind) or isinstance(item, bool):
                raise RowError(f"{name}[{i}]", f"expected {kind.__name__}, got {_type_name(item)}", "wrong type")
    k = len(responses)
    if not MIN_RESPONSES <= k <= MAX_RESPONSES:
        raise RowError(rname, f"K={k} responses, must be {MIN_RESPONSES}..{MAX_RESPONSES}",
                       f"K must be {MIN_RESPONSES}..{MAX_RESPONSES}")
    if sorted(ranking) != list(range(k)):
        raise RowError(kname, f"{ranking} is not a permutation of 0..{k - 1}", "not a permutation")
    out = {"prompt": text, "messages": turns, "responses": responses, "ranking": ranking, "_source": source}
    for key in ("round", "source"):  # where an iterated run collected the row; type-checked with the record
        if key in r.data:
            out[key] = r.data[key]
    if r.has("labeler"):  # who ranked it; Parquet holds null for the default
        out["labeler"] = r.data["labeler"]
    if r.has("tied"):
        out["tied"] = _ties(r.data["tied"], k, r.name("tied"))
    return out


def _ties(tied: Any, k: int, name: str) -> list[bool]:
    """`tied[i]`: ranking[i] and ranking[i+1] are equally good. A row whose every pair is tied says nothing a
    reward model can learn, so it is a bad row (skipped and counted under `data.on_bad_rows: skip`)."""
    if not isinstance(tied, list):
        raise RowError(name, f"expected a list of bool, got {_type_name(tied)}", "wrong type")
    for i, item in enumerate(tied):
        if not isinstance(item, bool):
            raise RowError(f"{name}[{i}]", f"expected bool, got {_type_name(item)}", "wrong type")
    if len(tied) != k - 1:
        raise RowError(name, f"{len(tied)} values for K={k} responses, must be K-1 (one per neighbouring pair)",
                       "not K-1 values")
    if all(tied):
        raise RowError(name, "every response is tied: no pair to train on", "every response tied")
    return tied


def normalise_row(record_type: type, row: dict[str, Any], columns: ColumnMap | None = None,
                  max_prompt_chars: int | None = None) -> dict[str, Any]:
    """The native row (a dict of `record_type`'s fields) of one decoded row in any accepted shape.

    Raises `RowError` for a bad row. Rollouts are native only and pass through; documents take the `text`
    mapping and a hashed `doc_id` when they have none. `max_prompt_chars` limits a prompt's characters (all
    turns' content for a conversation)."""
    if record_type not in _KEYS:
        return row
    r = _Row(row, check_columns(columns), _KEYS[record_type])
    if record_type is Document:
        text = r.text("text")
        doc_id = r.data.get("doc_id", prompt_hash(text))
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            doc_id = str(doc_id)
        return {**r.data, "text": text, "doc_id": doc_id}
    if record_type is Prompt:
        text, turns, source = _prompt(r)
        out = {"prompt": text, "messages": turns, "_source": source}
    elif record_type is Demonstration:
        out = _demonstration(r)
    elif r.has("chosen") or r.has("rejected"):
        if r.has("responses") or r.has("ranking"):
            raise RowError(r.name("chosen"), f"given together with '{r.name('responses')}'; give responses + "
                                             "ranking or chosen + rejected", "conflicting shapes")
        out = _pair(r)
    else:
        out = _ranked(r)
    _check_length(out["prompt"], out["messages"], out.pop("_source"), max_prompt_chars)
    out["prompt_id"] = _prompt_id(r, out["prompt"], out["messages"])
    return out


__all__ = ["CANONICAL_KEYS", "ROLES", "ColumnMap", "RowError", "check_columns", "normalise_row", "prompt_hash"]
