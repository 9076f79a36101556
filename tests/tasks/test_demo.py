"""The demo world: splits, demonstrator, hidden utility, simulated labeler and corpus."""

from __future__ import annotations

import importlib
import itertools
import re
from collections import Counter

import pytest

from raylhf.configs.loader import ConfigError, load_config
from raylhf.configs.schema import TaskConfig
from raylhf.contracts.protocols import Labeler, Task
from raylhf.tasks import demo
from raylhf.tasks.demo import CATEGORIES, DemoWorld, format_prompt


@pytest.fixture(scope="module")
def world() -> DemoWorld:
    """The world of the default config."""
    return demo.build(TaskConfig())


def P(instruction: str) -> str:
    return format_prompt(instruction)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


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


# ---- prompts and splits ------------------------------------------------------------------------


def test_deterministic_for_a_seed():
    kw = dict(n_train_prompts=300, n_heldout_prompts=50, n_generalization_prompts=50, n_pretrain_docs=200)
    a, b, c = DemoWorld(seed=3, **kw), DemoWorld(seed=3, **kw), DemoWorld(seed=4, **kw)
    for split in demo.SPLITS:
        assert a.prompts(split) == b.prompts(split)
    assert a.demonstrations() == b.demonstrations()
    assert a.pretraining_corpus("train") == b.pretraining_corpus("train")
    assert a.pretraining_corpus("heldout") == b.pretraining_corpus("heldout")
    assert demo.reference_pairs(a, 100) == demo.reference_pairs(b, 100)
    assert demo.demo_comparisons(a, 20, 4, seed=1) == demo.demo_comparisons(b, 20, 4, seed=1)
    assert a.prompts("train") != c.prompts("train")
    assert a.demonstrations() != c.demonstrations()
    assert a.pretraining_corpus("train") != c.pretraining_corpus("train")


def test_prompt_ids_sizes_and_format(world):
    for split, n in (("train", 4000), ("heldout", 300), ("generalization", 300)):
        prompts = world.prompts(split)
        assert len(prompts) == n
        assert [p.prompt_id for p in prompts] == [f"{split}-{i:06d}" for i in range(n)]
        for p in prompts:
            assert p.prompt.startswith("Instruction: ") and p.prompt.endswith("\nResponse:")
            assert len(demo.instruction_text(p.prompt).split()) <= 14
    with pytest.raises(ValueError, match="unknown split"):
        world.prompts("test")


def test_splits_are_disjoint(world):
    texts = {s: {p.prompt for p in world.prompts(s)} for s in demo.SPLITS}
    for s, t in itertools.combinations(demo.SPLITS, 2):
        assert not texts[s] & texts[t], (s, t)
    # the held-out split repeats itself only once its share of the prompt space is used up
    assert len(texts["heldout"]) > 0.8 * len(world.prompts("heldout"))


def test_every_family_is_in_train_and_heldout(world):
    trained = set(FAMILIES_TRAINED := [f for f in world.families() if f != world.generalization_family])
    assert len(FAMILIES_TRAINED) >= 6
    assert set(world.families()) == set(demo.FAMILIES)
    train = Counter(world.family(p.prompt) for p in world.prompts("train"))
    heldout = Counter(world.family(p.prompt) for p in world.prompts("heldout"))
    assert set(train) == trained and set(heldout) == trained
    assert min(train.values()) > 0.1 * len(world.prompts("train"))


@pytest.mark.parametrize("family,category", [("count_down", "tool"), ("add", "fruit"), ("reverse", "color")])
def test_generalization_split_is_unseen(family, category):
    world = DemoWorld(n_train_prompts=2000, n_pretrain_docs=2000, generalization_family=family,
                      generalization_category=category)
    cat = CATEGORIES[category]
    unseen = set(cat.items) | {cat.singular, cat.plural}
    train_text = [p.prompt for p in world.prompts("train") + world.prompts("heldout")]
    train_text += [d.prompt + d.response for d in world.demonstrations()]
    for text in train_text:
        assert not _words(text) & unseen, text
        assert world.family(text.split("\nResponse:")[0]) != family, text
    skill_phrases = {"count_down": ("count down", "countdown"), "add": ("add", "plus", "make"),
                     "reverse": ("reverse", "backwards")}[family]
    for d in world.demonstrations():  # rambles never show the held-out family's skill either
        assert not any(re.search(rf"\b{s}\b", d.response) for s in skill_phrases), d
    train_prompts = {p.prompt for p in world.prompts("train")}
    gen = world.prompts("generalization")
    fams = Counter(world.family(p.prompt) for p in gen)
    assert fams[family] > 0 and len(fams) >= 5
    for p in gen:
        assert p.prompt not in train_prompts
        assert world.family(p.prompt) == family or _words(demo.instruction_text(p.prompt)) & unseen, p.prompt
    # ... but the pretraining corpus and the tokenizer corpus know the words
    corpus_words = set().union(*(_words(doc) for doc in world.pretraining_corpus("train")))
    assert set(cat.items) <= corpus_words
    assert {w.upper() for w in cat.items} <= set(" ".join(world.tokenizer_corpus()).split())


# ---- hidden utility and instruction following -------------------------------------------------


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


# ---- demonstrator ----------------------------------------------------------------------------------


def test_demonstrator_flaw_rates(world):
    demos = world.demonstrations_with_kinds()
    assert len(demos) == len(world.prompts("train"))
    assert [d.prompt_id for d, _ in demos] == [p.prompt_id for p in world.prompts("train")]
    n = len(demos)
    kinds = Counter(k for _, k in demos)
    cfg = TaskConfig()
    for kind, rate in (("ramble", cfg.ramble_rate), ("verbose", cfg.verbose_rate), ("wrong", cfg.wrong_rate)):
        tol = 4 * (rate * (1 - rate) / n) ** 0.5  # 4 binomial standard deviations
        assert abs(kinds[kind] / n - rate) < tol, (kind, kinds[kind] / n, rate)
    # the kinds are what the utility sees
    for d, kind in demos:
        j = world.judge(d.prompt, d.response)
        assert d.response.startswith(" ")
        if kind == "good":
            assert j.utility == pytest.approx(1.25), d
        elif kind in ("ramble", "verbose"):
            assert j.exact and j.extra_words > 0 and j.utility < 1.25, d
        else:
            assert not j.exact, d
    # answers fit the 32-token budget: ideal <= 8 words, demonstrations <= ~30 words
    assert max(len(demo.response_words(world.ideal_response(d.prompt))) for d, _ in demos) <= 8
    assert max(len(d.response.split()) for d, _ in demos) <= 30


def test_demonstrator_respects_configured_rates():
    w = DemoWorld(n_train_prompts=1000, ramble_rate=0.0, verbose_rate=0.0, wrong_rate=0.0)
    assert {k for _, k in w.demonstrations_with_kinds()} == {"good"}
    w = DemoWorld(n_train_prompts=1000, ramble_rate=1.0, verbose_rate=0.0, wrong_rate=0.0)
    assert {k for _, k in w.demonstrations_with_kinds()} == {"ramble"}
    with pytest.raises(ValueError, match="must be <= 1"):
        DemoWorld(ramble_rate=0.6, verbose_rate=0.3, wrong_rate=0.2)


# ---- labeler -------------------------------------------------------------------------------------


def test_labeler_calibration(world):
    """Two labelers agree on ~73 % of the fixed reference pairs (InstructGPT 72.6 ± 1.5 %)."""
    agreement = demo.labeler_agreement(world, n_pairs=8000, seed=0)
    assert 0.70 <= agreement["labeler_labeler"] <= 0.76, agreement
    # a labeler agrees more with the noiseless utility than with another labeler
    assert agreement["labeler_labeler"] < agreement["labeler_utility"] < 0.9, agreement
    assert 0.70 <= demo.labeler_agreement(world, n_pairs=8000, seed=10)["labeler_labeler"] <= 0.76
    # the band is a real constraint: no noise or much noise falls outside it
    assert demo.labeler_agreement(world, n_pairs=8000, noise=0.0)["labeler_labeler"] == 1.0
    assert demo.labeler_agreement(world, n_pairs=8000, noise=0.1)["labeler_labeler"] > 0.76
    assert demo.labeler_agreement(world, n_pairs=8000, noise=0.5)["labeler_labeler"] < 0.70
    assert demo.labeler_agreement(world, n_pairs=8000, noise=5.0)["labeler_labeler"] < 0.56
    # the configured noise is what the calibration finds (within sampling error)
    assert demo.calibrate_labeler_noise(world, target=0.726) == pytest.approx(world.labeler_noise, rel=0.1)


def test_reference_set_is_fixed_and_sft_quality(world):
    pairs = demo.reference_pairs(world, 2000)
    assert pairs == demo.reference_pairs(DemoWorld(), 2000)
    assert all(a != b for _, a, b in pairs)
    utilities = [world.utility(p, r) for p, a, b in pairs for r in (a, b)]
    assert sum(u > 0.5 for u in utilities) / len(utilities) > 0.85  # mostly correct responses


def test_labeler_rank_and_prefer(world):
    lab = world.labeler(7)
    assert isinstance(lab, Labeler)
    prompt = P("repeat the word dog 2 times")
    responses = [" dog dog", " dog", " dog dog . my friend has a cat", " dog dog", " cat cat", ""]
    order = lab.rank(prompt, responses)
    assert sorted(order) == list(range(len(responses)))
    # identical responses: a tie, kept next to each other in input order
    assert lab.prefer(prompt, " dog dog", " dog dog") == 0.5
    assert order.index(3) == order.index(0) + 1
    # rank and prefer agree, and a labeler is consistent when asked twice
    for i, j in itertools.combinations(range(len(responses)), 2):
        if responses[i] != responses[j]:
            assert lab.prefer(prompt, responses[i], responses[j]) == float(order.index(i) < order.index(j))
    assert lab.rank(prompt, responses) == order
    # labelers are noisy but mostly right about a big gap
    wins = sum(world.labeler(s).prefer(prompt, " dog dog", " cat cat") for s in range(200))
    assert wins > 190
    # noise-free labeler follows the utility exactly, ties stay ties
    exact = world.labeler(0, noise=0.0)
    assert exact.rank(prompt, [" cat cat", " dog dog", " dog"]) == [1, 2, 0]
    assert exact.prefer(P("list 2 fruits"), " apple pear", " plum lime") == 0.5


def test_demo_comparisons(world):
    comps = demo.demo_comparisons(world, 60, k=4, seed=3)
    assert len(comps) == 60
    train_ids = {p.prompt_id: p.prompt for p in world.prompts("train")}
    lab = world.labeler(3)
    for c in comps:
        assert train_ids[c.prompt_id] == c.prompt
        assert 2 <= len(c.responses) <= 4 and len(set(c.responses)) == len(c.responses)
        assert sorted(c.ranking) == list(range(len(c.responses)))
        assert c.ranking == lab.rank(c.prompt, c.responses)
    assert sum(len(c.responses) == 4 for c in comps) > 0.9 * len(comps)
    with pytest.raises(ValueError):
        demo.demo_comparisons(world, 5, k=10)


# ---- pretraining corpus and tokenizer text -----------------------------------------------------


def test_pretraining_corpus(world):
    docs = world.pretraining_corpus("train")
    heldout = world.pretraining_corpus("heldout")
    assert len(docs) == 20000 and len(heldout) == 1000
    assert sum(len(d.split()) for d in docs) / len(docs) > 15
    # instruction-like lines continued by more instructions, never answered
    continued = 0
    for doc in docs:
        lines = doc.split("\n")
        for a, b in zip(lines, lines[1:]):
            if a.startswith("Instruction: "):
                assert b.startswith("Instruction: ") or b == "Response:", doc
                continued += b.startswith("Instruction: ")
        for a, b in zip(lines, lines[1:]):
            if a == "Response:":
                assert b.startswith("Instruction: "), doc
    assert continued > 1000
    # the facts the families need, written out
    text = "\n".join(docs)
    for pattern in (r"\bapple is a fruit\b", r"\b(\d+) plus (\d+) is (\d+)\b", r"\bin upper case is [A-Z]+\b",
                    r"\bcount with me : \d+ \d+ \d+", r"\bcounting down from \d+", r"\bbackwards is\b",
                    r"\bstarts with the letter [a-z]\b", r"\bsome fruits are\b"):
        assert re.search(pattern, text), pattern
    for a, b, c in re.findall(r"\b(\d+) plus (\d+) is (\d+)\b", text)[:500]:
        assert int(a) + int(b) == int(c)
    with pytest.raises(ValueError):
        world.pretraining_corpus("generalization")


def test_tokenizer_corpus_covers_every_split(world):
    text = " ".join(world.tokenizer_corpus())
    vocab = set(re.findall(r"[A-Za-z]+", text))
    for split in demo.SPLITS:
        for p in world.prompts(split):
            assert set(re.findall(r"[A-Za-z]+", p.prompt)) <= vocab


# ---- configuration -----------------------------------------------------------------------------


def test_build_via_config():
    cfg = load_config("tiny", ["task.seed=5", "task.n_train_prompts=100", "task.generalization_family=add"])
    module = importlib.import_module(f"raylhf.tasks.{cfg.task.name}")
    world = module.build(cfg.task)
    assert isinstance(world, Task) and world.name == "demo"
    assert world.seed == 5 and world.generalization_family == "add"
    assert len(world.prompts("train")) == 100
    assert world.labeler_noise == cfg.task.labeler_noise
    with pytest.raises(ConfigError, match="generalization_family"):
        load_config("tiny", ["task.generalization_family=poems"])
    with pytest.raises(ConfigError, match="heldout_share"):
        load_config("tiny", ["task.heldout_share=1.5"])
