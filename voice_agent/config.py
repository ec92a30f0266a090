"""One typed, validated settings tree.

Sources, later wins: built-in defaults, a TOML file (``--config FILE``), then environment
variables named ``VOICE_AGENT_<SECTION>__<FIELD>`` (e.g. ``VOICE_AGENT_VAD__END_SILENCE_MS=500``),
then command-line flags. Unknown keys are errors, not silently ignored: a typo in an appliance
config must not go unnoticed.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voice_agent.errors import ConfigError

ENV_PREFIX = "VOICE_AGENT_"


@dataclass
class FrontendConfig:
    noise_suppression: int = 2
    """WebRTC noise suppression level 0-4 (0 is off). 2 by measurement
    (``benchmarks/frontend_wer.py``: 17 real clips + recorded noise, frontend adapted before
    speech): pooled WER at 5/10 dB SNR 8.5%/6.2% with level 2 against 9.2%/6.9% off, and
    level 4 no better; at 0 dB no level helps reliably."""
    auto_gain_dbfs: int = 0
    """WebRTC AGC target in -dBFS (0 disables AGC). Off by default: it moved WER by at most one
    word in 130 in the same measurement (Whisper normalises level itself), and a gain that
    follows the talker also follows the appliance's own echo."""
    echo_cancellation: bool = True
    """Cancel the appliance's own voice from the input (WebRTC AEC3 via ``livekit``, before
    noise suppression), with what it plays as the reference: full duplex on open speakers,
    the person can interrupt it. Off: the frontend ignores the reference (headsets, line-level
    input; ``--mic`` then mutes the microphone while it speaks)."""

    def validate(self) -> None:
        _check(0 <= self.noise_suppression <= 4, "frontend.noise_suppression must be 0..4")
        _check(0 <= self.auto_gain_dbfs <= 31, "frontend.auto_gain_dbfs must be 0..31")


@dataclass
class VadConfig:
    engine: str = "webrtc"
    """``webrtc`` (default, 10 ms frames, no model) or ``silero`` (needs the silero-vad extra)."""
    aggressiveness: int = 2
    """webrtcvad mode 0-3; higher rejects more non-speech."""
    confirm_probability: float = 0.3
    """``webrtc`` engine: a frame is speech only if Silero also gives it (or one of the 50 ms
    before it) at least this probability (``voice_agent.audio.vad.ConfirmedVad``): webrtcvad
    alone starts utterances on steady noise. 0: webrtcvad alone."""
    start_speech_ms: int = 60
    """Speech needed (within the start window) before a turn starts; rejects clicks."""
    end_silence_ms: int = 450
    """Silence after speech that ends a turn. Lower answers faster but cuts slow talkers."""
    pre_roll_ms: int = 300
    """Audio kept from before the detected start so first syllables are not clipped."""
    min_utterance_ms: int = 200
    """Shorter detections are discarded as noise."""
    max_utterance_s: float = 20.0
    """An utterance is cut (and transcribed) at this length."""

    def validate(self) -> None:
        _check(self.engine in ("webrtc", "silero"), "vad.engine must be 'webrtc' or 'silero'")
        _check(0 <= self.aggressiveness <= 3, "vad.aggressiveness must be 0..3")
        _check(0.0 <= self.confirm_probability < 1.0, "vad.confirm_probability must be 0..<1")
        _check(10 <= self.start_speech_ms <= 1000, "vad.start_speech_ms must be 10..1000")
        _check(100 <= self.end_silence_ms <= 5000, "vad.end_silence_ms must be 100..5000")
        _check(0 <= self.pre_roll_ms <= 2000, "vad.pre_roll_ms must be 0..2000")
        _check(0 <= self.min_utterance_ms <= 5000, "vad.min_utterance_ms must be 0..5000")
        _check(1.0 <= self.max_utterance_s <= 120.0, "vad.max_utterance_s must be 1..120")


@dataclass
class TurnConfig:
    """How the end of a person's turn is decided, and what runs before it is (issue 8).

    At a pause (``speculate_after_ms`` of silence) the end-of-turn model judges whether the
    utterance is finished; the turn then commits after ``complete_silence_ms`` when it is,
    ``incomplete_silence_ms`` when not. Meanwhile the answer is already being prepared
    (``speculate``), held back until the turn commits, thrown away if speech resumes.
    """

    endpoint: str = "smart"
    """``smart``: the end-of-turn model decides how long a pause ends the turn (falls back to
    ``silence`` when the model cannot be loaded). ``silence``: a fixed
    ``vad.end_silence_ms`` of silence, nothing else."""
    speculate: bool = True
    """Start ASR, the model's answer and its speech during the pause, before the turn
    commits; every output is held until it does."""
    speculate_after_ms: int = 150
    """Silence after which a pause is judged and the answer speculatively prepared."""
    complete_silence_ms: int = 300
    """Silence that ends a turn judged finished. With speculation, waiting a little longer
    here costs little: the answer is being prepared meanwhile."""
    incomplete_silence_ms: int = 1300
    """Silence that ends a turn judged unfinished ("I'd like to book a table for…"): the
    longest the appliance waits for a person who paused mid-sentence."""
    complete_threshold: float = 0.5
    """End-of-turn probability at or above which an utterance counts as finished."""
    resume_window_ms: int = 3000
    """Speech starting within this long after an end-of-turn decision, before the person has
    heard any of the reply, continues the same turn (``speech_resumed``) instead of starting
    a new one. 0 turns this off (every new speech is a new turn or a barge-in)."""
    reply_heard_after_ms: int = 250
    """Reply audio counts as heard this long after it started going out: speech that began
    earlier was begun before the person could react to the reply. Not with an echo
    reference (a loudspeaker): the reply's own echo starts in that time, so only speech
    begun before its first audio continues the turn."""
    partial_interval_ms: int = 700
    """While the person speaks, a ``transcript_partial`` at most this often (skipped while the
    previous one is still being transcribed). 0: none."""

    def validate(self) -> None:
        _check(self.endpoint in ("smart", "silence"), "turn.endpoint must be 'smart' or 'silence'")
        _check(50 <= self.speculate_after_ms <= 2000, "turn.speculate_after_ms must be 50..2000")
        _check(self.speculate_after_ms <= self.complete_silence_ms <= 5000,
               "turn.complete_silence_ms must be speculate_after_ms..5000")
        _check(self.complete_silence_ms <= self.incomplete_silence_ms <= 10_000,
               "turn.incomplete_silence_ms must be complete_silence_ms..10000")
        _check(0.0 < self.complete_threshold < 1.0, "turn.complete_threshold must be in (0, 1)")
        _check(0 <= self.resume_window_ms <= 30_000, "turn.resume_window_ms must be 0..30000")
        _check(0 <= self.reply_heard_after_ms <= 2000, "turn.reply_heard_after_ms must be 0..2000")
        _check(self.partial_interval_ms == 0 or 200 <= self.partial_interval_ms <= 10_000,
               "turn.partial_interval_ms must be 0 (off) or 200..10000")


@dataclass
class PlaybackConfig:
    """How the reply is paced to the person's loudspeaker (issue 9).

    The server sends the reply at most ``lead_ms`` ahead of where playback is, so it always
    knows what has been heard. Playback is where the client's last ``playback`` report put
    it, moved on in real time since; a client that never reports is taken to play what it
    gets as it gets it, so the server's own pacing is the clock."""

    lead_ms: int = 300
    """How far ahead of the playback position reply audio is sent: enough to ride out
    network jitter, small enough that a barge-in leaves little buffered. 0 sends the reply as
    fast as it is made (a client that only records it); then nothing tells what was heard
    and the whole reply counts as played once sent."""
    input_gap_ms: int = 500
    """A client's audio arriving this much later than real time allows means it stopped
    sending (push-to-talk, a microphone turned off while the reply plays): the reply that
    played meanwhile is taken off the echo reference, which otherwise would wait on the input
    timeline to be cancelled out of the person's next words. Shorter lateness is network
    jitter. 0: never (every client streams all the time)."""

    def validate(self) -> None:
        _check(self.lead_ms == 0 or 60 <= self.lead_ms <= 10_000,
               "playback.lead_ms must be 0 (unpaced) or 60..10000")
        _check(0 <= self.input_gap_ms <= 10_000, "playback.input_gap_ms must be 0..10000")


@dataclass
class BargeInConfig:
    """Speech over the reply (issue 9). It pauses the reply at once; the pause becomes an
    interruption (the reply is cancelled, history keeps what was heard) or the reply resumes
    where it stopped when the sound was a cough, a "mm-hm", or the appliance's own echo."""

    enabled: bool = True
    """Listen while replying. Off: half-duplex, input is ignored while the reply plays (a
    loudspeaker with no echo cancellation)."""
    confirm_ms: int = 600
    """Speech (frames the echo does not explain) adding up to this long over the reply is a
    person taking the turn unless its words are the reply's own or a backchannel. A shorter
    burst is a turn only if Whisper is also sure of its words (it makes words up, confidently
    enough, out of noise and what is left of the echo)."""
    backchannels: list[str] = field(default_factory=lambda: [
        "yeah", "yes", "yep", "yup", "uh-huh", "uh huh", "mm-hmm", "mm hmm", "mm-hm", "mhm",
        "mhmm", "mm", "hmm", "hm", "huh", "aha", "okay",
        "ok", "right", "sure", "i see", "got it", "alright", "all right", "oh", "ah", "uh",
        "um", "wow", "nice", "cool", "great", "really", "true", "exactly", "indeed",
        "thank you", "thanks", "thank you very much", "you", "bye"])
    """Words that over the reply mean "go on", not "stop" (compared case- and
    punctuation-free; a burst made only of these resumes the reply). The last ones are also
    what Whisper makes up, confidently, from noise and from what is left of the echo."""
    stop_phrases: list[str] = field(default_factory=lambda: [
        "stop", "wait", "hold on", "hang on", "cancel", "enough", "pause", "be quiet",
        "shut up", "excuse me"])
    """Words that over the reply stop it at once, even said in one breath that ends before
    the paused reply is quiet in the room (any other words must go on past that:
    ``barge_in.echo_tail_ms``). Not "no": Whisper makes "No, no, no." out of the echo."""
    heard_in_quiet_ms: int = 200
    """Words of a person over the reply interrupt it (unless they hold a stop phrase) only
    when the burst has this much speech once the paused reply is quiet in the room
    (``echo_tail_ms`` after the pause): Whisper makes confident words out of the echo ("You
    love.", "What is it?", "in turn."), but the echo stops when the reply does, and a person
    goes on. A burst whose words stop with the reply is its echo, and the reply plays on."""
    pause_after_ms: int = 40
    """Speech heard over the reply for this long after the VAD's start
    (``vad.start_speech_ms``) pauses it: some 100 ms of speech in all, so a person is
    stopped within about 200 ms of starting to speak. What keeps the reply's own echo from
    pausing it is ``vad_aggressiveness``, the echo gate and ``min_voice_probability``."""
    vad_aggressiveness: int = 3
    """webrtcvad mode (0-3) that must also call a frame speech while the reply or its echo
    plays: mode 2 takes the room's steady noise and the canceller's leftovers for speech."""
    min_voice_probability: float = 0.1
    """A burst over the reply pauses it (and can interrupt it) only if Silero gives one of
    its frames at least this probability of being a voice; 0 turns the check off. Low on
    purpose: the canceller's suppressor mangles a person talking over the reply, and Silero
    then scores them low; the echo's leftovers mostly score 0.00."""
    min_unexplained: float = 0.5
    """While the reply plays, a frame counts as speech only when at least this share of its
    energy is not explained by the reply's own echo (``voice_agent.audio.double_talk``):
    the voice activity detector ignores level, and the echo is never removed whole."""
    resume_after_ms: int = 2500
    """A reply paused this long with the burst over it not yet judged plays on (a
    transcription that never came back must not leave the reply stuck)."""
    echo_tail_ms: int = 600
    """Speech that starts within this long after the last of a reply was played is heard
    as it would be over the reply: the room still rings with the reply's end, and what the
    canceller leaves of it was answered as a turn of its own ("you ask me again?" after
    "...could you ask me again?"). It is answered only when its words are the person's: not
    words Whisper doubts, not only the reply's own words, and not only backchannels, unless
    the reply ended in a question (then "yes" or "okay" is an answer). Measured with
    ``benchmarks/echo_session.py``: such speech began 13 ms before to 384 ms after the end.
    0: off. It is also how long after a pause the reply counts as quiet in the room: a
    long burst's words are trusted only if it goes on past that (the echo stops with the
    reply; a person does not)."""

    def validate(self) -> None:
        _check(100 <= self.confirm_ms <= 5000, "barge_in.confirm_ms must be 100..5000")
        _check(0 <= self.pause_after_ms <= self.confirm_ms,
               "barge_in.pause_after_ms must be 0..confirm_ms")
        _check(0.0 <= self.min_unexplained < 1.0, "barge_in.min_unexplained must be 0..<1")
        _check(0 <= self.vad_aggressiveness <= 3, "barge_in.vad_aggressiveness must be 0..3")
        _check(0.0 <= self.min_voice_probability < 1.0,
               "barge_in.min_voice_probability must be 0..<1")
        _check(100 <= self.resume_after_ms <= 30_000,
               "barge_in.resume_after_ms must be 100..30000")
        _check(0 <= self.echo_tail_ms <= 5000, "barge_in.echo_tail_ms must be 0..5000")
        _check(0 <= self.heard_in_quiet_ms <= self.confirm_ms,
               "barge_in.heard_in_quiet_ms must be 0..confirm_ms")


@dataclass
class AsrConfig:
    model: str = "default"
    """``default`` (embedded Whisper tiny.en), a manifest model name, or a CTranslate2
    Whisper model directory."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cuda`` or ``cpu``."""
    compute_type: str = "auto"
    """``auto`` means float16 on CUDA and int8 on CPU."""
    language: str = "en"
    """Spoken language code, or ``auto`` to detect (not for ``.en`` models)."""
    beam_size: int = 1
    """1 is greedy: fastest, and within a point of beam 5 on our speech set."""
    cpu_threads: int = 0
    """0 uses every core."""
    window_s: float = 10.0
    """Utterances shorter than this are encoded in a window of this length instead of
    Whisper's 30 s (3x faster on CPU, same accuracy in our measurement); 0 disables."""
    timeout_s: float = 15.0
    """A transcription that takes longer fails the turn with ``engine_timeout``."""
    max_repeats: int = 4
    """Repetition-loop guard: a word or token n-gram (up to 4 long) said more times than this
    back to back marks the decode as a Whisper loop ("5 5 5 5 5 5 …"); it is decoded again
    with faster-whisper's own ``transcribe()`` (30 s window, temperature fallback)."""
    compression_ratio_threshold: float = 2.4
    """Repetition-loop guard: text that zlib compresses better than this is a loop (the
    threshold openai-whisper and faster-whisper use)."""

    def validate(self) -> None:
        _check(self.device in ("auto", "cuda", "cpu"), "asr.device must be auto|cuda|cpu")
        _check(1 <= self.beam_size <= 10, "asr.beam_size must be 1..10")
        _check(self.cpu_threads >= 0, "asr.cpu_threads must be >= 0")
        _check(self.window_s == 0 or 5.0 <= self.window_s <= 30.0,
               "asr.window_s must be 0 (off) or 5..30")
        _check(self.timeout_s > 0, "asr.timeout_s must be > 0")
        _check(2 <= self.max_repeats <= 20, "asr.max_repeats must be 2..20")
        _check(1.0 <= self.compression_ratio_threshold <= 10.0,
               "asr.compression_ratio_threshold must be 1..10")


@dataclass
class LlmConfig:
    engines: list[str] = field(default_factory=lambda: ["llama_cpp:default"])
    """The fallback chain, primary first. Each is ``KIND:WHAT``: ``llama_cpp:default`` (the
    embedded SmolLM2-135M GGUF), ``llama_cpp:NAME`` (a manifest entry) or ``llama_cpp:PATH``
    (a GGUF file); ``transformers:default|NAME|PATH`` (torch; a model directory or GGUF);
    ``openai:http://HOST:PORT/v1#MODEL`` (an OpenAI-compatible server). In the environment:
    comma-separated."""
    system_prompt: str = (
        "You are a helpful voice assistant. Answer in one or two short spoken sentences. "
        "No lists, no markdown, no emoji."
    )
    """Sent as the system message of every conversation."""
    max_tokens: int = 96
    """Length cap of one answer, in tokens (pieces) after any reasoning. A model that does not
    reason is asked for at most this many; a reasoning model (DeepSeek-R1) is asked for
    ``reasoning_budget_tokens + max_tokens`` and the turn stops its answer after this many.
    An answer cut here is spoken up to its last complete sentence."""
    max_reply_s: float = 12.0
    """Longest spoken reply, in seconds of audio: a sentence that would take the reply past
    it is not spoken, and the model is stopped. The system prompt asks for one or two short
    sentences (3-8 s); 12 s lets those through whole and cuts the 20-27 s rambles. The
    first sentence is always spoken (it streams as it is synthesized)."""
    brief_when_busy: bool = True
    """When other turns are waiting for the engine, a reply ends at its first complete
    sentence and frees the engine. One engine answers one turn at a time, so a long reply
    makes everyone queued behind it wait for all of it: measured with eight people talking
    at once on two cores, that queue was most of the p95 voice-to-voice. Under load the
    answer gets shorter rather than later; alone, nothing changes."""
    temperature: float = 0.3
    """Sampling temperature."""
    top_p: float = 0.95
    """Nucleus sampling."""
    seed: int = -1
    """Sampling seed; -1 draws a new one per process. Tests fix it to be repeatable."""
    history_turns: int = 6
    """User/assistant exchanges kept per session (older ones are dropped)."""
    n_ctx: int = 2048
    """llama.cpp context length."""
    n_threads: int = 0
    """0 uses every core."""
    session_cache_mb: int = 256
    """llama.cpp keeps one sequence in its KV cache, so with several people talking every
    turn re-read its whole conversation (1.7-2.6 s of prefill per turn here with three
    interleaved conversations). Up to this much RAM holds each conversation's evaluated
    state, keyed by its tokens, and a turn resumes from the longest match (0.3 s). A
    135M-model conversation takes a few MB; 0 turns it off."""
    first_token_timeout_s: float = 3.0
    """No first token within this, counted from when the engine starts on the turn (after
    its queue), fails the engine for the turn (``engine_timeout``): the next engine in the
    chain answers. Short, because a person is waiting in silence."""
    first_call_timeout_s: float = 30.0
    """The first-token limit of an engine's first call when the engine says that call pays a
    one-off warm-up (``cold_start``: the transformers engine), so a cold load is not failed."""
    queue_timeout_s: float = 30.0
    """Longest wait for a busy engine (another session's reply); beyond it the engine is
    skipped for the turn with ``overloaded``, which does not count against its breaker."""
    stop_grace_s: float = 1.0
    """An engine told to stop (timed out, cancelled) gets this long to end its call (one
    stopped before its first output gets its whole first-output budget on top, since a
    prompt being read cannot be interrupted); one still running after it is wedged: waiters
    fail with ``engine_timeout`` (counted) instead of queueing behind it, until the call
    really ends."""
    token_timeout_s: float = 5.0
    """A stall longer than this between tokens fails the turn."""
    breaker_window: int = 20
    """Turns per engine over which the error rate is computed."""
    breaker_error_rate: float = 0.05
    """An engine whose error rate over the window passes this stops getting turns."""
    breaker_min_turns: int = 10
    """The error rate is judged only once the window holds this many turns..."""
    breaker_consecutive_failures: int = 3
    """...but this many failures in a row open the breaker at once."""
    probe_interval_s: float = 15.0
    """How often an engine whose breaker is open is probed with a tiny request; one success
    brings it back as primary."""
    reasoning_ack_s: float = 2.0
    """Thinking this long without speakable text makes the appliance say ``reasoning_ack_text``
    once, so the person knows it heard them. 0 disables."""
    reasoning_ack_text: str = "Let me think about that."
    """The acknowledgement spoken while a reasoning model thinks."""
    reasoning_budget_s: float = 8.0
    """Reasoning longer than this without an answer fails the engine for this turn (the next
    engine in the chain answers, or the turn ends with the apology)."""
    reasoning_budget_tokens: int = 512
    """The same budget in reasoning tokens (pieces). A reasoning model's generation limit is
    this plus ``max_tokens``, so thinking up to the budget still leaves room for the whole
    answer."""
    apology_text: str = "Sorry, I lost my train of thought. Could you ask me again?"
    """Spoken when an engine fails after part of its answer was already spoken: the answer is
    not restarted (the person would hear its start twice)."""

    def validate(self) -> None:
        _check(bool(self.engines), "llm.engines needs at least one engine")
        for spec in self.engines:
            kind, sep, what = spec.partition(":")
            _check(bool(sep) and bool(what) and kind in ("llama_cpp", "transformers", "openai"),
                   f"llm.engines: {spec!r} is not KIND:WHAT with KIND llama_cpp, "
                   "transformers or openai")
        _check(1 <= self.breaker_window <= 1000, "llm.breaker_window must be 1..1000")
        _check(0.0 <= self.breaker_error_rate < 1.0, "llm.breaker_error_rate must be in [0, 1)")
        _check(1 <= self.breaker_min_turns <= self.breaker_window,
               "llm.breaker_min_turns must be 1..breaker_window")
        _check(self.breaker_consecutive_failures >= 1,
               "llm.breaker_consecutive_failures must be >= 1")
        _check(self.probe_interval_s > 0, "llm.probe_interval_s must be > 0")
        _check(self.reasoning_ack_s >= 0, "llm.reasoning_ack_s must be >= 0")
        _check(self.reasoning_budget_s > 0, "llm.reasoning_budget_s must be > 0")
        _check(self.reasoning_budget_tokens >= 1, "llm.reasoning_budget_tokens must be >= 1")
        _check(1 <= self.max_tokens <= 4096, "llm.max_tokens must be 1..4096")
        _check(1.0 <= self.max_reply_s <= 600.0, "llm.max_reply_s must be 1..600")
        _check(0.0 <= self.temperature <= 2.0, "llm.temperature must be 0..2")
        _check(0.0 < self.top_p <= 1.0, "llm.top_p must be in (0, 1]")
        _check(0 <= self.history_turns <= 100, "llm.history_turns must be 0..100")
        _check(256 <= self.n_ctx <= 131072, "llm.n_ctx must be 256..131072")
        _check(0 <= self.session_cache_mb <= 65536, "llm.session_cache_mb must be 0..65536")
        _check(self.first_token_timeout_s > 0, "llm.first_token_timeout_s must be > 0")
        _check(self.first_call_timeout_s > 0, "llm.first_call_timeout_s must be > 0")
        _check(self.queue_timeout_s > 0, "llm.queue_timeout_s must be > 0")
        _check(self.stop_grace_s >= 0, "llm.stop_grace_s must be >= 0")
        _check(self.token_timeout_s > 0, "llm.token_timeout_s must be > 0")


@dataclass
class TtsConfig:
    voice: str = "default"
    """``default`` (embedded Piper en_US-joe-medium), a manifest name, or an ``.onnx`` path."""
    length_scale: float = 1.0
    """Piper speaking-rate factor (>1 is slower)."""
    timeout_s: float = 10.0
    """One sentence that takes longer to synthesize fails the turn."""
    stream: bool = True
    """Stream each sentence as Piper's decoder makes it (the voice graph split at the
    decoder: first audio after ~20% of the sentence's synthesis time) instead of whole
    sentences. A voice whose graph cannot be split is spoken whole either way."""
    first_chunk_min_words: int = 3
    """The fewest words in a reply's first chunk when it is cut before its sentence ends
    (at a clause break, or at a word boundary with no punctuation)."""
    first_chunk_max_words: int = 6
    """With no punctuation, a reply's first chunk is cut at a word boundary by this many
    words (earlier before a conjunction or preposition), so speech starts without waiting
    for the sentence's end. 0: only at punctuation."""

    def validate(self) -> None:
        _check(1 <= self.first_chunk_min_words <= 20, "tts.first_chunk_min_words must be 1..20")
        _check(self.first_chunk_max_words == 0
               or self.first_chunk_min_words <= self.first_chunk_max_words <= 40,
               "tts.first_chunk_max_words must be 0 or first_chunk_min_words..40")
        _check(0.3 <= self.length_scale <= 3.0, "tts.length_scale must be 0.3..3")
        _check(self.timeout_s > 0, "tts.timeout_s must be > 0")


@dataclass
class EmotionConfig:
    enabled: bool = True
    """Derive how the person sounds from each utterance (the voice against the speaker's own
    baseline, fillers, word sentiment; about 4 ms per turn) and send it as an ``emotion``
    event."""
    tag_prompt: bool = True
    """Send the tag to the LLM as a note right before the user's words, with rules in the
    system prompt for how to word the answer (calmer for an upset speaker); format and
    reasons in ``voice_agent.prompt``."""
    shape_speech: bool = True
    """Speak the reply slower for an upset, sad or unsure speaker, a little faster for an
    excited one (Piper ``length_scale`` times 0.85..1.2, on top of ``tts.length_scale``)."""

    def validate(self) -> None:
        pass


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    """Listen address. Loopback by default: nothing listens beyond it unless configured."""
    port: int = 8765
    """TCP port; 0 picks a free one (printed on start)."""
    max_sessions: int = 8
    """Started sessions (``start`` received) beyond this are refused with ``overloaded``
    (close 1013). Sockets that have not sent ``start`` do not count: they are bounded by
    ``max_connections_per_address`` and ``start_timeout_s``."""
    max_message_bytes: int = 64 << 10
    """Largest WebSocket message accepted (2 s of 16 kHz audio); bigger is a protocol
    violation (close 1009). Also bounds the audio DSP done for one message."""
    input_queue_frames: int = 16
    """Inbound messages buffered per connection before the server stops reading the socket
    (TCP backpressure on the sender)."""
    token: str = field(default="", repr=False)
    """Bearer token clients must present (``Authorization: Bearer``, ``?token=`` or the
    ``start`` message's ``token``); also guards ``/status`` and ``/metrics``. Empty: none,
    allowed only on loopback (or with ``allow_anonymous``). Never logged."""
    token_file: str = ""
    """A file holding the token (read once at start, whitespace stripped), e.g. a systemd
    credential: a relative path is looked up in ``$CREDENTIALS_DIRECTORY``."""
    allow_anonymous: bool = False
    """Serve beyond loopback without a token. Off: a non-loopback ``host`` without a token
    refuses to start."""
    origins: list[str] = field(default_factory=list)
    """Browser origins allowed to connect (``https://kiosk.example:8443``; ``*``: any). A
    request with an ``Origin`` header not listed is refused (403); empty: no other site's
    page, only clients that send no ``Origin`` and the kiosk page (``page``)."""
    page: bool = True
    """Serve the kiosk page at ``GET /`` (plain files in the package). Its WebSocket is
    admitted from the server's own origin (``Origin`` is the scheme and ``Host`` it was
    served from) when a token is required or ``Host`` is a loopback name (``localhost``,
    ``127.0.0.1``, ``[::1]``): a DNS-rebinding page has neither the token nor such a
    ``Host``. The files are public (they hold nothing); everything they do needs the token.
    Off: ``/`` is WebSocket only, and the page's origin must be listed in ``origins``."""
    tls_cert: str = ""
    """PEM certificate (chain) file: serve ``wss://`` and ``https://``. Empty: plain TCP."""
    tls_key: str = ""
    """PEM private key for ``tls_cert`` (empty: the key is in the certificate file)."""
    max_connections_per_address: int = 4
    """Open WebSocket connections per client IP address (started or not); more are refused
    (HTTP 429 on the upgrade)."""
    start_timeout_s: float = 10.0
    """A connection must send ``start`` within this (else ``start_timeout``, close 1008)."""
    turns_per_minute: int = 20
    """Utterances per session in any 60 s; beyond it an utterance gets ``rate_limited`` and a
    ``turn_done`` with status ``error``, and is not answered."""
    idle_timeout_s: float = 30.0
    """A started session that sends no audio for this long, while no reply is running, ends
    (``session_end`` reason ``idle``, close 1000)."""
    max_session_s: float = 1800.0
    """Longest session; then it ends (``session_end`` reason ``max_duration``, close 1000)."""
    max_input_speed: float = 1.5
    """Audio sent faster than this many times real time (after ``input_burst_s``) is dropped
    unprocessed and counted as ``dropped_too_fast``; 0 turns the check off."""
    input_burst_s: float = 10.0
    """Seconds of audio a client may send ahead of ``max_input_speed`` (a file sent fast,
    network jitter)."""
    ping_interval_s: float = 20.0
    """WebSocket keepalive ping interval."""
    ping_timeout_s: float = 20.0
    """A peer that does not answer a ping within this is closed."""
    close_timeout_s: float = 5.0
    """How long a closing handshake may take."""
    max_errors: int = 50
    """A session that earns this many client errors is closed as abusive (1008)."""
    send_timeout_s: float = 10.0
    """A client that takes nothing from a send for this long (it stopped reading) is cut
    off; its running turn still ends and is recorded."""
    drain_timeout_s: float = 10.0
    """On SIGTERM, how long running turns may take to finish before they are cancelled
    (each still ends with its ``turn_done``; then ``session_end`` reason ``shutdown``, close
    1001). The systemd unit's ``TimeoutStopSec`` covers this + ``send_timeout_s`` +
    ``close_timeout_s``."""

    def validate(self) -> None:
        _check(0 <= self.port <= 65535, "server.port must be 0..65535")
        _check(1 <= self.max_sessions <= 1024, "server.max_sessions must be 1..1024")
        _check(1024 <= self.max_message_bytes <= 64 << 20, "server.max_message_bytes range")
        _check(2 <= self.input_queue_frames <= 100_000, "server.input_queue_frames range")
        _check(self.max_errors >= 1, "server.max_errors must be >= 1")
        _check(0.1 <= self.send_timeout_s <= 300, "server.send_timeout_s must be 0.1..300")
        _check(0 <= self.drain_timeout_s <= 300, "server.drain_timeout_s must be 0..300")
        _check(bool(self.tls_cert) or not self.tls_key, "server.tls_key needs server.tls_cert")
        _check(1 <= self.max_connections_per_address <= 1024,
               "server.max_connections_per_address must be 1..1024")
        _check(0.1 <= self.start_timeout_s <= 300, "server.start_timeout_s must be 0.1..300")
        _check(1 <= self.turns_per_minute <= 10_000, "server.turns_per_minute must be 1..10000")
        _check(0.1 <= self.idle_timeout_s <= 86_400, "server.idle_timeout_s must be 0.1..86400")
        _check(1 <= self.max_session_s <= 7 * 86_400, "server.max_session_s must be 1..604800")
        _check(self.max_input_speed == 0 or 1.0 <= self.max_input_speed <= 100,
               "server.max_input_speed must be 0 (off) or 1..100")
        _check(0 <= self.input_burst_s <= 600, "server.input_burst_s must be 0..600")


@dataclass
class AuditConfig:
    enabled: bool = True
    """Keep an append-only record of every turn (SQLite, WAL): session, turn, times, client
    address, engine, status, error codes, timings. Never audio."""
    path: str = ""
    """The SQLite file. Empty: ``$STATE_DIRECTORY/audit.sqlite3`` when systemd provides a
    state directory (the unit does), else no audit log (a workstation run writes nothing)."""
    text: bool = False
    """Also record each turn's transcript and reply text. Off by default: what people say
    is theirs; turn it on only where policy allows keeping it."""
    max_rows: int = 100_000
    """Turns kept; older rows are deleted as new ones come (0 keeps everything)."""
    queue_size: int = 1000
    """Turns waiting for the writer thread; beyond this a turn's row is dropped and logged
    as an error (the disk is far behind), never blocking a conversation."""
    commit_wait_s: float = 2.0
    """``turn_done`` is sent once the turn's row is committed (normally milliseconds), so a
    turn a client saw end is in the log; past this wait it is sent anyway (and logged)."""

    def validate(self) -> None:
        _check(self.max_rows >= 0, "audit.max_rows must be >= 0")
        _check(0 <= self.commit_wait_s <= 60, "audit.commit_wait_s must be 0..60")
        _check(1 <= self.queue_size <= 1_000_000, "audit.queue_size must be 1..1000000")


@dataclass
class WakeConfig:
    """A wake phrase (issue 9): until it is heard no audio reaches ASR or the LLM and nothing
    is answered; after an answer the person may go on without it for ``follow_up_s``.
    Detector settings by measurement (``benchmarks/wake.py``)."""

    phrase: str = ""
    """``okay_nabu``, ``hey_jarvis``, ``hey_mycroft`` or ``alexa`` (the microWakeWord models
    in the ``pymicro-wakeword`` wheel; "Okay Nabu" is accepted too). Empty: no wake phrase,
    every utterance is answered."""
    follow_up_s: float = 8.0
    """After an answer ends, how long the person may speak again without the phrase (0: the
    phrase before every utterance)."""
    probability_cutoff: float = 0.0
    """A detection needs the model's probability, averaged over ``sliding_window`` outputs
    (30 ms apart), above this; higher rejects more and misses more. 0: the measured one per
    phrase (``benchmarks/wake.py``: okay_nabu 0.7, hey_jarvis 0.93, hey_mycroft 0.85, alexa
    0.93)."""
    sliding_window: int = 0
    """Model outputs averaged for a decision; 0: the measured one per phrase (okay_nabu,
    hey_mycroft, alexa 3 = 90 ms; hey_jarvis 5)."""
    refractory_s: float = 2.0
    """After a detection, further ones are ignored this long: one phrase, one detection."""

    def validate(self) -> None:
        if self.phrase:
            from voice_agent.audio.wake import check_phrase

            check_phrase(self.phrase)  # ConfigError listing the valid names
        _check(0 <= self.follow_up_s <= 600, "wake.follow_up_s must be 0..600")
        _check(self.probability_cutoff == 0 or 0.5 <= self.probability_cutoff < 1,
               "wake.probability_cutoff must be 0 (the model's) or 0.5..<1")
        _check(0 <= self.sliding_window <= 50, "wake.sliding_window must be 0..50")
        _check(0 <= self.refractory_s <= 30, "wake.refractory_s must be 0..30")


@dataclass
class WyomingConfig:
    """The Wyoming server for Home Assistant (``voice-agent serve --wyoming URI``)."""

    uri: str = ""
    """``tcp://HOST:PORT`` to serve Wyoming beside the WebSocket endpoint; empty: off."""
    allow_from: list[str] = field(default_factory=list)
    """Client addresses allowed to connect. Wyoming has no credential of its own, so a
    server off loopback must name its clients (Home Assistant's address): it refuses to
    start without."""
    max_audio_s: float = 60.0
    """Longest audio one ``transcribe`` takes (``audio_too_long`` beyond)."""
    synthesize_timeout_s: float = 30.0
    """Longest a ``synthesize`` may take."""

    def validate(self) -> None:
        if self.uri:
            from voice_agent.server.wyoming_address import parse_uri

            host, _ = parse_uri(self.uri)  # ConfigError for anything but tcp://HOST:PORT
            from voice_agent.server.access import is_loopback

            _check(is_loopback(host) or bool(self.allow_from),
                   "wyoming.allow_from must name the clients of a Wyoming server off loopback "
                   "(Wyoming has no credential)")
        _check(0 < self.max_audio_s <= 600, "wyoming.max_audio_s must be 0..600")
        _check(0 < self.synthesize_timeout_s <= 600,
               "wyoming.synthesize_timeout_s must be 0..600")


@dataclass
class ModelsConfig:
    manifest: str = ""
    """Path of a user model manifest (TOML, same format as the shipped one); its entries are
    added to the embedded defaults' manifest that ships inside the package
    (``voice_agent/data/manifest.toml``), replacing any with the same role and name. Empty:
    only the embedded defaults."""
    directory: str = ""
    """Base directory for relative model paths in the user manifest; empty is the user
    manifest's own directory."""

    def validate(self) -> None:
        pass


@dataclass
class Config:
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    """Noise suppression and gain."""
    vad: VadConfig = field(default_factory=VadConfig)
    """Voice activity detection and endpointing."""
    turn: TurnConfig = field(default_factory=TurnConfig)
    """End of turn, speculation during pauses, resumed speech."""
    playback: PlaybackConfig = field(default_factory=PlaybackConfig)
    """Pacing the reply to the loudspeaker, and what was heard."""
    barge_in: BargeInConfig = field(default_factory=BargeInConfig)
    """Speech over the reply: pause, interrupt or resume."""
    asr: AsrConfig = field(default_factory=AsrConfig)
    """Speech recognition."""
    llm: LlmConfig = field(default_factory=LlmConfig)
    """Language model."""
    tts: TtsConfig = field(default_factory=TtsConfig)
    """Speech synthesis."""
    emotion: EmotionConfig = field(default_factory=EmotionConfig)
    """How the person sounds, and what the reply does with it."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Network endpoint."""
    models: ModelsConfig = field(default_factory=ModelsConfig)
    """Model manifest."""
    audit: AuditConfig = field(default_factory=AuditConfig)
    """The audit log of turns."""
    wake: WakeConfig = field(default_factory=WakeConfig)
    """The wake phrase gating input."""
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)
    """The Wyoming server (Home Assistant)."""

    def validate(self) -> Config:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        return self


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _coerce(value: Any, target: Any, where: str) -> Any:
    # Field types are strings here (``from __future__ import annotations``).
    target = {"int": int, "float": float, "str": str, "bool": bool}.get(target, target)
    if target == "list[str]":
        if isinstance(value, str):  # environment variables: comma-separated
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                        "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if target is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if target is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if target is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {target!r}")


def _apply(section: Any, values: Mapping[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {where}.{key}")
        setattr(section, key, _coerce(value, known[key].type, f"{where}.{key}"))


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the validated config from defaults, ``path``, ``env`` and ``overrides``."""
    config = Config()
    sections = {f.name for f in dataclasses.fields(config)}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for name, values in data.items():
            if name not in sections or not isinstance(values, dict):
                raise ConfigError(f"unknown config section [{name}] in {path}")
            _apply(getattr(config, name), values, name)
    for key, value in (os.environ if env is None else env).items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        name, _, setting = key[len(ENV_PREFIX):].lower().partition("__")
        if name not in sections:
            raise ConfigError(f"unknown config section in environment variable {key}")
        _apply(getattr(config, name), {setting: value}, name)
    for name, values in (overrides or {}).items():
        _apply(getattr(config, name), {k: v for k, v in values.items() if v is not None}, name)
    return config.validate()


def describe(config: Config) -> dict[str, dict[str, Any]]:
    """The effective settings as plain data (for ``doctor`` and logs); the token is masked."""
    data = dataclasses.asdict(config)
    if data["server"]["token"]:
        data["server"]["token"] = "(set)"
    return data

