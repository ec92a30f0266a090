"""What the LLM is told: the system prompt, and the speaker's emotion tag before each turn.

With ``emotion.tag_prompt`` on, a user turn whose tag has something to say (a label other
than neutral, with confidence of at least ``MIN_WORDING_CONFIDENCE``) is preceded by a system
message holding only the label (:func:`tag_note`); other turns get no note::

    system: [tone: angry]
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
  as its own system message, 0 or 1 (two wordings of the note);
- the full tag (``[speaker: label=neutral valence=-0.03 arousal=0.52 confidence=0.81]``) made
  the model talk about it ("... as a neutral valence chemistry assistant, I'm not ..."): 4
  of 58 spoken replies (29 bench clips, 2 seeds) held the tag's words. Numbers invite
  discussion and a neutral tag has nothing to steer, so only a confident, non-neutral label
  is sent: 0 of 58 spoken (the model copied ``[tone: happy]`` twice, removed by the echo
  filter), measured with ``benchmarks/tag_mentions.py``. The turn also drops any sentence
  that still talks about the tag (:func:`mentions_tag`).
"""

from __future__ import annotations

import re

from voice_agent.config import Config
from voice_agent.emotion import LABELS, MIN_WORDING_CONFIDENCE, WORDING, EmotionTag

TAG_NOTE = (
    "Some user messages come right after a line like [tone: sad] that says how the person "
    "sounds; let it shape how you word your answer, and never repeat, quote or talk about it."
)
ECHO_MARKERS = (("[tone:", "]"), ("[speaker:", "]"))
"""Opener and closer of the tag line. A small model may still copy it into its answer (see
above), so the turn drops it from the reply with a :class:`~voice_agent.llm.text.SpanFilter`."""
ECHO_INSIDE = r"[\w =.\-]"
"""What a copied tag line may contain; the first other character ends it (see SpanFilter)."""


def tag_rules() -> str:
    """One clause per label: how to word the answer."""
    rules = "; ".join(f"if {label}, {wording}" for label, wording in WORDING.items())
    return f"When the tone line is there: {rules}."


def system_prompt(config: Config) -> str:
    """The configured system prompt, plus the tag's explanation and rules when tags go into
    the prompt. Fixed for the whole process, so its KV cache is computed once."""
    base = config.llm.system_prompt.strip()
    if not (config.emotion.enabled and config.emotion.tag_prompt):
        return base
    return " ".join(part for part in (base, TAG_NOTE, tag_rules()) if part)


_TAG_TALK = re.compile(
    r"\b(?:valence|arousal)\b"
    r"|\blabel\s*[=:]\s*(?:" + "|".join(LABELS) + r")\b|\b(?:speaker|tone)\s*:"
    r"|\bconfidence\s*[=:(]|\bconfidence\W+(?:\w+\W+){0,3}?[-+]?\d*\.\d"
    r"|\b(?:labell?ed|tagged)\s+(?:as\s+)?(?:" + "|".join(LABELS) + r")\b"
    r"|\b(?:" + "|".join(LABELS) + r")\s+(?:label|tag)\b"
    r"|\b(?:emotion(?:al)?|tone|mood|speaker)\s+(?:tag|label|note|line)\b"
    r"|\bsquare\s+brackets?\b|\bbracket(?:ed)?\s+line\b",
    re.IGNORECASE)


_LABEL_WORD = re.compile(r"\b(?:" + "|".join(LABELS) + r")\b", re.IGNORECASE)


def may_lead_to_tag(fragment: str) -> bool:
    """Whether the start of a sentence names an emotion label ("This sounds neutral,"): the
    rest may talk about the tag, so it is judged whole before any of it is spoken."""
    return bool(_LABEL_WORD.search(fragment))


def mentions_tag(sentence: str) -> bool:
    """Whether a sentence of the reply talks about the emotion tag (its field names, a label
    used as a label, the bracket line) rather than answering. Narrow on purpose: a reply
    about confidence or a pharmacy label must still be spoken."""
    return bool(_TAG_TALK.search(sentence))


def tag_note(tag: EmotionTag) -> str:
    """The system note that goes right before the user's words: ``[tone: LABEL]``, or ""
    (no note) when the tag gives the wording nothing to go on (neutral, or a guess)."""
    if tag.label not in WORDING or tag.confidence < MIN_WORDING_CONFIDENCE:
        return ""
    return f"[tone: {tag.label}]"
