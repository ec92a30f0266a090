#!/usr/bin/env bash
# Generate the project's own speech fixtures into fixtures/ (committed to the repo).
#
# Why synthetic: the default tests must run on a fresh checkout without ../shared/audio, and
# the project may only ship audio it made itself. espeak-ng is used (not Piper) on purpose:
# the reply voice is Piper's male US "joe", so the *input* speech is a different engine and a
# different voice; tests that feed our own TTS output back into ASR would be too easy.
#
# Output (16 kHz mono 16-bit PCM WAV unless noted), each with 0.3 s of leading and 0.5 s of
# trailing digital silence (espeak's own edge silence is trimmed first, so these are exact):
#   fixtures/utt01.wav .. utt10.wav       ~2-4 s of speech each
#   fixtures/utt01_8k.wav                 utt01 at 8 kHz   (resampling tests)
#   fixtures/utt01_44k.wav                utt01 at 44.1 kHz (resampling tests)
#   fixtures/manifest.tsv                 file, seconds, sample_rate, reference (exact text)
#
# Idempotent: every run rewrites the same files from the same inputs (espeak-ng and soxr are
# deterministic), so re-running leaves `git status` clean with the same tool versions.
#
# Usage: scripts/make_fixtures.sh   (env: PYTHON, ESPEAK, VOICE, SPEED to override)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/fixtures"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
ESPEAK="${ESPEAK:-espeak-ng}"
VOICE="${VOICE:-en-gb+f3}"   # British English, female variant: unlike the male US Piper voice
SPEED="${SPEED:-150}"        # words per minute; moderate, as a person talks to a device

command -v "$ESPEAK" >/dev/null || { echo "make_fixtures: $ESPEAK not found (apt-get install espeak-ng)" >&2; exit 1; }
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
"$PYTHON" -c 'import numpy, soundfile, soxr' 2>/dev/null \
    || { echo "make_fixtures: $PYTHON lacks numpy/soundfile/soxr (use the project venv)" >&2; exit 1; }

# name<TAB>text. Clear, common words: espeak is robotic, and the fixtures test the pipeline,
# not Whisper's robustness to odd synthesis.
SENTENCES=$(cat <<'EOF'
utt01	What time does the pharmacy open tomorrow?
utt02	Please turn up the heating in the car.
utt03	What is the weather going to be like this afternoon?
utt04	Call my sister and tell her I am running late.
utt05	How long will it take to drive to the airport?
utt06	Play some quiet music for the next hour.
utt07	Remind me to call the doctor on Monday morning.
utt08	Can you read me the news headlines?
utt09	Turn down the radio a little, please.
utt10	Where is the closest place to get a coffee?
EOF
)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"

while IFS=$'\t' read -r name text; do
    [ -n "$name" ] || continue
    "$ESPEAK" -v "$VOICE" -s "$SPEED" -w "$TMP/$name.raw.wav" -- "$text"
    printf '%s\t%s\n' "$name" "$text" >>"$TMP/list.tsv"
done <<<"$SENTENCES"

"$PYTHON" - "$TMP" "$OUT" <<'PY'
import sys
from pathlib import Path

import numpy as np
import soundfile
import soxr

tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
RATE, LEAD_S, TAIL_S = 16000, 0.3, 0.5
VARIANTS = {"utt01": (8000, 44100)}   # extra sample rates of one utterance


def trim(x: np.ndarray, rate: int, floor_db: float = 50.0) -> np.ndarray:
    """Cut espeak's own leading/trailing silence (10 ms windows below peak - floor_db)."""
    win = rate // 100
    n = len(x) // win
    rms = np.sqrt(np.mean(x[: n * win].reshape(n, win) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > -floor_db)[0]
    return x[loud[0] * win : (loud[-1] + 1) * win]


def pad_and_write(path: Path, speech: np.ndarray, rate: int) -> float:
    lead, tail = np.zeros(round(LEAD_S * rate)), np.zeros(round(TAIL_S * rate))
    y = np.concatenate([lead, speech, tail])
    pcm = np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)
    soundfile.write(str(path), pcm, rate, subtype="PCM_16", format="WAV")
    return len(pcm) / rate


rows = []
for line in (tmp / "list.tsv").read_text(encoding="utf-8").splitlines():
    name, text = line.split("\t", 1)
    raw, raw_rate = soundfile.read(str(tmp / f"{name}.raw.wav"), dtype="float64")
    speech = trim(raw, raw_rate)
    speech = 0.7 * speech / np.abs(speech).max()   # peak -3 dBFS: same level in every file
    for rate, suffix in [(RATE, "")] + [(r, f"_{r // 1000}k") for r in VARIANTS.get(name, ())]:
        resampled = soxr.resample(speech, raw_rate, rate, quality="VHQ")
        fname = f"{name}{suffix}.wav"
        seconds = pad_and_write(out / fname, resampled, rate)
        rows.append((fname, f"{seconds:.3f}", str(rate), text))

with open(out / "manifest.tsv", "w", encoding="utf-8", newline="\n") as f:
    f.write("file\tseconds\tsample_rate\treference\n")
    for row in rows:
        f.write("\t".join(row) + "\n")
print(f"make_fixtures: wrote {len(rows)} files and manifest.tsv to {out}")
PY
