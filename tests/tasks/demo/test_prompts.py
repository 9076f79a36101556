"""Writing and parsing instructions: every written instruction parses back to its family."""

from __future__ import annotations

import random

import pytest

from raylhf.tasks import demo
from raylhf.tasks.demo import Spec, parse_prompt


@pytest.mark.parametrize("family", demo.FAMILIES)
def test_written_instructions_parse_back(family):
    rng = random.Random(family)
    for _ in range(300):
        text = demo.write_instruction(rng, family, list(demo.CATEGORIES))
        spec = parse_prompt(demo.format_prompt(text))
        assert spec.family == family, text
        assert 1 <= spec.length <= 8, text


def test_parse_worked_examples():
    assert parse_prompt("list 3 fruits other than pear") == Spec("list", 3, category="fruit", exclude="pear")
    assert parse_prompt("name a fruit that starts with the letter p") == Spec(
        "starts_with", 1, category="fruit", letter="p")
    assert parse_prompt("say cat 2 times") == Spec("repeat", 2, target=("cat", "cat"))
    assert parse_prompt("write cat in capital letters") == Spec("upper", 1, target=("CAT",))
    assert parse_prompt("say red cat blue backwards") == Spec("reverse", 3, target=("blue", "cat", "red"))
    assert parse_prompt("what is 3 plus 9") == Spec("add", 1, target=("12",))
    assert parse_prompt("count up from 4 to 6") == Spec("count", 3, target=("4", "5", "6"))
    assert parse_prompt("count down from 6 to 4") == Spec("count_down", 3, target=("6", "5", "4"))
    with pytest.raises(ValueError):
        parse_prompt("count from 1 to 20")  # longer than any answer the task asks for


def test_instruction_text_and_format():
    prompt = demo.format_prompt("add 3 and 9")
    assert prompt == "Instruction: add 3 and 9\nResponse:"
    assert demo.instruction_text(prompt) == "add 3 and 9"
    assert demo.instruction_text("Instruction:  Add 3  and 9 ?\nResponse: 12") == "add 3 and 9"


def test_mixed_reverse_prompts_use_a_word_of_the_categories():
    rng = random.Random(0)
    tools = set(demo.CATEGORIES["tool"].items)
    seen = demo.category_words(demo.seen_categories("tool"))
    for _ in range(200):
        text = demo.write_instruction(rng, "reverse", ["tool"], mix_with=seen)
        words = set(parse_prompt(text).target)
        assert words & tools and words <= tools | set(seen), text
