"""What the LLM is told: the system prompt, and the speaker's emotion tag before each turn.

With ``emotion.tag_prompt`` on, each user turn is preceded by a system message holding only
the tag (:func:`voice_agent.emotion.prompt_tag`)::

    system: [speaker: label=angry valence=-0.62 arousal=0.81 confidence=0.70]
    user:   I have been waiting for an hour!

How to answer each label (calmer wording for an upset speaker) is in the system prompt, as
fixed rules (:func:`tag_rules`, from :data:`voice_agent.emotion.WORDING`). Templates that
cannot take a system message there get the tag folded in front of the user's words instead
(:class:`voice_agent.llm.r1.PromptPolicy`; DeepSeek-R1 always does). History keeps the tags,
so the next turn's prompt extends this one and llama.cpp's KV cache holds.

Why this shape, measured with the embedded SmolLM2-135M on the 29 bench sentences:

- a per-turn instruction line in the user turn (``(The speaker sounds sad. Answer gently
  ...)``) was copied back as the whole answer 13 times in 29; a system prompt that changes
  per turn would throw away the KV cache of everything after it (seconds on a CPU). Fixed
  rules, written as prose (``label=angry: ...`` made the model copy that pattern), avoid both;
- the tag line in front of the words was copied into the answer in 19 of 58 replies (2
  seeds), costing ~300 ms of tokens before the answer even when removed; after the words, 4;
  as its own system message, 0 or 1 (two wordings of the note).
"""

from __future__ import annotations

from voice_agent.config import Config
from voice_agent.emotion import MIN_WORDING_CONFIDENCE, WORDING, EmotionTag, prompt_tag

TAG_NOTE = (
    "Before each user message a line in square brackets describes how the person sounds; "
    "let it guide your tone, and never repeat or mention it."
)
ECHO_MARKERS = (("[speaker:", "]"),)
"""Opener and closer of the tag line. A small model may still copy it into its answer (see
above), so the turn drops it from the reply with a :class:`~voice_agent.llm.text.SpanFilter`."""
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


def tag_note(tag: EmotionTag) -> str:
    """The system note that goes right before the user's words."""
    return prompt_tag(tag)
