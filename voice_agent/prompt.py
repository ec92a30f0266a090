"""What the LLM is told: the system prompt and the user turn, with the speaker's emotion tag.

The user turn the model sees, when ``emotion.tag_prompt`` is on::

    [speaker: label=angry valence=-0.62 arousal=0.81 confidence=0.70]
    (The speaker sounds upset. Answer calmly and kindly, acknowledge the feeling in a ...)
    I have been waiting for an hour!

The first line is :func:`voice_agent.emotion.prompt_tag`; the second, in parentheses, only
when :func:`voice_agent.emotion.reply_style` asks for different wording (an upset, sad,
unsure or excited speaker heard with confidence >= 0.3); then the words as transcribed.

Why in the user turn and not the system prompt: the system prompt is the same for every
turn, so llama.cpp reuses its KV cache (a long prompt costs seconds to re-process on a
CPU), and DeepSeek-R1 wants every instruction in the user turn anyway. The system prompt
gets one fixed sentence (:data:`TAG_NOTE`) that explains the bracket line. History keeps
the user turns as they were sent, so the next turn's prompt extends this one.
"""

from __future__ import annotations

from voice_agent.config import Config
from voice_agent.emotion import EmotionTag, ReplyStyle, prompt_tag

TAG_NOTE = (
    "A user message may begin with a line in square brackets describing how the person "
    "sounds; let it guide your tone, and never repeat or mention it."
)

ECHO_MARKERS = (("[speaker:", "]"), ("(The speaker sounds", ")"))
"""Openers and closers of the annotations above. A small model sometimes copies them into
its answer (SmolLM2-135M: 5 of 32 replies to the shared clips' sentences; putting the tag
after the words instead gave 2 of 32, too few runs to choose by), so the turn drops them
from the reply with a :class:`~voice_agent.llm.text.SpanFilter`."""


def echo_markers(style: ReplyStyle | None) -> tuple[tuple[str, str], ...]:
    """:data:`ECHO_MARKERS`, plus this turn's instruction as an exact sentence to drop
    (it is also copied without its parentheses)."""
    if style is None or not style.instruction:
        return ECHO_MARKERS
    return (*ECHO_MARKERS, (style.instruction, ""))


def system_prompt(config: Config) -> str:
    """The configured system prompt, plus :data:`TAG_NOTE` when tags go into the prompt."""
    base = config.llm.system_prompt.strip()
    if not (config.emotion.enabled and config.emotion.tag_prompt):
        return base
    return f"{base} {TAG_NOTE}" if base else TAG_NOTE


def user_turn(text: str, tag: EmotionTag | None, style: ReplyStyle | None) -> str:
    """The transcript with the tag line (and wording instruction) in front of it."""
    if tag is None:
        return text
    lines = [prompt_tag(tag)]
    if style is not None and style.instruction:
        lines.append(f"({style.instruction})")
    lines.append(text)
    return "\n".join(lines)
