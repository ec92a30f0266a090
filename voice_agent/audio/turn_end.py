"""End of turn: how likely is it that the person has finished, from what they said and how.

Two judges the session can ask at a pause:

- :class:`SmartTurnV3`, from the sound: Pipecat's Smart Turn v3 (a Whisper-encoder
  classifier, an 8 MB int8 CPU ONNX, BSD-2) over the last 8 s of the utterance (speech
  followed by the silence so far). It hears intonation and rhythm: a falling final pitch,
  a drawn-out "and...".
- :func:`text_complete_probability`, from the words: a pure check of the transcript's
  ending (a trailing conjunction, preposition, article or filler cannot end an English
  sentence; "?" and "." usually do).

Both answer in [0, 1]; :func:`combined_probability` is the blend ``benchmarks/turn_end.py``
measured best. The model file ships inside the ``pipecat-ai`` wheel (installed without its
dependencies: only the file is used) and is resolved through the manifest (role ``turn``).
Loading never stops the appliance: :func:`load_turn_end_model` returns None and the
fixed-silence endpointer decides alone.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array
from voice_agent.errors import ModelError

if TYPE_CHECKING:
    from voice_agent.models import Manifest

log = logging.getLogger(__name__)

WINDOW_S = 8
"""Smart Turn v3 sees the last 8 s of the utterance; shorter ones are zero-padded in front."""
_WINDOW = WINDOW_S * PIPELINE_RATE
_N_FFT = 400
_HOP = 160
_N_MELS = 80


class TurnEndModel(Protocol):
    def complete_probability(self, audio: Int16Array) -> float:
        """Probability that the speaker has finished, from the utterance so far (16 kHz mono,
        speech followed by the silence so far). Pure: no I/O besides the loaded model."""
        ...


# --- Whisper log-mel features, as transformers' WhisperFeatureExtractor(chunk_length=8) makes
# them (the features Smart Turn v3 was trained on). Written out in numpy: transformers is an
# optional extra, and faster-whisper's extractor has no waveform normalisation.


def _mel_filters() -> npt.NDArray[np.float64]:
    """Slaney-scale, Slaney-normalised triangular filters, shape (n_fft // 2 + 1, n_mels)."""

    def hz_to_mel(f: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        mel = 3.0 * f / 200.0
        log_region = f >= 1000.0
        mel[log_region] = 15.0 + np.log(f[log_region] / 1000.0) * (27.0 / np.log(6.4))
        return mel

    def mel_to_hz(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        f = 200.0 * m / 3.0
        log_region = m >= 15.0
        f[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (m[log_region] - 15.0))
        return f

    edges = hz_to_mel(np.array([0.0, PIPELINE_RATE / 2.0]))
    filter_hz = mel_to_hz(np.linspace(edges[0], edges[1], _N_MELS + 2))
    fft_hz = np.linspace(0, PIPELINE_RATE // 2, _N_FFT // 2 + 1)
    slopes = filter_hz[None, :] - fft_hz[:, None]
    width = np.diff(filter_hz)
    down = -slopes[:, :-2] / width[:-1]
    up = slopes[:, 2:] / width[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (filter_hz[2:] - filter_hz[:-2])[None, :]
    return filters


_MEL = _mel_filters()
_HANN = np.hanning(_N_FFT + 1)[:-1]  # periodic, as torch.hann_window


def log_mel_features(
    window: npt.NDArray[np.float32], leading_zeros: int = 0
) -> npt.NDArray[np.float32]:
    """(80, 800) log-mel features of exactly 8 s of float audio in [-1, 1].

    ``leading_zeros``: how many samples at the start are padding. Their frames are all
    alike, so one spectrum stands for all of them (the same numbers, a third of the time
    for a 3 s utterance).
    """
    x = window.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), _N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    # Frame i spans padded[HOP*i, HOP*i + N_FFT); it is constant while it stays inside the
    # padding and its reflection (which needs more than N_FFT/2 padding samples).
    alike = 0
    if leading_zeros > _N_FFT // 2:
        alike = min(len(frames), max(0, (leading_zeros + _N_FFT // 2 - _N_FFT) // _HOP + 1))
    power = np.empty((len(frames), _N_FFT // 2 + 1))
    if alike:
        power[:alike] = np.abs(np.fft.rfft(frames[0] * _HANN)) ** 2
    power[alike:] = np.abs(np.fft.rfft(frames[alike:] * _HANN, axis=-1)) ** 2
    log_spec = np.log10(np.maximum(1e-10, power @ _MEL)).T[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    features: npt.NDArray[np.float32] = ((log_spec + 4.0) / 4.0).astype(np.float32)
    return features


def last_window(audio: Int16Array) -> npt.NDArray[np.float32]:
    """The last 8 s as float, zero-padded at the start (where Smart Turn expects padding)."""
    tail = np.asarray(audio, dtype=np.int16)[-_WINDOW:].astype(np.float32) / 32768.0
    out = np.zeros(_WINDOW, dtype=np.float32)
    if tail.size:
        out[-tail.size:] = tail
    return out


class SmartTurnV3:
    """Smart Turn v3 on onnxruntime's CPU provider, one intra-op thread by default.

    One thread: the call is short (see the README for ms per call) and runs beside ASR,
    the LLM and TTS on a small CPU, where more threads only contend.
    """

    def __init__(self, path: str, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                path, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"cannot load the Smart Turn model {path!r}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape)[1:] != [_N_MELS, WINDOW_S * 100]:
            raise ModelError(f"{path!r} is not a Smart Turn v3 model (inputs {inputs})")
        self._input = inputs[0].name

    def complete_probability(self, audio: Int16Array) -> float:
        used = min(len(audio), _WINDOW)
        features = log_mel_features(last_window(audio), leading_zeros=_WINDOW - used)
        (out,) = self._session.run(None, {self._input: features[None]})[:1]
        # The exported graph ends in a sigmoid (its output is named "logits" regardless).
        return float(np.clip(np.asarray(out).reshape(-1)[0], 0.0, 1.0))


# --- Text: the ending of the transcript so far.

_FILLERS = frozenset({"um", "umm", "uh", "uhh", "uhm", "er", "erm", "ah", "hmm", "mm", "mhm"})
# Words an English sentence (as spoken to an assistant) practically never ends on:
# coordinating/subordinating conjunctions, prepositions, articles, possessive determiners.
_CANNOT_END = frozenset({
    "and", "or", "but", "nor", "because", "cause", "if", "unless", "although", "though",
    "whereas", "whether", "than", "so that", "the", "a", "an", "my", "your", "his", "our",
    "their", "its", "for", "to", "of", "at", "with", "from", "into", "onto", "between",
    "towards", "toward", "through", "during", "without", "within", "upon", "across",
    "against", "among", "via", "per", "i", "we", "they", "i'm", "we're", "they're", "i'd",
    "i'll", "it's", "there's", "very", "really", "quite", "rather", "such", "every", "each",
    "whose", "let's",
})
# Can end a sentence, but more often leads on ("so", "then", "like", "is", ...).
_USUALLY_CONTINUES = frozenset({
    "so", "then", "like", "also", "just", "that", "this", "these", "those", "when", "while",
    "where", "what", "who", "how", "is", "are", "was", "were", "am", "be", "been", "being",
    "have", "has", "had", "do", "does", "not", "more", "most", "less", "much", "many",
    "well", "okay", "ok", "actually", "basically", "maybe", "first", "next", "after",
    "before", "until", "since", "as", "out", "up", "off", "want", "need", "think", "mean",
    "know", "get", "got", "go", "going", "gonna", "wanna", "make", "take", "her", "in",
    "on", "by", "about", "over", "under", "some", "any", "which", "could", "would",
    "should", "can", "will", "must",
})
_TRAILING_OFF = ("...", "…", ",", ";", ":", "-", "—", "–")
_WORD = re.compile(r"[a-z][a-z']*")


def text_complete_probability(text: str) -> float:
    """How likely a transcript is a finished utterance, from its ending alone. Pure.

    Calibrated loosely (see ``benchmarks/turn_end.py``): a clear cut-off is near 0, a
    question or statement that ends on a content word near 0.9, no words at all 0.5.
    """
    stripped = text.strip().lower()
    words = _WORD.findall(stripped.replace("’", "'"))
    if not words:
        return 0.5
    last = words[-1]
    last_two = " ".join(words[-2:])
    if last in _FILLERS:
        return 0.05
    if last in _CANNOT_END or last_two in _CANNOT_END:
        # "Who did you go with?": Whisper's question mark is worth something.
        return 0.5 if stripped.endswith("?") else 0.05
    if stripped.endswith(_TRAILING_OFF):
        return 0.15
    score = 0.85
    if stripped.endswith("?"):
        score = 0.95
    elif stripped.endswith("!"):
        score = 0.9
    elif not stripped.endswith("."):
        score = 0.7  # a streaming partial without punctuation yet
    if last in _USUALLY_CONTINUES:
        score = min(score, 0.35)
    if len(words) < 3:
        # "Yes." is a whole answer, "So." is not: short ones are judged by the word alone,
        # pulled toward the middle.
        score = 0.5 + (score - 0.5) * 0.6
    return score


def combined_probability(audio_probability: float, text_probability: float) -> float:
    """One number from both judges: the text vetoes, the audio decides the rest.

    A transcript that cannot end ("... a table for") holds the turn however final it
    sounded; otherwise the sound (prosody) decides, nudged by the words.
    """
    if text_probability <= 0.2:
        return min(audio_probability, text_probability * 2.0)
    return 0.7 * audio_probability + 0.3 * text_probability


def load_turn_end_model(
    manifest: Manifest, name: str = "default", *, threads: int = 1
) -> TurnEndModel | None:
    """Smart Turn v3 from the manifest (role ``turn``), or None, logged, if it cannot load.

    None is not an error: the session then ends turns on fixed silence alone.
    """
    try:
        model = manifest.resolve("turn", name)
        return SmartTurnV3(model.path, threads=threads)
    except Exception as exc:  # any failure: the appliance runs without it
        log.warning("end-of-turn model %r not loaded (fixed silence only): %s", name, exc)
        return None
