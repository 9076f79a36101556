"""The row shapes users bring (TRL, verl, chat datasets) normalise to the native rows, and every bad row is
one `field '<name>': <reason>` line with a stable category."""

import hashlib
import json

import pytest

from raylhf.contracts.dataio import parse_record
from raylhf.contracts.records import Comparison, Demonstration, Document, Prompt
from raylhf.contracts.row_shapes import RowError, check_columns, normalise_row, prompt_hash


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


SYSTEM = {"role": "system", "content": "Answer briefly."}


def _sha(payload) -> str:
    # the documented rule, written out independently of the implementation
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- ids
def test_prompt_hash_is_the_sha1_of_the_canonical_json():
    assert prompt_hash("add 2 and 3") == _sha("add 2 and 3")
    turns = [SYSTEM, user("héllo")]
    assert prompt_hash("héllo", turns) == _sha(turns)
    # key order inside a turn does not change the id; the text and the conversation are different prompts
    assert prompt_hash("héllo", [SYSTEM, {"content": "héllo", "role": "user"}]) == prompt_hash("héllo", turns)
    assert prompt_hash("héllo") != prompt_hash("héllo", [user("héllo")])
    # pinned: ids written by one version must be found by the next
    assert prompt_hash("add 2 and 3") == hashlib.sha1(b'"add 2 and 3"').hexdigest()[:16]


@pytest.mark.parametrize("given,expected", [("p7", "p7"), (7, "7"), (0, "0")])
def test_prompt_id_text_or_integer(given, expected):
    assert normalise_row(Prompt, {"prompt_id": given, "prompt": "x"})["prompt_id"] == expected


@pytest.mark.parametrize("bad,reason", [(1.5, "expected str or int, got float"),
                                        (True, "expected str or int, got bool"),
                                        (None, "expected str or int, got null")])
def test_prompt_id_of_another_type_is_bad(bad, reason):
    with pytest.raises(RowError, match=rf"^field 'prompt_id': {reason}$"):
        normalise_row(Prompt, {"prompt_id": bad, "prompt": "x"})


def test_rows_without_ids_get_the_hash_of_their_prompt():
    turns = [SYSTEM, user("q")]
    assert normalise_row(Prompt, {"prompt": "q"})["prompt_id"] == _sha("q")
    assert normalise_row(Prompt, {"messages": turns})["prompt_id"] == _sha(turns)
    assert normalise_row(Demonstration, {"messages": [*turns, assistant("a")]})["prompt_id"] == _sha(turns)
    pair = normalise_row(Comparison, {"chosen": "Q: hi A: yes", "rejected": "Q: hi A: no"})
    assert pair["prompt_id"] == _sha("Q: hi A:")


# ---------------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("row,prompt,messages", [
    ({"prompt_id": "a", "prompt": "add 2 and 3"}, "add 2 and 3", None),
    ({"prompt": [user("add 2 and 3")]}, "add 2 and 3", [user("add 2 and 3")]),  # TRL conversational / verl
    ({"messages": [SYSTEM, user("hi"), assistant("hello"), user("add 2 and 3")]}, "add 2 and 3",
     [SYSTEM, user("hi"), assistant("hello"), user("add 2 and 3")]),
    # a native row written with a conversation: `messages` is the prompt, `prompt` its last user turn
    ({"prompt_id": "a", "prompt": "add 2 and 3", "messages": [SYSTEM, user("add 2 and 3")]}, "add 2 and 3",
     [SYSTEM, user("add 2 and 3")]),
])
def test_prompt_shapes(row, prompt, messages):
    out = normalise_row(Prompt, row)
    assert (out["prompt"], out["messages"]) == (prompt, messages)


def test_extra_keys_of_a_turn_are_dropped():
    out = normalise_row(Prompt, {"messages": [{"role": "user", "content": "q", "name": "bob"}]})
    assert out["messages"] == [user("q")]


# ---------------------------------------------------------------------------------------------- demonstrations
@pytest.mark.parametrize("row,prompt,messages,response", [
    ({"prompt_id": "a", "prompt": "q", "response": " a"}, "q", None, " a"),
    ({"prompt": "q", "completion": " a"}, "q", None, " a"),
    ({"messages": [SYSTEM, user("q"), assistant("a")]}, "q", [SYSTEM, user("q")], "a"),
    ({"messages": [user("q1"), assistant("a1"), user("q2"), assistant("a2")]}, "q2",
     [user("q1"), assistant("a1"), user("q2")], "a2"),
    # UltraChat: a `prompt` column (the first user turn) beside the conversation; the conversation rules
    ({"prompt": "q1", "prompt_id": "u", "messages": [user("q1"), assistant("a1"), user("q2"), assistant("a2")]},
     "q2", [user("q1"), assistant("a1"), user("q2")], "a2"),
    ({"prompt": [user("q")], "completion": [assistant("a")]}, "q", [user("q")], "a"),  # TRL prompt-completion
    ({"prompt": [user("q")], "completion": "a"}, "q", [user("q")], "a"),
])
def test_demonstration_shapes(row, prompt, messages, response):
    out = normalise_row(Demonstration, row)
    assert (out["prompt"], out["messages"], out["response"]) == (prompt, messages, response)


# ---------------------------------------------------------------------------------------------- comparisons
NATIVE = {"prompt_id": "p", "prompt": "Q: sky? A:", "responses": [" blue", " green"], "ranking": [0, 1]}


@pytest.mark.parametrize("row", [
    {"prompt_id": "p", "prompt": "Q: sky? A:", "chosen": " blue", "rejected": " green"},
    # implicit prompt: TRL cuts before the space that precedes the first difference
    {"prompt_id": "p", "chosen": "Q: sky? A: blue", "rejected": "Q: sky? A: green"},
])
def test_chosen_rejected_is_the_native_pair(row):
    assert parse_record(Comparison, row) == parse_record(Comparison, NATIVE)


def test_implicit_prompt_follows_trl_cut():
    # differing right after a space: the space starts both completions (TRL `extract_prompt`)
    out = normalise_row(Comparison, {"chosen": "The sky is blue.", "rejected": "The sky is green."})
    assert (out["prompt"], out["responses"]) == ("The sky is", [" blue.", " green."])
    # differing inside a word: the cut is at the first differing character, nothing moves
    out = normalise_row(Comparison, {"chosen": "Say: hello", "rejected": "Say: help"})
    assert (out["prompt"], out["responses"]) == ("Say: hel", ["lo", "p"])


CHOSEN = [SYSTEM, user("sky?"), assistant("blue")]
REJECTED = [SYSTEM, user("sky?"), assistant("green")]


@pytest.mark.parametrize("row", [
    {"chosen": CHOSEN, "rejected": REJECTED},
    # UltraFeedback-binarized: a text prompt and `messages` beside full conversations; the shared turns rule
    {"prompt": "sky?", "chosen": CHOSEN, "rejected": REJECTED, "messages": CHOSEN},
    {"prompt": [SYSTEM, user("sky?")], "chosen": [assistant("blue")], "rejected": [assistant("green")]},
    {"prompt": [SYSTEM, user("sky?")], "chosen": "blue", "rejected": "green"},
])
def test_conversational_pairs(row):
    out = normalise_row(Comparison, row)
    assert out == {"prompt": "sky?", "messages": [SYSTEM, user("sky?")], "responses": ["blue", "green"],
                   "ranking": [0, 1], "prompt_id": _sha([SYSTEM, user("sky?")])}


def test_native_k_wise_keeps_round_and_source():
    row = {**NATIVE, "responses": ["a", "b", "c"], "ranking": [2, 0, 1], "round": 1, "source": "sft"}
    out = normalise_row(Comparison, row)
    assert (out["responses"], out["ranking"], out["round"], out["source"]) == (["a", "b", "c"], [2, 0, 1], 1, "sft")


# ---------------------------------------------------------------------------------------------- columns
def test_column_mapping():
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad", "prompt_id": "id"}
    row = {"id": 12, "question": "q", "good": " a", "bad": " b", "prompt": "not this one"}
    assert normalise_row(Comparison, row, columns) == {"prompt": "q", "messages": None, "responses": [" a", " b"],
                                                        "ranking": [0, 1], "prompt_id": "12"}
    # keys a record type does not read are ignored, so one mapping can serve every stage's files
    assert normalise_row(Prompt, {"question": "q"}, {"prompt": "question", "chosen": "good"})["prompt"] == "q"
    # a swap reads both columns before renaming either
    swapped = normalise_row(Comparison, {"prompt": "q", "chosen": "x", "rejected": "y"},
                            {"chosen": "rejected", "rejected": "chosen"})
    assert swapped["responses"] == ["y", "x"]


def test_rows_with_canonical_names_read_under_any_mapping():
    # one `data.columns` serves every file of a run, including those raylhf writes with canonical names
    columns = {"prompt": "question", "prompt_id": "id"}
    assert normalise_row(Prompt, {"prompt_id": "a", "prompt": "q"}, columns) == {"prompt": "q", "messages": None,
                                                                                 "prompt_id": "a"}
    with pytest.raises(RowError, match="^field 'question': missing$"):
        normalise_row(Prompt, {"id": "a"}, columns)


def test_response_mapping_covers_completion():
    out = normalise_row(Demonstration, {"prompt": "q", "answer": "a", "completion": "not this"}, {"response": "answer"})
    assert out["response"] == "a"


@pytest.mark.parametrize("columns,row,message", [
    ({"prompt": "question"}, {"text": "q"}, "field 'question': missing"),
    ({"chosen": "good", "rejected": "bad"}, {"prompt": "q", "good": "a", "bad": "a"}, "field 'bad': same as 'good'"),
    ({"ranking": "order"}, {"prompt": "q", "responses": ["a", "b"], "order": [0, 0]},
     "field 'order': [0, 0] is not a permutation of 0..1"),
    ({"messages": "conv"}, {"conv": [user("q"), {"role": "bot", "content": "x"}, user("q")]},
     "field 'conv[1]': unknown role 'bot' (allowed: system, user, assistant)"),
])
def test_errors_name_the_users_column(columns, row, message):
    with pytest.raises(RowError) as exc:
        normalise_row(Comparison, row, columns)
    assert str(exc.value) == message


def test_bad_column_mapping_is_refused_before_reading():
    with pytest.raises(ValueError, match=r"columns: unknown key 'answer' \(known: prompt_id, prompt"):
        check_columns({"answer": "a"})
    with pytest.raises(ValueError, match="columns: 'prompt' must map to a column name, got 3"):
        check_columns({"prompt": 3})


# ---------------------------------------------------------------------------------------------- bad rows
BAD = [
    # (record type, row, the one-line message, its category)
    (Prompt, {"prompt_id": "a"}, "field 'prompt': missing", "field 'prompt': missing"),
    (Prompt, {"prompt": 5}, "field 'prompt': expected str or a list of {role, content} messages, got int",
     "field 'prompt': wrong type"),
    (Prompt, {"prompt": " "}, "field 'prompt': empty prompt", "field 'prompt': empty prompt"),
    (Prompt, {"messages": []}, "field 'messages': empty conversation", "field 'messages': empty conversation"),
    (Prompt, {"messages": "hi"}, "field 'messages': expected a list of {role, content} messages, got str",
     "field 'messages': wrong type"),
    (Prompt, {"messages": [user("q"), "a"]}, "field 'messages[1]': expected a {role, content} message, got str",
     "field 'messages': wrong type"),
    (Prompt, {"messages": [{"role": "user"}]}, "field 'messages[0]': 'content' must be a string, got null",
     "field 'messages': wrong type"),
    (Prompt, {"messages": [{"role": "human", "content": "q"}]},
     "field 'messages[0]': unknown role 'human' (allowed: system, user, assistant)", "field 'messages': unknown role"),
    (Prompt, {"messages": [SYSTEM, user("  ")]}, "field 'messages[1]': empty content (user turn)",
     "field 'messages': empty content"),
    (Prompt, {"messages": [user("q"), assistant("a")]},
     "field 'messages': the prompt conversation must end with a user turn, not 'assistant'",
     "field 'messages': does not end with a user turn"),
    (Prompt, {"prompt": [SYSTEM]}, "field 'prompt': the prompt conversation must end with a user turn, not 'system'",
     "field 'prompt': does not end with a user turn"),
    (Demonstration, {"prompt_id": "a"}, "field 'prompt': missing", "field 'prompt': missing"),
    (Demonstration, {"prompt": "q"}, "field 'response': missing", "field 'response': missing"),
    (Demonstration, {"messages": [user("q")]},
     "field 'messages': no final assistant turn (the response): the last turn is 'user'",
     "field 'messages': no final assistant turn"),
    (Demonstration, {"messages": [SYSTEM, assistant("a")]},
     "field 'messages': the turn before the final assistant turn must be a user turn",
     "field 'messages': no user turn before the response"),
    (Demonstration, {"prompt": [user("q")], "completion": [assistant("a"), user("b")]},
     "field 'completion': expected a list holding one assistant message, got [assistant, user]",
     "field 'completion': not one assistant message"),
    (Demonstration, {"prompt": "q", "response": 3},
     "field 'response': expected str or a list holding one assistant message, got int", "field 'response': wrong type"),
    (Comparison, {"prompt": "q", "responses": ["a"], "ranking": [0]}, "field 'responses': K=1 responses, must be 2..9",
     "field 'responses': K must be 2..9"),
    (Comparison, {"prompt": "q", "responses": ["a"] * 10, "ranking": list(range(10))},
     "field 'responses': K=10 responses, must be 2..9", "field 'responses': K must be 2..9"),
    (Comparison, {"prompt": "q", "responses": ["a", "b"], "ranking": [1, 2]},
     "field 'ranking': [1, 2] is not a permutation of 0..1", "field 'ranking': not a permutation"),
    (Comparison, {"prompt": "q", "responses": ["a", 3], "ranking": [0, 1]},
     "field 'responses[1]': expected str, got int",
     "field 'responses': wrong type"),
    (Comparison, {"prompt": "q", "responses": ["a", "b"]}, "field 'ranking': missing", "field 'ranking': missing"),
    (Comparison, {"prompt": "q", "chosen": "a"}, "field 'rejected': missing", "field 'rejected': missing"),
    (Comparison, {"prompt": "q", "chosen": "a", "rejected": "a"}, "field 'rejected': same as 'chosen'",
     "field 'rejected': same as 'chosen'"),
    (Comparison, {"prompt": "q", "chosen": " ", "rejected": "a"}, "field 'chosen': empty response",
     "field 'chosen': empty response"),
    (Comparison, {"chosen": "yes", "rejected": "no"},
     "field 'chosen': no shared prompt prefix with 'rejected' (give a prompt column)",
     "field 'chosen': no shared prompt"),
    (Comparison, {"chosen": "Q: A: yes", "rejected": "Q: A: yes!"},
     "field 'chosen': one of 'chosen' and 'rejected' is a prefix of the other: no response after the shared prompt",
     "field 'chosen': no response after the shared prompt"),
    (Comparison, {"chosen": [user("a"), assistant("x")], "rejected": [user("b"), assistant("x")]},
     "field 'chosen': no shared prompt turns with 'rejected' (give a prompt column)",
     "field 'chosen': no shared prompt"),
    (Comparison, {"chosen": [user("q"), assistant("x"), user("more")], "rejected": [user("q"), assistant("y")]},
     "field 'chosen': expected a list holding one assistant message, got [assistant, user]",
     "field 'chosen': not one assistant message"),
    (Comparison, {"chosen": "Q: yes", "rejected": [user("Q"), assistant("no")]},
     "field 'rejected': is messages but 'chosen' is text; give both in one form",
     "field 'rejected': text and messages mixed"),
    (Comparison, {"prompt": "q", "chosen": "a", "rejected": "b", "responses": ["a", "b"], "ranking": [0, 1]},
     "field 'chosen': given together with 'responses'; give responses + ranking or chosen + rejected",
     "field 'chosen': conflicting shapes"),
    (Document, {"doc_id": "d"}, "field 'text': missing", "field 'text': missing"),
]


@pytest.mark.parametrize("record_type,row,message,category", BAD)
def test_bad_rows_are_one_line_with_a_stable_category(record_type, row, message, category):
    with pytest.raises(RowError) as exc:
        normalise_row(record_type, row)
    assert (str(exc.value), exc.value.category) == (message, category)


def test_prompt_length_limit_counts_every_turn():
    turns = [{"role": "system", "content": "x" * 15}, user("y" * 10)]
    with pytest.raises(RowError) as exc:
        normalise_row(Prompt, {"messages": turns}, max_prompt_chars=20)
    assert str(exc.value) == "field 'messages': 25 characters, longer than the limit of 20 (data.max_prompt_chars)"
    assert exc.value.category == "field 'messages': longer than data.max_prompt_chars"
    assert normalise_row(Prompt, {"messages": turns}, max_prompt_chars=25)["prompt"] == "y" * 10


def test_documents_take_the_text_mapping_and_hash_missing_ids():
    assert normalise_row(Document, {"body": "some text"}, {"text": "body"}) == {"text": "some text",
                                                                               "doc_id": _sha("some text")}
    assert parse_record(Document, {"doc_id": 4, "text": "t"}) == Document("4", "t")
