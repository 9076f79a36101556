"""The hidden utility and instruction following: orderings, values worked out by hand, odd text."""

from __future__ import annotations

import pytest

from raylhf.tasks import demo
from raylhf.tasks.demo import format_prompt as P

# One prompt per family with an ideal answer, a rambling one (correct, then base-model-like text),
# a verbose one, and a wrong one.
HAND = {
    "list": ("list 3 fruits", " apple pear plum", " apple pear plum\nInstruction: list 2 colors\nResponse:",
             " sure , here is the answer : apple pear plum", " dog cat cow"),
    "repeat": ("repeat the word cat 3 times", " cat cat cat", " cat cat cat . i like to eat apple",
               " ok , the answer is cat cat cat", " cat cat"),
    "upper": ("write the word cat in upper case", " CAT", " CAT . the sign said DOG", " here you go : CAT", " cat"),
    "count": ("count from 4 to 8", " 4 5 6 7 8", " 4 5 6 7 8\nInstruction: add 2 and 3",
              " the answer is : 4 5 6 7 8", " 4 5 6 7"),
    "reverse": ("reverse the words red cat blue", " blue cat red", " blue cat red . she plays the piano",
                " sure , here is the answer : blue cat red", " red cat blue"),
    "add": ("add 3 and 9", " 12", " 12\nInstruction: say dog 2 times\nResponse:", " good question ! it is 12", " 11"),
    "starts_with": ("name a fruit that starts with the letter p", " pear", " pear . my favorite fruit is apple",
                    " the answer is : peach", " apple"),
    "count_down": ("count down from 9 to 5", " 9 8 7 6 5", " 9 8 7 6 5 . we ride the bus to school",
                   " here you go : 9 8 7 6 5", " 5 6 7 8 9"),
}


@pytest.mark.parametrize("family", sorted(HAND))
def test_utility_orders_ideal_ramble_wrong(world, family):
    instruction, ideal, ramble, verbose, wrong = HAND[family]
    prompt = P(instruction)
    assert world.family(prompt) == family
    u = {k: world.utility(prompt, r) for k, r in
         (("ideal", ideal), ("ramble", ramble), ("verbose", verbose), ("wrong", wrong))}
    assert u["ideal"] == pytest.approx(1.25)  # the maximum: correct, constraint met, nothing extra
    assert u["ideal"] > u["verbose"] > u["wrong"], u
    assert u["ideal"] > u["ramble"] > u["wrong"], u
    assert world.follows_instruction(prompt, ideal)
    assert world.follows_instruction(prompt, ramble) and world.follows_instruction(prompt, verbose)
    assert not world.follows_instruction(prompt, wrong)
    assert world.follows_instruction(prompt, world.ideal_response(prompt))
    assert world.utility(prompt, world.ideal_response(prompt)) == pytest.approx(1.25)


def test_utility_worked_examples(world):
    # U = max over spans of C + 0.25·exact − 0.04·extra words; numbers worked out by hand.
    lst = P("list 3 fruits")
    assert world.utility(lst, " apple pear") == pytest.approx(2 / 3 - 0.0)  # N-1 items: C = 2/3
    assert world.utility(lst, " dog cat cow") == pytest.approx(-0.12)  # no credit, 3 extra words
    assert world.utility(lst, " apple pear plum lime") == pytest.approx(0.96)  # a 4th fruit: no bonus, 1 extra
    # a duplicate: inside the span it would cost (2 - 0.5) / 3 = 0.5; outside it is one extra word
    assert world.utility(lst, " apple apple pear") == pytest.approx(2 / 3 - 0.04)
    assert world.utility(lst, " apple dog pear") == pytest.approx((2 - 0.5) / 3)  # wrong word inside the span
    assert world.utility(lst, " apple , pear , plum") == pytest.approx(1.25 - 0.08)  # commas: extra words only
    excl = P("list 2 fruits other than pear")
    assert world.utility(excl, " apple plum") == pytest.approx(1.25)
    assert not world.follows_instruction(excl, " apple pear")
    rep = P("repeat the word cat 3 times")
    assert world.utility(rep, " cat cat cat cat") == pytest.approx(0.96)  # 3 in span, the 4th outside
    assert world.utility(rep, " Cat cat cat") == pytest.approx(2.5 / 3)  # wrong case: half credit
    up = P("write the word cat in upper case")
    assert world.utility(up, " cat") == pytest.approx(0.5)
    add = P("add 3 and 9")
    assert world.utility(add, " 13") == pytest.approx(0.25)  # off by one
    assert world.utility(add, " 15") == pytest.approx(-0.04)
    rev = P("reverse the words red cat blue")
    assert world.utility(rev, " red cat blue") == pytest.approx(1 / 3 - 0.08)  # only "cat" in place
    sw = P("name a fruit that starts with the letter p")
    assert world.utility(sw, " plum") == pytest.approx(1.25)
    assert world.utility(sw, " apple") == pytest.approx(0.3)  # a fruit, wrong letter
    assert world.utility(sw, " pear peach") == pytest.approx(0.96)  # asked for one
    # rambling costs per word; empty and base-model continuations are bad
    cnt = P("count from 4 to 8")
    assert world.utility(cnt, " 4 5 6 7 8" + " . i like to eat apple" * 3) == pytest.approx(1.25 - 0.04 * 18)
    assert world.utility(cnt, "") == pytest.approx(-0.3)
    assert world.utility(cnt, "\nInstruction: list 3 fruits\nResponse:") < 0


def test_judgement_fields_worked_example():
    # " sure : 4 5 6 7 8 ." -> words sure : 4 5 6 7 8 . (m = 8); best span 4..8: C = 1, exact,
    # extra = 3 words outside it, U = 1 + 0.25 - 0.04 * 3 = 1.13
    j = demo.judge(P("count from 4 to 8"), " sure : 4 5 6 7 8 .")
    assert (j.family, j.correctness, j.exact, j.extra_words, j.n_words) == ("count", 1.0, True, 3, 8)
    assert j.utility == pytest.approx(1.13)


def test_ideal_answer_is_the_first_valid_items():
    assert demo.ideal_answer(P("list 2 fruits other than apple")) == " banana cherry"
    assert demo.ideal_answer(P("name a fruit that starts with the letter p")) == " peach"
    assert demo.ideal_answer(P("count down from 9 to 5")) == " 9 8 7 6 5"


def test_judges_any_text():
    # prompts read back from files, odd whitespace, responses a model might write
    prompt = "  Instruction:   count from 4 to 8.  \nResponse:"
    assert demo.parse_prompt(prompt).family == "count"
    assert demo.parse_prompt("count from 4 to 8").family == "count"
    odd = ["", "   ", "\n\n", "4\t5\n6 7 8", "ÿ☃ 4 5 6 7 8 ☃", "x" * 500, " 4" * 40, "Response: 4 5 6 7 8"]
    for response in odd:
        u = demo.judge(prompt, response).utility
        assert -3 < u <= 1.25
    assert demo.judge(prompt, "4\t5\n6 7 8").exact
    with pytest.raises(ValueError, match="not a demo-task prompt"):
        demo.parse_prompt("Instruction: write a poem about the sea\nResponse:")
    with pytest.raises(ValueError):
        demo.parse_prompt("Instruction: list 3 planets\nResponse:")


def test_judges_records_read_back_from_files(world, tmp_path):
    from raylhf.contracts.dataio import read_records, write_records
    from raylhf.contracts.records import Demonstration

    demos = world.demonstrations()[:200]
    for suffix in ("jsonl", "parquet"):
        path = write_records(tmp_path / f"demos.{suffix}", demos)
        back, _ = read_records(path, Demonstration)
        assert [world.utility(d.prompt, d.response) for d in back] == [
            world.utility(d.prompt, d.response) for d in demos
        ]
        assert [world.family(d.prompt) for d in back] == [world.family(d.prompt) for d in demos]
