"""How prompts and responses become token ids: chat templates, BOS once (or never), end-of-turn, input templates."""

from __future__ import annotations

import pytest

from raylhf.contracts.formatting import PromptFormat, adds_bos, end_of_turn_id
from raylhf.contracts.protocols import SamplingSpec
from raylhf.contracts.records import Comparison, Demonstration, Prompt
from raylhf.tasks.demo import CHAT_TEMPLATE, format_prompt

CORPUS = ["Instruction: add 3 and 9\nResponse: 12", "the cat sat on the mat", "hello world"] * 40
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory):
    from raylhf.learners.models import train_tokenizer

    return train_tokenizer(CORPUS, 300, tmp_path_factory.mktemp("demo_tok"), chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def chatml_tokenizer(tmp_path_factory):
    """Qwen2-like: no BOS at all, ChatML turns closed by `<|im_end|>`, EOS `<|endoftext|>`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML
    return tok


def test_demo_template_renders_the_frame_after_one_bos(demo_tokenizer):
    fmt = PromptFormat(demo_tokenizer)
    p = Prompt("p", "add 3 and 9")
    assert fmt.prompt_text(p) == "<|bos|>" + format_prompt("add 3 and 9")
    ids = fmt.prompt_ids(p)
    # The ids a text-completion request of the framed prompt gets from the saved tokenizer (it adds BOS itself).
    assert ids == demo_tokenizer(format_prompt("add 3 and 9"))["input_ids"]
    assert ids.count(demo_tokenizer.bos_token_id) == 1 and ids[0] == demo_tokenizer.bos_token_id
    assert fmt.end_of_turn == demo_tokenizer.eos_token_id
    assert fmt.response_ids(" 12")[-1] == demo_tokenizer.eos_token_id


def test_no_template_uses_the_input_template_and_the_tokenizers_bos(demo_tokenizer):
    fmt = PromptFormat(demo_tokenizer, "none", "Instruction: {prompt}\nResponse:")
    assert fmt.template is None and adds_bos(demo_tokenizer)
    assert fmt.prompt_ids(Prompt("p", "add 3 and 9")) == PromptFormat(demo_tokenizer).prompt_ids(Prompt("p", "add 3 and 9"))
    plain = PromptFormat(demo_tokenizer, "none")
    assert plain.prompt_text(Prompt("p", "hello")) == "hello"
    with pytest.raises(ValueError, match="placeholder"):
        PromptFormat(demo_tokenizer, "none", "no slot")


def test_chatml_without_bos_ends_turns_with_im_end(chatml_tokenizer):
    tok = chatml_tokenizer
    fmt = PromptFormat(tok)
    assert not adds_bos(tok) and tok.bos_token_id is None
    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    d = Demonstration("d", "hello", " world", messages=convo)
    text = fmt.prompt_text(d)
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.prompt_ids(d) == tok.encode(text, add_special_tokens=False)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert fmt.end_of_turn == im_end and fmt.response_ids("world")[-1] == im_end
    assert set(fmt.stop_ids) == {im_end, tok.eos_token_id}
    spec = fmt.sampling(SamplingSpec(stop_token_ids=(7,)))
    assert spec.stop_token_ids == (7, tok.eos_token_id, im_end)
    # A plain-text prompt is one user turn.
    assert fmt.prompt_text(Prompt("p", "hello")).startswith("<|im_start|>user\nhello<|im_end|>")


def test_template_from_a_file_and_conversations_need_a_template(chatml_tokenizer, tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text(CHATML)
    fmt = PromptFormat(chatml_tokenizer, str(path))
    assert fmt.template == CHATML
    with pytest.raises(FileNotFoundError, match="data.chat_template"):
        PromptFormat(chatml_tokenizer, str(tmp_path / "missing.jinja"))
    none = PromptFormat(chatml_tokenizer, "none")
    two_turns = Comparison("c", "again", ["a", "b"], [0, 1], messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"}])
    with pytest.raises(ValueError, match="field 'messages'.*needs a chat template"):
        none.prompt_ids(two_turns)
    one_turn = Prompt("p", "hi", messages=[{"role": "user", "content": "hi"}])
    assert none.prompt_text(one_turn) == "hi"


def test_end_of_turn_falls_back_to_eos_when_the_template_writes_plain_text(demo_tokenizer):
    template = "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}"
    assert end_of_turn_id(demo_tokenizer, template) == demo_tokenizer.eos_token_id
    assert end_of_turn_id(demo_tokenizer, None) == demo_tokenizer.eos_token_id
