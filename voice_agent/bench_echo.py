"""``voice-agent bench --echo``: does the appliance hear the person over its own voice?

One in-process server with the configured defaults (echo cancellation on, the reply paced
``playback.lead_ms`` ahead) on the loaded engines; every client is a
:class:`~voice_agent.room_client.RoomClient`: a real WebSocket session in a simulated room,
ticking 20 ms in real time, whose microphone hears the person, the reply it plays (convolved
with a room impulse response, delayed, over the person) and recorded noise. Each session
gets one room setting; the settings cycle over the 4 RIRs of ``../shared/audio/rir``, delays
of 20/60/100 ms and the echo at 0/+5/+10 dB over the person, with ``noise3`` or ``noise5``
at 20 dB SNR (the two recordings that are steady machine/room noise; the others hold
voice-like or music-like parts that would test the VAD, not the canceller).

1. *Self-interruptions*: human sentences of ``speech/`` asked one after the other (two per
   session: a fresh canceller and a converged one), nobody speaking over the reply; each
   reply is waited out (``turn_done`` and its echo gone). Counted: ``reply_paused``,
   ``reply_interrupted`` / ``cancelled`` turns, and ``speech_started`` not within the
   person's own sentence: *spurious* while the reply or its reverberation
   (``ECHO_TAIL_S``) plays, *in noise* otherwise (the VAD on the room's noise alone, which
   no echo canceller can help with).
2. *Barge-in*: a human sentence said over a reply, 1-2 s into it, one session at a time.
   Detection latency = arrival (client stream time) of ``reply_paused`` or
   ``reply_interrupted``, whichever comes first, minus the sentence's real onset (its first
   10 ms frame within ``ACTIVE_RANGE_DB`` of its loudest, after ``say``'s start); the
   interrupted reply's ``heard_text``; the WER of the transcript of the person's turn (the
   one that started with the sentence) beside the same sentence asked in part 1, with
   nothing playing.
3. *False interruptions*: a sound 1.0-1.5 s into a reply (see :func:`false_sounds` for how
   each kind is made); per kind: nothing happened / paused then resumed / interrupted.

Times are the client's stream time (samples sent / 16 kHz), which runs in real time, so
event-loop stalls on a busy machine show up as latency, as they would for a real client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array, read_audio, resample
from voice_agent.audio.room import ACTIVE_RANGE_DB, LEVEL_FRAME, FloatArray, load_noises, load_rirs
from voice_agent.bench import Clip, load_clips, percentile, shared_audio_dir
from voice_agent.config import Config, describe
from voice_agent.engines import Engines, load_engines
from voice_agent.room_client import Heard, Room, RoomClient
from voice_agent.server.protocol import (
    ReplyInterrupted,
    ReplyPaused,
    ReplyResumed,
    ReplyText,
    ServerEvent,
    SpeechStarted,
    TranscriptEvent,
    TurnDone,
)
from voice_agent.server.ws import VoiceServer
from voice_agent.wer import normalize, pooled_word_error_rate, word_error_rate

RIRS = ("rir1", "rir2", "rir3", "rir4")
DELAYS_MS = (20, 60, 100)
ECHO_DB = (0.0, 5.0, 10.0)
NOISES = ("noise3", "noise5")
SNR_DB = 20.0
ANSWER_TIMEOUT_S = 90.0
"""A question's answer, from when it was said."""
EVENT_TIMEOUT_S = 30.0
TAIL_S = 1.0
"""Listened to after a reply (and its echo) ended, before the next question."""
ECHO_TAIL_S = 1.5
"""After a reply's last sample its reverberation still reaches the microphone (the longest
RIR rings for about a second): speech found this long after it counts as its echo."""
SETTLE_TIMEOUT_S = 20.0
BACKCHANNELS = ("yeah", "mm-hm", "okay", "right", "uh-huh")
LOUD_DB = 6.0
"""Coughs and knocks over the person's speech level."""
E = TypeVar("E")


@dataclass(frozen=True)
class Setting:
    rir: str
    delay_ms: int
    echo_db: float
    noise: str

    @property
    def label(self) -> str:
        return f"{self.rir} {self.delay_ms}ms {self.echo_db:+.0f}dB {self.noise}"


def setting(index: int) -> Setting:
    """The ``index``-th room: RIR and delay cycle together over 12 pairs (4 and 3 are
    coprime), the echo level turns with the delay and shifts by one every 12 (so 36 rooms
    hold every combination, and any few sessions every level), the noise alternates."""
    return Setting(RIRS[index % 4], DELAYS_MS[index % 3], ECHO_DB[(index // 12 + index) % 3],
                   NOISES[(index // 36 + index) % 2])


@dataclass
class Material:
    rirs: dict[str, FloatArray]
    noises: dict[str, FloatArray]
    sentences: list[tuple[Clip, Int16Array]]
    """Human sentences (``speech/``) with a reference."""

    def room(self, s: Setting) -> Room:
        return Room(rir=self.rirs[s.rir], delay_ms=s.delay_ms, echo_db=s.echo_db,
                    noise=self.noises[s.noise], snr_db=SNR_DB)


def onset_s(speech: npt.ArrayLike) -> float:
    """Seconds from the clip's start to its first active 10 ms frame."""
    x = np.asarray(speech, dtype=np.float64).reshape(-1)
    frames = x[: x.size // LEVEL_FRAME * LEVEL_FRAME].reshape(-1, LEVEL_FRAME)
    energy = np.mean(frames**2, axis=1)
    if not energy.size or energy.max() <= 0:
        return 0.0
    first = int(np.argmax(energy >= energy.max() * 10 ** (-ACTIVE_RANGE_DB / 10)))
    return first * LEVEL_FRAME / PIPELINE_RATE


def load_material(audio_dir: Path) -> Material:
    clips = load_clips(audio_dir / "manifest.tsv", source="shared", prefix="speech/")
    sentences = [(c, read_audio(c.path)[0]) for c in clips if c.reference]
    return Material(load_rirs(audio_dir), load_noises(audio_dir), sentences)


# --- the sounds that are not a turn -----------------------------------------------------


@dataclass(frozen=True)
class Sound:
    kind: str
    name: str
    samples: FloatArray
    level_db: float = 0.0
    """Over the person's speech level (active RMS)."""


def _band(x: FloatArray, low_hz: float, high_hz: float) -> FloatArray:
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1 / PIPELINE_RATE)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    return np.fft.irfft(spectrum, x.size)


def cough(rng: np.random.Generator) -> FloatArray:
    """A cough: noise band-passed to 300-3000 Hz (where a cough's energy is; a small
    random shift per cough), a 5 ms attack, an exponential decay over 150-300 ms; every
    other one a second, weaker burst 250 ms later (a double cough)."""
    def burst(seconds: float) -> FloatArray:
        n = int(seconds * PIPELINE_RATE)
        t = np.arange(n) / PIPELINE_RATE
        envelope = np.minimum(1.0, t / 0.005) * np.exp(-t / (seconds / 4))
        low, high = 300 * rng.uniform(0.8, 1.2), 3000 * rng.uniform(0.8, 1.2)
        out: FloatArray = _band(rng.standard_normal(n), low, high) * envelope
        return out

    out = burst(float(rng.uniform(0.15, 0.3)))
    if rng.random() < 0.5:
        second = burst(float(rng.uniform(0.12, 0.2))) * 0.6
        gap = np.zeros(int(0.25 * PIPELINE_RATE) - min(out.size, int(0.25 * PIPELINE_RATE)))
        out = np.concatenate([out, gap, second])
    return out


def knock(rng: np.random.Generator) -> FloatArray:
    """Knocking: three 50 ms thuds (noise under 1500 Hz, 8 ms decay) 180 ms apart."""
    thud_n = int(0.05 * PIPELINE_RATE)
    t = np.arange(thud_n) / PIPELINE_RATE
    out = np.zeros(int(0.41 * PIPELINE_RATE))
    for k in range(3):
        thud = _band(rng.standard_normal(thud_n), 60, 1500) * np.exp(-t / 0.008)
        at = int(k * 0.18 * PIPELINE_RATE)
        out[at : at + thud_n] += thud
    return out


def door(rir: FloatArray) -> FloatArray:
    """A door banging shut: an impulse in the room, i.e. the impulse response itself from
    its peak, its first 400 ms."""
    peak = int(np.argmax(np.abs(rir)))
    return rir[peak : peak + int(0.4 * PIPELINE_RATE)].astype(np.float64)


def noise_burst(noise: FloatArray, rng: np.random.Generator) -> FloatArray:
    """A 300-500 ms slice of a noise recording, 10 ms fades (said at speech level)."""
    n = int(rng.uniform(0.3, 0.5) * PIPELINE_RATE)
    start = int(rng.integers(0, max(1, noise.size - n)))
    piece = noise[start : start + n].astype(np.float64)
    fade = np.minimum(1.0, np.minimum(np.arange(piece.size), np.arange(piece.size)[::-1]) / 160)
    return piece * fade


def piper_says(engines: Engines, text: str) -> FloatArray:
    chunks = list(engines.tts.synthesize(text, threading.Event()))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return resample(audio.astype(np.int16), engines.tts.sample_rate,
                    PIPELINE_RATE).astype(np.float64)


def espeak_says(text: str, voice: str) -> FloatArray | None:
    """espeak-ng's ``voice`` saying ``text``; None when espeak-ng is not installed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text],
                           check=True, capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return read_audio(path)[0].astype(np.float64)


def false_sounds(material: Material, engines: Engines, *, per_kind: int,
                 seed: int = 9) -> list[Sound]:
    """``per_kind`` coughs, knocks/doors (alternating), noise bursts (cycling over every
    noise recording), and backchannels said by Piper and by espeak-ng (``en-us``)."""
    rng = np.random.default_rng(seed)
    sounds = [Sound("cough", f"cough{i}", cough(rng), LOUD_DB) for i in range(per_kind)]
    rirs, noises = list(material.rirs.items()), list(material.noises.items())
    for i in range(per_kind):
        if i % 2:
            name, rir = rirs[(i // 2) % len(rirs)]
            sounds.append(Sound("knock/door", f"door-{name}", door(rir), LOUD_DB))
        else:
            sounds.append(Sound("knock/door", f"knock{i}", knock(rng), LOUD_DB))
    for i in range(per_kind):
        name, noise = noises[i % len(noises)]
        sounds.append(Sound("noise burst", f"burst-{name}", noise_burst(noise, rng)))
    words = [BACKCHANNELS[i % len(BACKCHANNELS)] for i in range(per_kind)]
    sounds += [Sound("backchannel (Piper)", w, piper_says(engines, w)) for w in words]
    for w in words:
        said = espeak_says(w, "en-us")
        if said is not None and said.size:
            sounds.append(Sound("backchannel (espeak-ng)", w, said))
    return sounds


# --- one session's trials ---------------------------------------------------------------


def _answered(e: ServerEvent) -> bool:
    return isinstance(e, TurnDone) and e.status not in ("empty", "backchannel")


def _of(kind: type[Any], turn_id: int) -> Callable[[ServerEvent], bool]:
    return lambda e: isinstance(e, kind) and getattr(e, "turn_id", None) == turn_id


async def _wait(client: RoomClient, kind: type[E], timeout_s: float, since: int,
                turn_id: int | None = None,
                when: Callable[[E], bool] = lambda _: True) -> tuple[E, float]:
    """The first ``kind`` event (of ``turn_id``) from ``since`` on, and when it came."""
    def match(e: ServerEvent) -> bool:
        return isinstance(e, kind) and turn_id in (None, getattr(e, "turn_id", None)) and when(e)

    heard = await client.wait_for(match, timeout_s, since=since)
    event = heard.event
    assert isinstance(event, kind)  # noqa: S101 - matched above
    return event, heard.at_s


async def _settle(client: RoomClient, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Until the reply and its echo are gone and every started turn has ended, then
    ``TAIL_S`` more (late events of the reply's echo still count)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        started = {e.turn_id for e in client.events(SpeechStarted)}
        ended = {e.turn_id for e in client.events(TurnDone)}
        if not client.playing and started <= ended:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(TAIL_S)


def _count(heard: Sequence[Any], spoken: tuple[float, float],
           playing: tuple[float, float] | None) -> dict[str, int]:
    """Events of a stretch where the person said one sentence (``spoken``: start, end s)
    and a reply played (``playing``: first reply text to its end plus ``ECHO_TAIL_S``)."""
    events = [h.event for h in heard]
    spurious = [e.audio_ms / 1000 for e in events if isinstance(e, SpeechStarted)
                and not spoken[0] - 0.3 <= e.audio_ms / 1000 <= spoken[1] + 0.5]
    during = sum(playing is not None and playing[0] <= t <= playing[1] for t in spurious)
    return {
        "paused": sum(isinstance(e, ReplyPaused) for e in events),
        "resumed": sum(isinstance(e, ReplyResumed) for e in events),
        "interrupted": sum(isinstance(e, ReplyInterrupted) for e in events),
        "cancelled": sum(isinstance(e, TurnDone) and e.status == "cancelled" for e in events),
        "backchannel_turns": sum(isinstance(e, TurnDone) and e.status == "backchannel"
                                 for e in events),
        "spurious_starts": during,
        "starts_in_noise": len(spurious) - during,
    }


async def ask(client: RoomClient, s: Setting, clip: Clip, audio: Int16Array,
              index: int = 0) -> dict[str, Any]:
    """Say a question, wait for its answer to end and play out; one self-interruption row."""
    mark = len(client.heard)
    start = client.say(audio, after_s=0.5)
    row: dict[str, Any] = {"setting": s.label, "rir": s.rir, "delay_ms": s.delay_ms,
                           "echo_db": s.echo_db, "noise": s.noise, "in_session": index,
                           "question": clip.path.name, "timed_out": False}
    done: TurnDone | None = None
    try:
        done = (await _wait(client, TurnDone, ANSWER_TIMEOUT_S, mark,
                            when=lambda e: e.status not in ("empty", "backchannel")))[0]
    except TimeoutError:
        row["timed_out"] = True
    await _settle(client)
    playing = None
    if done is not None:
        texts = [h.at_s for h in client.heard[mark:]
                 if isinstance(h.event, ReplyText) and h.event.turn_id == done.turn_id]
        if texts:
            playing = (texts[0], texts[0] + done.audio_samples / PIPELINE_RATE + ECHO_TAIL_S)
    row.update(_count(client.heard[mark:], (start, start + audio.size / PIPELINE_RATE),
                      playing))
    if done is not None:
        row.update(status=done.status, transcript=done.transcript, reply_text=done.reply_text,
                   reply_s=round(done.audio_samples / PIPELINE_RATE, 2),
                   wer=round(word_error_rate(clip.reference, done.transcript), 3))
        row["heard_in_echo"] = heard_in_echo(client.heard[mark:], done.turn_id)
    return row


def heard_in_echo(heard: Sequence[Heard], question_turn: int) -> list[str]:
    """What Whisper made of the sound while nobody spoke: the words of every other turn
    (a burst taken for a person, or judged a backchannel) after the question's."""
    words = [h.event.text for h in heard if isinstance(h.event, TranscriptEvent)
             and h.event.turn_id > question_turn and h.event.text]
    words += [h.event.transcript for h in heard if isinstance(h.event, TurnDone)
              and h.event.status == "backchannel" and h.event.transcript]
    return words


async def self_trial(url: str, material: Material, s: Setting,
                     questions: Sequence[tuple[Clip, Int16Array]]) -> list[dict[str, Any]]:
    async with RoomClient(url, material.room(s)) as client:
        return [await ask(client, s, clip, audio, i)
                for i, (clip, audio) in enumerate(questions)]


async def _reply_started(client: RoomClient, question: Int16Array) -> tuple[int, float] | None:
    """Ask ``question``; (turn, client time) of its reply's first sentence."""
    mark = len(client.heard)
    client.say(question, after_s=0.5)
    with contextlib.suppress(TimeoutError):
        first, at_s = await _wait(client, ReplyText, ANSWER_TIMEOUT_S, mark)
        return first.turn_id, at_s
    return None


async def barge_trial(url: str, material: Material, s: Setting,
                      sentence: tuple[Clip, Int16Array], question: Int16Array,
                      rng: np.random.Generator) -> dict[str, Any]:
    """The sentence said over a reply, 1-2 s into it (asked again, once, when the reply was
    over by then)."""
    async with RoomClient(url, material.room(s)) as client:
        row = await _barge_once(client, s, sentence, question, rng)
        if row["outcome"] == "reply over":
            await _settle(client)
            row = await _barge_once(client, s, sentence, question, rng)
        return row


async def _barge_once(client: RoomClient, s: Setting, sentence: tuple[Clip, Int16Array],
                      question: Int16Array, rng: np.random.Generator) -> dict[str, Any]:
    clip, audio = sentence
    row: dict[str, Any] = {"setting": s.label, "echo_db": s.echo_db, "rir": s.rir,
                           "delay_ms": s.delay_ms, "sentence": clip.path.name,
                           "reference": clip.reference, "outcome": None}
    mark = len(client.heard)
    started = await _reply_started(client, question)
    if started is None:
        row["outcome"] = "no reply"
        return row
    turn, reply_at = started
    onset = client.say(audio, after_s=float(rng.uniform(1.0, 2.0))) + onset_s(audio)
    row["into_reply_s"] = round(onset - reply_at, 3)
    try:
        done = (await _wait(client, TurnDone, ANSWER_TIMEOUT_S, mark, turn))[0]
    except TimeoutError:
        row["outcome"] = "timed out"
        return row
    row.update(status=done.status, reply_text=done.reply_text, heard_text=done.heard_text,
               reply_s=round(done.audio_samples / PIPELINE_RATE, 2))
    heard = client.heard[mark:]
    stops = [h for h in heard if isinstance(h.event, ReplyPaused | ReplyInterrupted)
             and h.event.turn_id == turn]
    row["paused_before_onset"] = sum(h.at_s < onset for h in stops)
    after = [h.at_s for h in stops if h.at_s >= onset]
    if after:  # the reply stopped: paused, or interrupted outright
        row["latency_ms"] = round((after[0] - onset) * 1000, 1)
    row["interrupted"] = any(_of(ReplyInterrupted, turn)(h.event) for h in heard)
    if not row["interrupted"] and done.audio_samples / PIPELINE_RATE < row["into_reply_s"]:
        row["outcome"] = "reply over"  # it ended before the person spoke: not a trial
        return row
    row["outcome"] = "interrupted" if row["interrupted"] else (
        "resumed" if after else "not detected")
    # The person's turn: the one that started with the sentence (else any later one).
    theirs = [h.event.turn_id for h in heard if isinstance(h.event, SpeechStarted)
              and onset - 0.5 <= h.event.audio_ms / 1000 <= onset + 1.5]
    with contextlib.suppress(TimeoutError):
        said = (await _wait(client, TranscriptEvent, EVENT_TIMEOUT_S, mark, when=lambda e:
                            (e.turn_id == theirs[0] if theirs else e.turn_id > turn)
                            and bool(e.text)))[0]
        row["transcript"] = said.text
    return row


async def false_trial(url: str, material: Material, s: Setting, question: Int16Array,
                      sound: Sound, rng: np.random.Generator) -> dict[str, Any]:
    """``sound`` 1.0-1.5 s into a reply; what became of the reply."""
    row: dict[str, Any] = {"kind": sound.kind, "sound": sound.name, "setting": s.label,
                           "sound_s": round(sound.samples.size / PIPELINE_RATE, 3),
                           "level_db": sound.level_db, "outcome": None}
    async with RoomClient(url, material.room(s)) as client:
        mark = len(client.heard)
        started = await _reply_started(client, question)
        if started is None:
            row["outcome"] = "no reply"
            return row
        turn, reply_at = started
        at = client.say(sound.samples, after_s=float(rng.uniform(1.0, 1.5)),
                        level_db=sound.level_db)
        row["into_reply_s"] = round(at - reply_at, 3)
        try:
            done = (await _wait(client, TurnDone, ANSWER_TIMEOUT_S, mark, turn))[0]
        except TimeoutError:
            row["outcome"] = "timed out"
            return row
        await _settle(client, timeout_s=20.0)
        events = [h.event for h in client.heard[mark:]]
        paused = any(_of(ReplyPaused, turn)(e) for e in events)
        resumed = any(_of(ReplyResumed, turn)(e) for e in events)
        row.update(status=done.status, reply_s=round(done.audio_samples / PIPELINE_RATE, 2),
                   burst_words=[e.transcript for e in events
                                if isinstance(e, TurnDone) and e.status == "backchannel"],
                   answered_after=sum(isinstance(e, TurnDone) and _answered(e) and e.turn_id > turn
                                      for e in events))
        if any(_of(ReplyInterrupted, turn)(e) for e in events):
            row["outcome"] = "interrupted"
        elif paused:
            row["outcome"] = "paused, resumed" if resumed else "paused, not resumed"
        elif done.audio_samples / PIPELINE_RATE < row["into_reply_s"]:
            row["outcome"] = "reply over"
        else:
            row["outcome"] = "nothing"
        return row


# --- the run ----------------------------------------------------------------------------


@dataclass
class Plan:
    self_sessions: int
    questions_per_session: int
    barge_trials: int
    false_per_kind: int
    concurrency: int = 2
    """Sessions at once for the counts (parts 1 and 3): a real-time run takes long."""
    barge_concurrency: int = 1
    """Sessions at once for the barge-in latency: one, so a saturated CPU (two real-time
    sessions and Whisper on 2 cores) does not show up as detection latency."""


FULL = Plan(self_sessions=25, questions_per_session=2, barge_trials=12, false_per_kind=3)
"""50 replies with nobody speaking over them; the barge-in sentences said alone are among
their questions."""
QUICK = Plan(self_sessions=2, questions_per_session=2, barge_trials=3, false_per_kind=1)


@dataclass
class Results:
    replies: list[dict[str, Any]] = field(default_factory=list)
    barge: list[dict[str, Any]] = field(default_factory=list)
    false: list[dict[str, Any]] = field(default_factory=list)


async def _bounded(jobs: Sequence[Any], concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def run_trials(url: str, material: Material, sounds: Sequence[Sound], plan: Plan,
                     *, seed: int = 9) -> Results:
    rng = np.random.default_rng(seed)
    sentences = material.sentences
    room = 0

    def next_setting() -> Setting:
        nonlocal room
        room += 1
        return setting(room - 1)

    results = Results()
    started = time.perf_counter()
    jobs = []
    for i in range(plan.self_sessions):
        asked = [sentences[(i * plan.questions_per_session + k) % len(sentences)]
                 for k in range(plan.questions_per_session)]
        jobs.append(self_trial(url, material, next_setting(), asked))
    for rows in await _bounded(jobs, plan.concurrency):
        results.replies += rows
    _progress("self-interruptions", len(results.replies), started)

    longest = sorted(sentences, key=lambda s: -s[1].size)[:4]  # questions that draw a reply
    barge = [barge_trial(url, material, next_setting(), sentences[i % len(sentences)],
                         longest[i % len(longest)][1], rng) for i in range(plan.barge_trials)]
    results.barge = await _bounded(barge, plan.barge_concurrency)
    for row in results.barge:  # the same sentence asked with nothing playing (part 1)
        alone = [r.get("transcript") for r in results.replies if r["question"] == row["sentence"]]
        row["alone_transcript"] = next((t for t in alone if t is not None), "")
    _progress("barge-in", len(results.barge), started)

    false = [false_trial(url, material, next_setting(), longest[i % len(longest)][1], sound, rng)
             for i, sound in enumerate(sounds)]
    results.false = await _bounded(false, plan.concurrency)
    _progress("false interruptions", len(results.false), started)
    return results


def _progress(stage: str, n: int, started: float) -> None:
    print(f"bench: {stage}: {n} done, {time.perf_counter() - started:.0f} s",
          file=sys.stderr, flush=True)


# --- the report (pure) ------------------------------------------------------------------

SELF_COLUMNS = ("replies", "reply_s", "paused", "resumed", "interrupted", "cancelled",
                "spurious_starts", "starts_in_noise", "timed_out")


def self_summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per echo level, delay, RIR, place in the session, and all."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        for key in (f"echo {r['echo_db']:+.0f} dB", f"delay {r['delay_ms']} ms", r["rir"],
                    "1st reply of a session" if r["in_session"] == 0 else "later reply"):
            groups.setdefault(key, []).append(r)
    groups["all"] = list(rows)
    out = {}
    for key in sorted(groups, key=lambda k: (k == "all", k)):
        g = groups[key]
        out[key] = {"replies": len(g),
                    "reply_s": round(sum(float(r.get("reply_s", 0.0)) for r in g), 1),
                    **{c: sum(int(r.get(c, 0)) for r in g) for c in SELF_COLUMNS[2:]}}
    return out


def barge_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    trials = [r for r in rows if r["outcome"] not in ("reply over", "no reply")]
    latency = [float(r["latency_ms"]) for r in trials if "latency_ms" in r]
    over = [(r["reference"], r.get("transcript", "")) for r in trials]
    alone = [(r["reference"], r.get("alone_transcript") or "") for r in trials]
    outcomes: dict[str, int] = {}
    for r in rows:
        outcomes[str(r["outcome"])] = outcomes.get(str(r["outcome"]), 0) + 1
    heard = [r for r in trials if r.get("status") == "cancelled"]
    return {
        "trials": len(trials), "outcomes": outcomes,
        "latency_ms": {"n": len(latency), "p50": round(percentile(latency, 0.5), 1),
                       "p95": round(percentile(latency, 0.95), 1),
                       "max": round(max(latency), 1) if latency else None},
        "paused_before_onset": sum(int(r.get("paused_before_onset", 0)) for r in trials),
        "wer_alone": round(pooled_word_error_rate(alone), 4) if alone else None,
        "wer_over_reply": round(pooled_word_error_rate(over), 4) if over else None,
        "heard_prefix_of_reply": sum(str(r["reply_text"]).startswith(str(r["heard_text"]))
                                     for r in heard),
        "heard_shorter": sum(len(normalize(str(r["heard_text"])))
                             < len(normalize(str(r["reply_text"]))) for r in heard),
        "cancelled": len(heard),
    }


FALSE_OUTCOMES = ("nothing", "paused, resumed", "paused, not resumed", "interrupted",
                  "reply over", "no reply", "timed out")


def false_summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = out.setdefault(r["kind"], dict.fromkeys(FALSE_OUTCOMES, 0))
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return out


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in head], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_report(summary: dict[str, Any]) -> str:
    selfs = summary["self_interruptions"]
    parts = ["Self-interruptions (replies with nobody speaking over them)",
             _table(("", *SELF_COLUMNS), [(k, *(v[c] for c in SELF_COLUMNS))
                                          for k, v in selfs.items()])]
    b = summary["barge_in"]
    lat = b["latency_ms"]
    parts += ["", "Barge-in (a human sentence 1-2 s into the reply)", _table(
        ("", "value"), [
            ("trials (reply still playing)", b["trials"]),
            ("outcomes", ", ".join(f"{k} {v}" for k, v in b["outcomes"].items())),
            ("detection latency p50 / p95 / max (ms)",
             f"{lat['p50']} / {lat['p95']} / {lat['max']} (n={lat['n']})"),
            ("paused before the person spoke", b["paused_before_onset"]),
            ("WER said alone / over the reply",
             f"{_pct(b['wer_alone'])} / {_pct(b['wer_over_reply'])}"),
            ("heard_text a prefix of reply_text, shorter",
             f"{b['heard_prefix_of_reply']}/{b['cancelled']}, "
             f"{b['heard_shorter']}/{b['cancelled']}")])]
    f = summary["false_interruptions"]
    shown = [o for o in FALSE_OUTCOMES if any(v[o] for v in f.values())]
    parts += ["", "False interruptions (a sound 1.0-1.5 s into the reply)",
              _table(("kind", *shown), [(k, *(v[o] for o in shown)) for k, v in f.items()])]
    return "\n".join(parts)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summarize(results: Results) -> dict[str, Any]:
    return {"self_interruptions": self_summary(results.replies),
            "barge_in": barge_summary(results.barge),
            "false_interruptions": false_summary(results.false)}


async def run_echo_bench(config: Config, *, quick: bool = False,
                         json_path: str | None = None) -> int:
    """Run the three parts against one in-process server; print the tables."""
    audio_dir = shared_audio_dir()
    if audio_dir is None:
        print("voice-agent: bench: no shared/audio beside the checkout", file=sys.stderr)
        return 2
    config.server.port, config.server.host = 0, "127.0.0.1"
    plan = QUICK if quick else FULL
    material = load_material(audio_dir)
    engines = load_engines(config)
    started = time.perf_counter()
    try:
        sounds = false_sounds(material, engines, per_kind=plan.false_per_kind)
        async with VoiceServer(engines, config) as server:
            results = await run_trials(f"ws://127.0.0.1:{server.port}", material, sounds, plan)
    finally:
        engines.close()
    summary = summarize(results)
    print(format_report(summary))
    for row in results.barge[:3]:
        if row.get("status") == "cancelled":
            print(f"heard {row['heard_text']!r} of {row['reply_text']!r}")
    for row in results.replies:
        if row.get("interrupted") and row.get("heard_in_echo"):
            print(f"its own echo taken for words ({row['setting']}): {row['heard_in_echo']}")
    if json_path:
        Path(json_path).write_text(json.dumps({
            "quick": quick, "seconds": round(time.perf_counter() - started, 1),
            "summary": summary, "replies": results.replies, "barge_in": results.barge,
            "false_interruptions": results.false,
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "config": describe(config)}, indent=2, ensure_ascii=False))
        print(f"wrote {json_path}", file=sys.stderr)
    timed_out = any(r["timed_out"] for r in results.replies) or any(
        r["outcome"] in ("timed out", "no reply") for r in [*results.barge, *results.false])
    return 1 if timed_out else 0
