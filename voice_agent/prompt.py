"""What the LLM is told: the system prompt and the user turn, with the speaker's emotion tag.

The user turn the model sees, when ``emotion.tag_prompt`` is on::

    [speaker: label=angry valence=-0.62 arousal=0.81 confidence=0.70]
    I have been waiting for an hour!

The first line is :func:`voice_agent.emotion.prompt_tag`, then the words as transcribed.
How to answer each label (calmer wording for an upset speaker) is in the system prompt, as
fixed rules (:func:`tag_rules`, from :data:`voice_agent.emotion.WORDING`).

Why the rules are fixed and not a per-turn instruction. Measured with the embedded
SmolLM2-135M on the 29 bench sentences: an instruction line in the user turn (``(The speaker
sounds sad. Answer gently ...)``) was copied back as the whole answer 13 times in 29,
leaving nothing to say; a system prompt that changes per turn would throw away llama.cpp's
KV cache of everything after it (seconds of prompt processing on a CPU). With the fixed rules
below, written as prose (rules written as ``label=angry: ...`` made the model copy that
pattern), 4 of 174 replies (2 seeds x 3 labels x 29) were nothing but a copied tag, and 8
mentioned it. History keeps the user turns as sent, so the next turn's prompt extends this
one.
"""

from __future__ import annotations

from voice_agent.config import Config
from voice_agent.emotion import MIN_WORDING_CONFIDENCE, WORDING, EmotionTag, prompt_tag

TAG_NOTE = (
    "A user message may begin with a line in square brackets describing how the person "
    "sounds; let it guide your tone, and never repeat or mention it."
)
ECHO_MARKERS = (("[speaker:", "]"),)
"""Opener and closer of the tag line. A small model sometimes copies it into its answer
(SmolLM2-135M: 5 of 32 replies in one test run), so the turn drops it from the reply with a
:class:`~voice_agent.llm.text.SpanFilter`."""
ECHO_INSIDE = r"[\w =.\-]"
"""What a copied tag line may contain; the first other character ends it (see SpanFilter)."""


def tag_rules() -> str:
    """One sentence per label: how to word the answer, when the tag is confident enough."""
    rules = "; ".join(f"if {label}, {wording}" for label, wording in WORDING.items())
    return (f"When the line says how the person sounds with confidence "
            f"{MIN_WORDING_CONFIDENCE:.2f} or more: {rules}.")


def system_prompt(config: Config) -> str:
    """The configured system prompt, plus the tag's explanation and rules when tags go into
    the prompt. Fixed for the whole process, so its KV cache is computed once."""
    base = config.llm.system_prompt.strip()
    if not (config.emotion.enabled and config.emotion.tag_prompt):
        return base
    return " ".join(part for part in (base, TAG_NOTE, tag_rules()) if part)


def user_turn(text: str, tag: EmotionTag | None) -> str:
    """The transcript with the tag line in front of it."""
    if tag is None:
        return text
    return f"{prompt_tag(tag)}\n{text}"
