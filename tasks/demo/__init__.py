"""The built-in demo task: a small synthetic instruction-following world.

It stands in for the paper's API prompts, hired demonstrators and human labelers, so the whole
pipeline (pretrain -> SFT -> reward model -> PPO-ptx -> eval) runs and can be judged offline.

World
-----
A closed vocabulary of a few hundred lowercase words (eight categories of items, numbers 0..26,
letters, filler words) and the upper-case forms of the item words, so a 1024-token byte-level BPE
makes nearly every word one token. Prompts and responses have one fixed format::

    prompt   = "repeat the word cat 3 times"   (rendered "Instruction: ...\\nResponse:" by CHAT_TEMPLATE)
    response = " cat cat cat"            (leading space; EOS is appended by contracts.formatting)

Instruction families (every answer is checkable from the prompt text alone):

    list         "list 3 fruits [other than pear]"            -> " apple lemon plum"   (any N items)
    repeat       "repeat the word cat 3 times"                -> " cat cat cat"
    upper        "write the word cat in upper case"           -> " CAT"
    count        "count from 4 to 8"                          -> " 4 5 6 7 8"
    reverse      "reverse the words red cat blue"             -> " blue cat red"
    add          "add 3 and 9"                                -> " 12"
    starts_with  "name a fruit that starts with the letter p" -> " pear"               (any such item)
    count_down   "count down from 9 to 5"                     -> " 9 8 7 6 5"

Splits: "train" and "heldout" draw from the same distribution (every family except the
generalization family, items of every category except the generalization category); a stable
hash of the prompt text reserves a share of each family's prompt texts for "heldout", so held-out
prompts are never trained on. "generalization" holds the prompts of the held-out family
(`TaskConfig.generalization_family`) and of the word families whose words come from the held-out
category (`TaskConfig.generalization_category`); neither ever appears in train prompts or
demonstrations, but both appear in the pretraining corpus so the tokenizer and the base model know
the words.

Modules
-------
    vocabulary    categories, families, word helpers
    prompts       prompt format, instruction templates, writing and parsing instructions
    utility       the hidden utility: `judge`, `ideal_answer`
    labeler       the simulated labeler
    calibration   the reference set and the calibration of the labeler's noise
    demonstrator  the demonstrator that writes the SFT responses
    corpus        the pretraining corpus
    comparisons   the seed comparisons
    world         `DemoWorld` (the task) and `build`

This package re-exports their public names, so `raylhf.tasks.demo.<name>` reaches each of them.
"""

from __future__ import annotations

from raylhf.tasks.demo.calibration import (
    calibrate_labeler_noise,
    expected_agreement,
    labeler_agreement,
    reference_pairs,
)
from raylhf.tasks.demo.comparisons import demo_comparisons
from raylhf.tasks.demo.corpus import write_document, write_sentence
from raylhf.tasks.demo.demonstrator import (
    DEMO_KINDS,
    RAMBLE_MAX_WORDS,
    VERBOSE_PREFIXES,
    VERBOSE_SUFFIXES,
    Demonstrator,
)
from raylhf.tasks.demo.labeler import SimulatedLabeler, hash_unit
from raylhf.tasks.demo.prompts import (
    ADD_RANGE,
    CHAT_TEMPLATE,
    COUNT_LEN,
    COUNT_START,
    LIST_EXCLUDE_PROB,
    LIST_EXCLUDE_SUFFIX,
    LIST_N,
    PROMPT_FORMAT,
    REPEAT_N,
    REVERSE_LEN,
    TEMPLATES,
    Spec,
    format_prompt,
    instruction_text,
    parse_prompt,
    write_instruction,
)
from raylhf.tasks.demo.utility import (
    CASE_CREDIT,
    EMPTY_UTILITY,
    EXACT_BONUS,
    EXTRA_WORD_COST,
    OFF_BY_ONE_CREDIT,
    PUNCTUATION,
    UNMATCHED_COST,
    WRONG_LETTER_CREDIT,
    Judgement,
    ideal_answer,
    judge,
)
from raylhf.tasks.demo.vocabulary import (
    CATEGORIES,
    FAMILIES,
    PLURALS,
    SEQUENCE_FAMILIES,
    WORD_FAMILIES,
    Category,
    category_words,
    number_range,
    response_words,
    seen_categories,
    trained_families,
)
from raylhf.tasks.demo.world import SPLITS, DemoWorld, build

__all__ = [
    "ADD_RANGE",
    "CASE_CREDIT",
    "CHAT_TEMPLATE",
    "CATEGORIES",
    "COUNT_LEN",
    "COUNT_START",
    "DEMO_KINDS",
    "EMPTY_UTILITY",
    "EXACT_BONUS",
    "EXTRA_WORD_COST",
    "FAMILIES",
    "LIST_EXCLUDE_PROB",
    "LIST_EXCLUDE_SUFFIX",
    "LIST_N",
    "OFF_BY_ONE_CREDIT",
    "PLURALS",
    "PROMPT_FORMAT",
    "PUNCTUATION",
    "RAMBLE_MAX_WORDS",
    "REPEAT_N",
    "REVERSE_LEN",
    "SEQUENCE_FAMILIES",
    "SPLITS",
    "TEMPLATES",
    "UNMATCHED_COST",
    "VERBOSE_PREFIXES",
    "VERBOSE_SUFFIXES",
    "WORD_FAMILIES",
    "WRONG_LETTER_CREDIT",
    "Category",
    "DemoWorld",
    "Demonstrator",
    "Judgement",
    "SimulatedLabeler",
    "Spec",
    "build",
    "calibrate_labeler_noise",
    "category_words",
    "demo_comparisons",
    "expected_agreement",
    "format_prompt",
    "hash_unit",
    "ideal_answer",
    "instruction_text",
    "judge",
    "labeler_agreement",
    "number_range",
    "parse_prompt",
    "reference_pairs",
    "response_words",
    "seen_categories",
    "trained_families",
    "write_document",
    "write_instruction",
    "write_sentence",
]
