"""Reasoning filter and sentence chunker: examples, and invariance under any split of the text."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from voice_agent.llm.text import (
    Filtered,
    ReasoningFilter,
    SentenceChunker,
    SpanFilter,
    clean_for_speech,
    ends_sentence,
)
from voice_agent.prompt import ECHO_INSIDE, ECHO_MARKERS


def filter_pieces(pieces: list[str], *, starts_in_reasoning: bool | None = False) -> Filtered:
    rf = ReasoningFilter(starts_in_reasoning=starts_in_reasoning)
    total = Filtered()
    for piece in pieces:
        out = rf.feed(piece)
        total.speech += out.speech
        total.reasoning += out.reasoning
    out = rf.finish()
    total.speech += out.speech
    total.reasoning += out.reasoning
    return total


def chunk_pieces(pieces: list[str], **options: int) -> list[str]:
    chunker = SentenceChunker(**options)
    chunks: list[str] = []
    for piece in pieces:
        chunks.extend(chunker.feed(piece))
    return chunks + chunker.finish()


def alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def split_text(text: str, cuts: list[int]) -> list[str]:
    points = [0, *sorted({c % (len(text) + 1) for c in cuts}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(points)]


# --- ReasoningFilter: examples --------------------------------------------------------


def test_think_block_goes_to_reasoning() -> None:
    out = filter_pieces(["<think>abc</think>Hello"])
    assert out.speech == "Hello"
    assert out.reasoning == "abc"


def test_newlines_after_the_think_block_are_not_spoken() -> None:
    out = filter_pieces(["<think>\nplan\n</think>\n\nHi there."])
    assert out.speech == "Hi there."
    assert out.reasoning == "\nplan\n"


def test_text_before_and_between_blocks_is_speech() -> None:
    out = filter_pieces(["Sure. <think>a</think>One <think>b</think>two"])
    assert out.speech == "Sure. One two"
    assert out.reasoning == "ab"


def test_newlines_after_the_think_block_are_dropped_across_pieces() -> None:
    out = filter_pieces(["<think>plan</think>", "\n", "\nHi", "\nthere"])
    assert out.speech == "Hi\nthere"


def test_stream_that_starts_inside_reasoning() -> None:
    # The DeepSeek-R1 chat template already opened <think>: the stream starts inside it.
    out = filter_pieces(["Let me think.", "</think>", "The answer is four."],
                        starts_in_reasoning=True)
    assert out.speech == "The answer is four."
    assert out.reasoning == "Let me think."


def test_unclosed_think_keeps_everything_out_of_speech() -> None:
    out = filter_pieces(["Hi. <think>secret plan", " continues", " forever </thi"])
    assert out.speech == "Hi. "
    assert "secret plan continues forever" in out.reasoning
    assert "secret" not in out.speech


def test_open_tag_written_again_inside_reasoning_is_dropped() -> None:
    """R1 served with a template that opens <think>, by a model that writes it again."""
    out = filter_pieces(["<thi", "nk>\nLet me see.", "</think>\n\nFour."],
                        starts_in_reasoning=True)
    assert out == Filtered(speech="Four.", reasoning="\nLet me see.")


def test_stray_close_tag_is_never_spoken() -> None:
    out = filter_pieces(["Four.</th", "ink> Five."])
    assert out.speech == "Four. Five." and out.reasoning == ""


@pytest.mark.parametrize(("pieces", "speech", "reasoning"), [
    (["Let me see.", "</think>", "Four."], "Four.", "Let me see."),
    (["<think>Let me see.</think>", "Four."], "Four.", "Let me see."),
    (["Four, and ", "nothing else."], "Four, and nothing else.", "Four, and nothing else."),
])
def test_undecided_start_is_decided_by_the_stream(
    pieces: list[str], speech: str, reasoning: str
) -> None:
    """Unknown template: text counts as reasoning (kept out of speech while it streams)
    until a tag decides; with no tag at all it was the answer and is spoken at the end."""
    rf = ReasoningFilter(starts_in_reasoning=None)
    outs = [rf.feed(piece) for piece in pieces]
    assert all(out.speech == "" for out in outs[:-1])
    outs.append(rf.finish())
    assert "".join(out.speech for out in outs) == speech
    assert "".join(out.reasoning for out in outs) == reasoning


def test_unclosed_when_starting_in_reasoning() -> None:
    out = filter_pieces(["reasoning without an end"], starts_in_reasoning=True)
    assert out.speech == ""
    assert out.reasoning == "reasoning without an end"


def test_tag_split_across_pieces_is_held_back() -> None:
    rf = ReasoningFilter()
    first = rf.feed("Hello <th")
    assert first.speech == "Hello "  # '<th' might start a tag: not spoken yet
    second = rf.feed("ink>x</thi")
    assert second.speech == ""
    assert second.reasoning == "x"
    third = rf.feed("nk>World")
    assert third.speech == "World"


@pytest.mark.parametrize("text", ["a < b", "1 <2 and 3> 2", "<", "x <t", "<thin", "<<think"])
def test_lone_angle_brackets_pass_through(text: str) -> None:
    assert filter_pieces([text]).speech == text
    assert filter_pieces(list(text)).speech == text


def test_held_partial_tag_is_flushed_as_speech_by_finish() -> None:
    rf = ReasoningFilter()
    assert rf.feed("a <thi").speech == "a "
    assert rf.finish().speech == "<thi"
    assert rf.finish().speech == ""


# --- ReasoningFilter: any split -------------------------------------------------------

reasoning_texts = st.lists(
    st.sampled_from(["<think>", "</think>", "<", ">", "<th", "ink>", "\n", " ", "a", "Hi.", "x y"]),
    max_size=25,
).map("".join)


@settings(max_examples=400)
@example(text="<think>a</think>\n\nHi", cuts=[16], starts_in_reasoning=False)
@example(text="a</think>\nHi", cuts=[9, 10], starts_in_reasoning=True)
@given(
    text=st.one_of(reasoning_texts, st.text(max_size=40)),
    cuts=st.lists(st.integers(0, 200), max_size=12),
    starts_in_reasoning=st.sampled_from([True, False, None]),
)
def test_reasoning_filter_is_independent_of_splits(
    text: str, cuts: list[int], starts_in_reasoning: bool | None
) -> None:
    whole = filter_pieces([text], starts_in_reasoning=starts_in_reasoning)
    split = filter_pieces(split_text(text, cuts), starts_in_reasoning=starts_in_reasoning)
    assert split == whole
    assert filter_pieces(list(text), starts_in_reasoning=starts_in_reasoning) == whole


@given(text=st.text(max_size=60).filter(lambda t: "<" not in t))
def test_text_without_tags_is_all_speech(text: str) -> None:
    assert filter_pieces(list(text)) == Filtered(speech=text, reasoning="")


# --- SentenceChunker: examples --------------------------------------------------------


def test_sentences_are_emitted_as_soon_as_complete() -> None:
    chunker = SentenceChunker()
    assert chunker.feed("Hello there") == []
    assert chunker.feed(".") == []  # could still be "...", or a decimal
    assert chunker.feed(" How") == ["Hello there."]
    assert chunker.feed(" are you? I am") == ["How are you?"]
    assert chunker.feed(" fine!\n") == ["I am fine!"]
    assert chunker.finish() == []


def test_finish_emits_the_rest() -> None:
    chunker = SentenceChunker()
    assert chunker.feed("No full stop here") == []
    assert chunker.finish() == ["No full stop here"]
    assert chunker.finish() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith is in. Mr. Jones is out. ", ["Dr. Smith is in.", "Mr. Jones is out."]),
        ("It costs 3.5 dollars. Cheap. ", ["It costs 3.5 dollars.", "Cheap."]),
        ("Use tools, e.g. a hammer. Done. ", ["Use tools, e.g. a hammer.", "Done."]),
        ('He said "stop." Then left. ', ['He said "stop."', "Then left."]),
        ("Really?! Yes... maybe. ", ["Really?!", "Yes...", "maybe."]),
        ("Line one\nLine two\n", ["Line one", "Line two"]),
    ],
)
def test_sentence_boundaries(text: str, expected: list[str]) -> None:
    assert chunk_pieces([text]) == expected


def test_first_chunk_may_end_at_a_clause_after_enough_words() -> None:
    text = "Well, the weather today is sunny and warm, so go outside, have fun, and relax. "
    assert chunk_pieces(list(text), first_chunk_min_words=6, first_chunk_max_words=0) == [
        "Well, the weather today is sunny and warm,",
        "so go outside, have fun, and relax.",
    ]
    assert chunk_pieces(list("Yes, of course, I can. ")) == ["Yes, of course,", "I can."]


def test_earliest_break_wins_when_text_arrives_at_once() -> None:
    text = "One two three four five six, seven eight. Next one. "
    expected = ["One two three four five six,", "seven eight.", "Next one."]
    assert chunk_pieces([text]) == expected
    assert chunk_pieces(list(text)) == expected


def test_clause_break_needs_the_minimum_word_count() -> None:
    assert chunk_pieces(list("One two, three four five. ")) == ["One two, three four five."]
    assert chunk_pieces(list("One two, three four five, six. "), first_chunk_min_words=2) == [
        "One two,",
        "three four five, six.",
    ]


UNPUNCTUATED = ("The pharmacy on Main Street opens at nine tomorrow morning and closes at six "
                "in the evening so you have plenty of time")


def test_unpunctuated_first_sentence_is_cut_after_a_few_words() -> None:
    """A small model often writes a long first sentence with no comma: the first chunk is
    cut at a word boundary (before 'at', a preposition) two words later, not when the
    sentence ends; the rest of the reply stays whole sentences."""
    chunker = SentenceChunker()
    words = UNPUNCTUATED.split()
    first: list[str] = []
    seen = 0
    while not first:
        first = chunker.feed(words[seen] + " ")
        seen += 1
    assert first == ["The pharmacy on Main Street opens"]
    assert seen == 8  # decided once 'nine' begins: two words past the cut
    assert not ends_sentence(first[0])  # the turn speaks the rest of this sentence too
    assert chunker.feed(" ".join(words[seen:]) + ". Then more words follow here. ") == [
        "at nine tomorrow morning and closes at six in the evening so you have plenty of time.",
        "Then more words follow here.",
    ]


@pytest.mark.parametrize(("text", "first"), [
    ("The capital of France is Paris which is known for its food",
     "The capital of France is Paris"),
    ("I think that you should call the doctor right away", "I think that you should call"),
    ("Of course I can help you find a good restaurant near you", "Of course I can help you find"),
    ("Sure thing my friend I would be happy to help", "Sure thing my friend"),
    ("It costs twenty five dollars and fifty cents for the whole thing",
     "It costs twenty five dollars and fifty cents"),
    ("Call me at 555 1234 or 555 9876 between nine and five", "Call me at 555 1234"),
    ("Dr. Smith can see the patient in room twelve today", "Dr. Smith can see the patient"),
    ("We open at 9 am every weekday except public holidays", "We open at 9 am every weekday"),
    ("Yes the pharmacy opens at nine tomorrow", "Yes the pharmacy opens"),
])
def test_first_chunk_boundary(text: str, first: str) -> None:
    """Before a conjunction, preposition or relative word when there is one; never inside
    a number or after an abbreviation, an article, an auxiliary or a pronoun."""
    for pieces in ([text], list(text), [word + " " for word in text.split()]):
        chunks = chunk_pieces(pieces)
        assert chunks[0] == first
        assert " ".join(chunks) == text


@pytest.mark.parametrize("text", [
    "One two three four five six seven.",
    "One two three four five six",
    "Hi.",
    "The pharmacy opens at nine.",
])
def test_short_sentences_are_not_cut(text: str) -> None:
    """A word cut waits until two words past it have begun: a sentence that ends first is
    one chunk, so no sentence is left with a one-word tail."""
    assert chunk_pieces(list(text + " ")) == [text]


def test_word_cut_can_be_turned_off() -> None:
    assert chunk_pieces([UNPUNCTUATED], first_chunk_max_words=0) == [UNPUNCTUATED]


def test_force_first_cuts_the_complete_words() -> None:
    """For a slow model: the turn's clock calls force_first; it cuts at the latest allowed
    boundary among the complete words and only once, with at least the minimum."""
    chunker = SentenceChunker()
    assert chunker.feed("Well I") == []
    assert chunker.force_first() == []  # one complete word: too few
    assert chunker.feed(" think the answer to your") == []
    assert chunker.force_first() == ["Well I think the answer"]  # 'to' is still being written
    assert chunker.feed(" question is four. And") == ["to your question is four."]
    assert chunker.force_first() == []  # only the first chunk is ever forced
    assert chunker.finish() == ["And"]
    assert SentenceChunker().force_first() == []


def test_markdown_symbols_are_removed() -> None:
    text = "**Bold** and _italic_ with `code`. # Heading ~~gone~~\n"
    assert chunk_pieces([text], first_chunk_max_words=0) == [
        "Bold and italic with code.", "Heading gone"]
    assert clean_for_speech("  a\t*b*   c \n") == "a b c"


def test_chunks_without_words_are_dropped() -> None:
    assert chunk_pieces(["... !!! \n\n *** \n"]) == []


def test_overlong_sentence_is_cut_at_a_space() -> None:
    words = " ".join(f"word{i}" for i in range(60))
    chunks = chunk_pieces([words], max_chunk_chars=50)
    assert all(len(chunk) <= 50 for chunk in chunks)
    assert " ".join(chunks) == words


# --- SentenceChunker: any split -------------------------------------------------------

chunk_texts = st.lists(
    st.sampled_from([
        "Hello", "world", "Dr.", "3.5", "e.g.", " ", " ", " ", "  ", ".", "!", "?", ",", ";",
        "\n", "**", "#", "one two three", "four five six seven", '"', ")", "Ok.", "a", "end",
        " and ", " at ", " the ", " 9 ", " am ", " twenty ", " you ", " it's ", "-",
    ]),
    max_size=40,
).map("".join)
word_texts = st.lists(
    st.sampled_from(["and", "at", "the", "9", "am", "twenty", "five", "you", "Dr.", "call",
                     "pharmacy", "opens", "which", "is", "it's", "tomorrow", "Paris", "x"]),
    max_size=30,
).map(" ".join)


@settings(max_examples=400)
@example(text="one two three four five six, seven eight. Next ", cuts=[], first_words=6,
         max_words=6, max_chars=300)
@example(text="HelloHelloHello. Next\n", cuts=[], first_words=1, max_words=6, max_chars=12)
@example(text="Hi.    Next words go here\n", cuts=[4], first_words=6, max_words=6, max_chars=12)
@example(text="a b c d e f g h and i", cuts=[], first_words=3, max_words=6, max_chars=300)
@given(
    text=st.one_of(chunk_texts, word_texts, st.text(alphabet=" .,!?\nab*", max_size=60)),
    cuts=st.lists(st.integers(0, 500), max_size=15),
    first_words=st.integers(1, 6),
    max_words=st.sampled_from([0, 1, 3, 6, 10]),
    max_chars=st.sampled_from([12, 40, 300]),
)
def test_sentence_chunker_is_independent_of_splits(
    text: str, cuts: list[int], first_words: int, max_words: int, max_chars: int
) -> None:
    options = {"first_chunk_min_words": first_words, "first_chunk_max_words": max_words,
               "max_chunk_chars": max_chars}
    whole = chunk_pieces([text], **options)
    assert chunk_pieces(split_text(text, cuts), **options) == whole
    assert chunk_pieces(list(text), **options) == whole
    # No letter or digit is lost or invented, only markup, punctuation and whitespace.
    assert alnum(" ".join(whole)) == alnum(text)


@settings(max_examples=300)
@given(text=word_texts, cuts=st.lists(st.integers(0, 300), max_size=15))
def test_words_are_never_lost_or_reordered(text: str, cuts: list[int]) -> None:
    """Plain words, split anywhere: the chunks are exactly the words in order, and a
    first chunk cut at a word boundary has at least three words, leaves at least two,
    and never ends on a word that leans on the next one or inside a number."""
    chunks = chunk_pieces(split_text(text, cuts))
    assert " ".join(chunks) == " ".join(text.split())
    if len(chunks) > 1:
        first, rest = chunks[0].split(), chunks[1].split()
        assert len(first) >= 3 and len(rest) >= 2
        assert first[-1].lower() not in {"and", "at", "the", "is", "it's", "dr.", "you"}
        assert not (first[-1] in {"9", "twenty", "five"} and rest[0] in {"am", "five", "9"})


# --- SpanFilter: echoed prompt annotations ---------------------------------------------

ECHO = (("[speaker:", "]"), ("(The speaker sounds", ")"))


def span_pieces(pieces: list[str]) -> str:
    spans = SpanFilter(ECHO)
    return "".join(spans.feed(p) for p in pieces) + spans.finish()


@pytest.mark.parametrize(("text", "expected"), [
    ("[speaker: label=sad valence=-0.50 arousal=0.30 confidence=0.70] I'm sorry.",
     " I'm sorry."),
    ("Sure. [Speaker: label=happy] Have fun!", "Sure.  Have fun!"),
    ("(The speaker sounds upset. Answer calmly.)\nI hear you.", "\nI hear you."),
    ("[speaker: label=neutral valence=0.1\nOpen at nine.", "\nOpen at nine."),
    ("[speaker: never closed", ""),
    ("Arrays use [0] and (parentheses) too.", "Arrays use [0] and (parentheses) too."),
    ("[speak", "[speak"),
])
def test_echoed_annotations_are_dropped(text: str, expected: str) -> None:
    assert span_pieces([text]) == expected


@settings(max_examples=300)
@given(
    text=st.lists(st.sampled_from(["[speaker: a=1]", "(The speaker sounds sad.)", "[", "(",
                                   "]", ")", "The ", "speaker", "\n", "ok. ", "Spe"]),
                  max_size=10).map("".join),
    cuts=st.lists(st.integers(0, 200), max_size=12),
)
def test_span_filter_is_independent_of_splits(text: str, cuts: list[int]) -> None:
    whole = span_pieces([text])
    assert span_pieces(split_text(text, cuts)) == whole
    assert span_pieces(list(text)) == whole
    assert "[speaker:" not in whole.lower() and "(the speaker sounds" not in whole.lower()


@given(text=st.text(max_size=60).filter(lambda t: "[" not in t and "(" not in t))
def test_text_without_annotations_passes_unchanged(text: str) -> None:
    assert span_pieces(list(text)) == text



@pytest.mark.parametrize(("text", "expected"), [
    ("[speaker: label=angry: response: I'm glad.", ": response: I'm glad."),
    ("[speaker: label=sad valence=-0.50 arousal=0.30 confidence=0.70] Sorry.", " Sorry."),
    ("[Speaker: label=sad, I hear you.", ", I hear you."),
])
def test_a_copied_tag_ends_where_the_tag_alphabet_ends(text: str, expected: str) -> None:
    for pieces in ([text], list(text)):
        spans = SpanFilter(ECHO_MARKERS, inside=ECHO_INSIDE)
        assert "".join(spans.feed(p) for p in pieces) + spans.finish() == expected


@pytest.mark.parametrize(("text", "spoken", "dropped"), [
    ("Dogs are loyal. They also", ["Dogs are loyal."], "They also"),
    ("Dogs are loyal. They also love walks.", ["Dogs are loyal.", "They also love walks."], ""),
    ('He said "yes!"', ['He said "yes!"'], ""),
    ("Half a", [], "Half a"),
    ("", [], ""),
])
def test_a_cut_off_reply_keeps_only_complete_sentences(
        text: str, spoken: list[str], dropped: str) -> None:
    for cut in range(len(text) + 1):
        chunker = SentenceChunker()
        chunks = chunker.feed(text[:cut]) + chunker.feed(text[cut:])
        rest, lost = chunker.finish_complete()
        assert (chunks + rest, lost) == (spoken, dropped)
    assert SentenceChunker().finish_complete() == ([], "")
