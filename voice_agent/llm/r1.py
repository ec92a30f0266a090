"""DeepSeek-R1 specifics of prompt formatting and sampling, against the model's own template.

What the real template does (the one in DeepSeek-R1-Distill-Qwen-7B's GGUF, tested in
``tests/llm/test_r1.py``):

- The system prompt is *kept*, but as bare text right after the BOS token, with no role
  marker and no separator: ``<｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>``.
- The generation prompt is ``<｜Assistant｜>`` alone; this revision does not open ``<think>``
  (later revisions of the template append ``<think>\\n``). Whether an engine starts inside
  reasoning is therefore read from the rendered generation prompt
  (:func:`generation_opens_reasoning`), not assumed.
- Past assistant turns keep only what follows their last ``</think>``: reasoning from history
  is never fed back.

DeepSeek's usage guidance for R1 is to avoid a system prompt and put every instruction in the
user turn, and to sample at temperature 0.6, top-p 0.95 (greedy or cold sampling makes it
repeat itself). So for R1 the system prompt is always folded into the first user turn
(:func:`should_fold_system`), even though the template would keep it: the distilled models
were tuned without system prompts, and the template gives it no role, so as bare text before
the first turn it is weaker than the same words inside the user turn. Folding is also what
any template that drops the system prompt needs (:func:`template_keeps_system`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voice_agent.llm.base import ChatMessage, as_payload

if TYPE_CHECKING:
    from voice_agent.config import LlmConfig

R1_SAMPLING = {"temperature": 0.6, "top_p": 0.95}
"""DeepSeek's recommended sampling for R1 models (temperature 0.5-0.7, 0.6 preferred)."""

USER_MARKER = "<｜User｜>"
ASSISTANT_MARKER = "<｜Assistant｜>"
SYSTEM_FOLD_SEPARATOR = "\n\n"
"""Folded instructions are joined to the user's text by one blank line: ``SYSTEM\\n\\nUSER``."""

_R1_NAME = re.compile(r"deepseek[\W_]*r1", re.IGNORECASE)
_SYSTEM_PROBE = "SYSTEM-PROBE-7f3a9c"
_USER_PROBE = "USER-PROBE-2b81d4"
_LATE_PROBE = "LATE-PROBE-5e0c17"


def is_deepseek_r1(chat_template: str, model_name: str = "") -> bool:
    """True for a DeepSeek-R1 model (the R1 releases and their Qwen/Llama distills).

    Detected by the template's role markers together with its ``<think>`` handling, or by a
    name such as ``DeepSeek-R1-Distill-Qwen-7B``.
    """
    template = chat_template or ""
    by_template = ASSISTANT_MARKER in template and (
        "<think>" in template or "</think>" in template
    )
    return by_template or bool(_R1_NAME.search(model_name or ""))


def sampling_for(chat_template: str, model_name: str, config: LlmConfig) -> tuple[float, float]:
    """``(temperature, top_p)`` for this model: R1's recommended values, else the config's."""
    if is_deepseek_r1(chat_template, model_name):
        return R1_SAMPLING["temperature"], R1_SAMPLING["top_p"]
    return config.temperature, config.top_p


def render_prompt(
    chat_template: str,
    messages: Sequence[ChatMessage],
    bos_token: str,
    eos_token: str,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The exact prompt text llama-cpp-python builds from this template (sandboxed jinja2)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=chat_template,
        eos_token=eos_token,
        bos_token=bos_token,
        add_generation_prompt=add_generation_prompt,
    )
    payload: list[Any] = as_payload(messages)
    return str(formatter(messages=payload).prompt)


def template_keeps_system(chat_template: str, bos_token: str = "", eos_token: str = "") -> bool:
    """Whether the template renders a system message's text at all.

    A template that raises on a system message (some do) counts as dropping it.
    """
    probe = [ChatMessage("system", _SYSTEM_PROBE), ChatMessage("user", _USER_PROBE)]
    try:
        prompt = render_prompt(chat_template, probe, bos_token, eos_token)
    except Exception:
        return False
    return _SYSTEM_PROBE in prompt


def generation_opens_reasoning(
    chat_template: str, bos_token: str = "", eos_token: str = ""
) -> bool:
    """Whether the generation prompt already opens ``<think>`` (so the reply starts inside
    reasoning and a :class:`~voice_agent.llm.text.ReasoningFilter` must start there too)."""
    try:
        probe = [ChatMessage("user", _USER_PROBE)]
        prompt = render_prompt(chat_template, probe, bos_token, eos_token)
    except Exception:
        return False
    return prompt.rstrip().endswith("<think>")


def should_fold_system(chat_template: str, model_name: str = "", bos_token: str = "",
                       eos_token: str = "") -> bool:
    """Fold the system prompt into the first user turn: always for R1 (DeepSeek's guidance,
    see the module docstring), and for any template that would drop it."""
    if is_deepseek_r1(chat_template, model_name):
        return True
    return not template_keeps_system(chat_template, bos_token, eos_token)


def template_keeps_late_system(chat_template: str, bos_token: str = "",
                               eos_token: str = "") -> bool:
    """Whether the template renders a system message that comes after the first exchange
    (where the per-turn emotion tag goes) in its place. Some raise on it, R1's keeps only
    the last system message as the system prompt: both count as no."""
    probe = [ChatMessage("system", _SYSTEM_PROBE), ChatMessage("user", _USER_PROBE),
             ChatMessage("assistant", "A"), ChatMessage("system", _LATE_PROBE),
             ChatMessage("user", _USER_PROBE)]
    try:
        prompt = render_prompt(chat_template, probe, bos_token, eos_token)
    except Exception:
        return False
    return _SYSTEM_PROBE in prompt and prompt.find(_USER_PROBE) < prompt.find(_LATE_PROBE)


def adapt_messages(messages: Sequence[ChatMessage], keeps_system: bool,
                   keeps_late_system: bool | None = None) -> list[ChatMessage]:
    """Messages as the template should see them.

    A system message the template cannot take goes in front of the next user turn, as
    ``SYSTEM + "\n\n" + USER`` (several are joined by blank lines; with no user turn after
    them they become one). Leading system messages (the system prompt) follow
    ``keeps_system`` and later ones (per-turn notes) ``keeps_late_system``, which defaults
    to ``keeps_system``. The instructions so appear exactly once, in front of the turn
    they belong to.
    """
    keeps_late = keeps_system if keeps_late_system is None else keeps_late_system
    adapted: list[ChatMessage] = []
    pending: list[str] = []
    started = False
    for message in messages:
        if message.role == "system":
            if keeps_late if started else keeps_system:
                adapted.append(message)
            elif message.content.strip():
                pending.append(message.content.strip())
            continue
        started = True
        if message.role == "user" and pending:
            message = ChatMessage("user", SYSTEM_FOLD_SEPARATOR.join([*pending, message.content]))
            pending = []
        adapted.append(message)
    if pending:
        adapted.append(ChatMessage("user", SYSTEM_FOLD_SEPARATOR.join(pending)))
    return adapted


@dataclass(frozen=True)
class PromptPolicy:
    """How one loaded model is prompted and sampled, read once from its chat template."""

    is_r1: bool
    fold_system: bool
    """Move the system prompt into the first user turn (:func:`should_fold_system`)."""
    fold_late_system: bool
    """Move later system messages into their next user turn
    (:func:`template_keeps_late_system`)."""
    opens_reasoning: bool
    """The generation prompt already opens ``<think>`` (:func:`generation_opens_reasoning`)."""
    temperature: float
    top_p: float

    @classmethod
    def for_template(cls, chat_template: str, model_name: str, config: LlmConfig, *,
                     bos_token: str = "", eos_token: str = "") -> PromptPolicy:
        """Without a template the runtime's built-in chat format (or a server's template)
        is used; it keeps the system prompt, so only an R1 (known by name) folds it."""
        is_r1 = is_deepseek_r1(chat_template, model_name)
        if chat_template:
            fold = should_fold_system(chat_template, model_name, bos_token, eos_token)
            fold_late = fold or not template_keeps_late_system(chat_template, bos_token,
                                                               eos_token)
            opens = generation_opens_reasoning(chat_template, bos_token, eos_token)
        else:
            # Unknown template (a server's, or the runtime's default): a late system message
            # is the one thing some templates reject, so it goes into the user turn.
            fold, fold_late, opens = is_r1, True, False
        temperature, top_p = sampling_for(chat_template, model_name, config)
        return cls(is_r1=is_r1, fold_system=fold, fold_late_system=fold_late,
                   opens_reasoning=opens, temperature=temperature, top_p=top_p)

    @property
    def reasons(self) -> bool:
        """The model thinks before it answers (R1, or a template that opens ``<think>``)."""
        return self.is_r1 or self.opens_reasoning

    def generation_limit(self, config: LlmConfig) -> int:
        """Tokens the engine may generate for one reply.

        A reasoning model gets its reasoning budget on top of the answer's length: with one
        shared cap, R1's hundreds of thinking tokens would use it up before the answer began.
        The turn itself still caps the answer at ``max_tokens`` pieces after the reasoning.
        """
        if self.reasons:
            return config.reasoning_budget_tokens + config.max_tokens
        return config.max_tokens

    def messages(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        return adapt_messages(messages, keeps_system=not self.fold_system,
                              keeps_late_system=not self.fold_late_system)

    def payload(self, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        """:meth:`messages`, as the chat APIs take them."""
        return as_payload(self.messages(messages))
