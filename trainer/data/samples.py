"""Turning arbitrary audio files into set notes: read, check, resample, mono, trim, cut, normalise.

Shared by the sample-folder and NSynth sources. Every problem a file can have becomes a `Skip`
with a one-line reason for report.json; it never stops an import.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.soundfont import FADE_OUT, ONSET_DB, PRE_ROLL, SILENT_DB, TARGET_PEAK

AUDIO_EXTENSIONS = (".wav", ".flac", ".aif", ".aiff", ".aifc", ".ogg")
SILENT_PEAK_DB = -70.0     # a file whose peak is below this (dBFS) is silent
CLIP_LEVEL = 0.99          # clipping: runs of identical samples at or above this level...
CLIP_RUN = 5               # ...at least this long...
CLIP_RUNS = 2              # ...at least this many times (a 16-bit sine peak repeats ~3 samples, not 5)
LOUDNESS_WINDOW = 0.4      # s: "momentary" window for note loudness normalisation
TARGET_LOUDNESS_DB = -20.0  # dBFS RMS of a note's loudest 400 ms window after normalisation


class Skip(Exception):
    """A file or note that is left out of the set; the message is its reason."""


@dataclass
class Prepared:
    audio: np.ndarray      # float32[note_samples] at the set's rate
    duration: float        # seconds of sound before zero padding
    source_rate: int
    source_channels: int


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read any soundfile-readable file -> (float32[frames, channels], sample rate); `Skip` on failure."""
    import soundfile as sf

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise Skip("empty file (0 bytes)")
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Skip:
        raise
    except Exception as e:  # libsndfile raises several types for corrupt or unknown data
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Skip(f"unreadable: {msg}") from None
    if data.shape[0] == 0:
        raise Skip("empty: no audio frames")
    return data, int(sr)


def count_clip_runs(data: np.ndarray) -> int:
    """Runs of >= CLIP_RUN identical samples at |x| >= CLIP_LEVEL, over all channels."""
    runs = 0
    for ch in data.T:
        hot = np.abs(ch) >= CLIP_LEVEL
        if not hot.any():
            continue
        same = np.concatenate([[False], (ch[1:] == ch[:-1]) & hot[1:] & hot[:-1]])
        # Lengths of runs of `same` (each run of k True means k+1 identical samples).
        edges = np.diff(np.concatenate([[0], same.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        runs += int(((ends - starts + 1) >= CLIP_RUN).sum())
    return runs


def prepare(data: np.ndarray, sr: int, *, target_sr: int, note_samples: int, min_seconds: float,
            normalize: str) -> Prepared:
    """Check and shape one file's audio into a note.

    data: float32[frames, channels] at `sr`. Returns float32[note_samples] at `target_sr`, mono,
    with the leading silence trimmed, cut (with a short fade) or zero-padded, and, when
    `normalize == "note"`, its loudest 400 ms at -20 dBFS RMS with the peak at most -1 dBFS.
    With `normalize == "set"` the level is left for one set-wide gain. Raises `Skip`.
    """
    import soxr

    if not np.isfinite(data).all():
        raise Skip("corrupt: NaN or infinite samples")
    peak = float(np.abs(data).max())
    if peak <= 10 ** (SILENT_PEAK_DB / 20):
        raise Skip(f"silent (peak {20 * np.log10(peak) if peak > 0 else -np.inf:.0f} dBFS)")
    runs = count_clip_runs(data)
    if runs >= CLIP_RUNS:
        raise Skip(f"clipped ({runs} flat runs at full scale); export it at a lower level")
    mono = data.mean(axis=1, dtype=np.float32)
    if sr != target_sr:
        mono = soxr.resample(mono, sr, target_sr, quality="HQ").astype(np.float32)
    a = np.abs(mono)
    mpeak = float(a.max())
    if mpeak <= 10 ** (SILENT_PEAK_DB / 20):
        raise Skip("silent after mixing to mono (the channels cancel)")
    onset = max(0, int(np.argmax(a >= mpeak * 10 ** (ONSET_DB / 20))) - int(PRE_ROLL * target_sr))
    mono = mono[onset:]
    above = np.flatnonzero(np.abs(mono) >= mpeak * 10 ** (SILENT_DB / 20))
    sound = (int(above[-1]) + 1) if above.size else 0
    if sound < min_seconds * target_sr:
        raise Skip(f"too short ({sound / target_sr * 1000:.0f} ms of sound, need {min_seconds * 1000:.0f} ms; "
                   "see --min-seconds)")
    out = np.zeros(note_samples, dtype=np.float32)
    seg = mono[:note_samples]
    out[:len(seg)] = seg
    fade = min(int(FADE_OUT * target_sr), note_samples)
    if sound > note_samples and fade:
        out[-fade:] *= 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, fade, dtype=np.float32))
    if normalize == "note":
        w = max(1, min(int(LOUDNESS_WINDOW * target_sr), len(out)))
        c = np.concatenate([[0.0], np.cumsum(out.astype(np.float64) ** 2)])
        loud = float(np.sqrt((c[w:] - c[:-w]).max() / w))
        gain = 10 ** (TARGET_LOUDNESS_DB / 20) / loud
        gain = min(gain, TARGET_PEAK / float(np.abs(out).max()))
        out *= np.float32(gain)
    elif normalize != "set":
        raise ValueError(f"normalize must be 'note' or 'set', not {normalize!r}")
    return Prepared(out, min(sound, note_samples) / target_sr, sr, data.shape[1])


# --- pitch and velocity from file names -------------------------------------------------------

_PC = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_NOTE_TOKEN = re.compile(r"(?<![A-Za-z0-9#])([A-Ga-g])(#|♯|s|b|♭)?(-?\d)(?![A-Za-z0-9#])")
_NOTE_TAIL = re.compile(r"([A-G])(#|b)?(-?\d)$")
_NSYNTH = re.compile(r"^.+-(\d{3})-(\d{3})$")
_VEL_TOKEN = re.compile(r"(?:v|vel|velocity)(\d{1,3})", re.IGNORECASE)
_DYNAMICS = {"ppp": 16, "pp": 33, "p": 49, "mp": 64, "mf": 80, "f": 96, "ff": 112, "fff": 127}
_SEP = re.compile(r"[\s_\-.,()\[\]]+")


def _note_key(letter: str, acc: str | None, octave: str) -> int | None:
    key = 12 * (int(octave) + 1) + _PC[letter.lower()] + {"#": 1, "♯": 1, "s": 1, "b": -1, "♭": -1}.get(acc or "", 0)
    return key if 0 <= key <= 127 else None


def parse_name(stem: str) -> tuple[int | None, int | None, str | None]:
    """(pitch, velocity, how) from a file name without extension; None where the name says nothing.

    Understands NSynth's `name-PPP-VVV`, note tokens (`C4`, `A#2`, `Bb3`, `Cs4`; C4 = 60), a bare
    MIDI number token (`60`) when it is the only number, velocity tokens (`v100`, `vel100`) and
    dynamics (`pp` .. `fff`). `how` says which rule gave the pitch.
    """
    m = _NSYNTH.match(stem)
    if m and int(m.group(1)) <= 127 and 1 <= int(m.group(2)) <= 127:
        return int(m.group(1)), int(m.group(2)), "nsynth name"
    tokens = [t for t in _SEP.split(stem) if t]
    pitch, how, velocity = None, None, None
    numbers = [t for t in tokens if t.isdigit()]
    nm = _NOTE_TOKEN.search(stem)  # on the whole stem: "C-1" would split into two tokens
    if nm:
        key = _note_key(*nm.groups())
        if key is not None:
            pitch, how = key, f"note name {nm.group(0)!r}"
            numbers = [t for t in numbers if t not in nm.group(0)]
    for t in tokens:
        vm = _VEL_TOKEN.fullmatch(t)
        if vm and 1 <= int(vm.group(1)) <= 127:
            velocity = int(vm.group(1))
        elif t.lower() in _DYNAMICS and t in (t.lower(), t.upper()):
            velocity = _DYNAMICS[t.lower()]
    if pitch is None and tokens:
        tm = _NOTE_TAIL.search(tokens[-1])
        if tm:
            key = _note_key(*tm.groups())
            if key is not None:
                pitch, how = key, f"note name {tm.group(0)!r}"
    if pitch is None and len(numbers) == 1 and len(numbers[0]) <= 3 and 0 <= int(numbers[0]) <= 127:
        pitch, how = int(numbers[0]), f"MIDI number {numbers[0]!r}"
    return pitch, velocity, how
