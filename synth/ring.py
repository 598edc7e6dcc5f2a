"""Ringing notes (issue 19): continue a generated note past its training data's note-off.

A generated note carries the note-off its training data had (the shipped piano's: 3.0 s), so a held
key fell silent there. `analyse` fits the note's late decay with damped partials,
A·e^(−αt)·cos(ωt + φ), from two Hann windows ending at the crossfade start S0; `span` synthesises
the continuation on a fixed grid of 1,024-sample chunks aligned to the note's clock, each chunk a
pure function of its index (closed-form start values times one precomputed [partials, 1024] table),
so the output never depends on when or in what pieces it is made.

A ringing note is its generated head up to the seam S0 + XFADE_S (the last XFADE_S a raised-cosine
crossfade into the continuation, `head`), then the continuation in fixed segments of
SEGMENT_SECONDS (`segment`), until it is FLOOR_DB under the note's peak. The worker caches the
segments as note-cache entries keyed (note key, segment index); the engine chains a voice from one
entry into the next (docs/decisions-engine.md, "How notes ring").

The analysis reads the note before S0 only, so a head (from the cache or the disk) gives the same
table as the whole note.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

CHUNK = 1024               # samples per synthesis chunk
LEAD_S = 0.15              # the crossfade starts this long before the data's note-off ...
XFADE_S = 0.10             # ... and lasts this long
WINDOW_S = 0.5             # analysis windows: this long,
SPACING_S = 0.4            # ... this far apart, the later one ending at S0
HOP = 16                   # samples between the two FFTs that give each peak's frequency
PEAK_FLOOR_DB = -100.0     # peaks down to this re the strongest
MAX_PARTIALS = 600
W_KEPT = 8                 # tables whose synthesis matrix is kept (float32[2 x partials, CHUNK], <= 4.9 MB)
MIN_DECAY_DB_S = 2.0       # every partial falls at least this fast (every tail ends) ...
MAX_DECAY_DB_S = 300.0     # ... and at most this fast
DECAY_PULL = 0.0           # each decay pulled this far towards the energy-weighted mean (0: none; decisions-engine 2026-12-06)
FLOOR_DB = -80.0           # a tail ends this far under the note's peak
MAX_TAIL_S = 40.0
SEGMENT_SECONDS = 4.0      # at most; and at most a cache slot (a segment takes a whole slot)
PRUNE_DB = -130.0          # a span leaves out the partials this far under the note's peak at its start
END_FADE_S = 0.005         # the last segment fades out over its last few ms
_DB_NP = 20.0 / math.log(10.0)   # dB per neper


@dataclass
class PartialTable:
    """Damped partials of one note: sample k >= s0 of the continuation is
    Σ amp·e^(−alpha·(k − s0))·cos(omega·(k − s0) + phase). Frequencies in radians per sample."""

    omega: np.ndarray
    alpha: np.ndarray
    amp: np.ndarray
    phase: np.ndarray
    rate: int
    s0: int
    peak: float
    _w: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.omega)

    def w(self, n: int = CHUNK) -> np.ndarray:
        """[Re W; Im W] (float32[2P, n]) of W[p, m] = e^((−α_p + iω_p)·m), m < n: made once per
        table, and kept for the W_KEPT tables used last (the others make it again)."""
        w = self._w.get(n)
        if w is None:
            w = self._w[n] = _w_rows(self.alpha, self.omega, n)
        _W_LRU[id(self)] = self
        _W_LRU.move_to_end(id(self))
        while len(_W_LRU) > W_KEPT:
            _W_LRU.popitem(last=False)[1]._w.clear()
        return w


_W_LRU: OrderedDict = OrderedDict()


def _w_rows(alpha: np.ndarray, omega: np.ndarray, n: int) -> np.ndarray:
    """`PartialTable.w` of the partials (alpha, omega): each row from its own partial only, so the
    table of a subset is the same rows as the whole table's."""
    s = (-alpha + 1j * omega)[:, None]
    if n % 32 == 0:
        # e^(s·(32q + r)) = e^(32sq)·e^(sr): 2 x 32 exponentials a partial instead of n (the
        # product in complex64: the table is float32 anyway).
        hi = np.exp(s * (32.0 * np.arange(n // 32))).astype(np.complex64)
        lo = np.exp(s * np.arange(32.0)).astype(np.complex64)
        c = (hi[:, :, None] * lo[:, None, :]).reshape(len(s), n)
    else:
        c = np.exp(s * np.arange(n))
    w = np.empty((2 * len(s), n), np.float32)
    w[:len(s)], w[len(s):] = c.real, c.imag
    return w


def ring_off(preset) -> float | None:
    """Seconds into a generated note where its training data's key went up, for presets whose notes
    ring on (pitched one-shots trained with a note-off); None for the others."""
    if preset.is_drums or preset.sustain_mode != "oneshot":
        return None
    data = (preset.training or {}).get("data") or {}
    secs, rel = data.get("source seconds"), data.get("source release")
    if not isinstance(secs, (int, float)) or not isinstance(rel, (int, float)):
        return None
    off = float(secs) - float(rel)
    need = LEAD_S + WINDOW_S + SPACING_S + 0.05
    if off < need or off > preset.note_samples / preset.sample_rate:
        return None
    return off


def _peak_value(m: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Quadratic interpolation of log magnitudes around bins `k`: the peaks' heights."""
    a, b, c = (np.log(np.maximum(m[k + d], 1e-300)) for d in (-1, 0, 1))
    den = a - 2 * b + c
    p = np.clip(np.where(den < 0, 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0), -1.0, 1.0)
    return np.exp(b - 0.25 * (a - c) * p)


def analyse(note: np.ndarray, rate: int, off_s: float) -> PartialTable:
    """The damped partials that continue `note` (float32[N] at `rate` Hz) from S0 = off_s − LEAD_S.

    Peaks of the later window down to PEAK_FLOOR_DB re the strongest (each the largest within its
    main lobe; the MAX_PARTIALS strongest), each one's frequency from the phase advance over HOP
    samples, its decay from the level ratio of the two windows (clamped, then pulled DECAY_PULL of
    the way to the energy-weighted mean), amplitude and phase referenced to S0."""
    s0 = int(round((off_s - LEAD_S) * rate))
    n = int(round(WINDOW_S * rate))
    d = int(round(SPACING_S * rate))
    if s0 - n - d - HOP < 0 or s0 > len(note):
        raise ValueError("the note is too short to analyse before its note-off")
    a = s0 - n - d - HOP                             # only the windows are read in float64
    x = np.asarray(note[a:s0], np.float64)
    win = np.hanning(n)
    nfft = 1 << int(math.ceil(math.log2(n)))
    x2 = np.fft.rfft(win * x[s0 - a - n:], nfft)
    x2h = np.fft.rfft(win * x[s0 - a - n - HOP:s0 - a - HOP], nfft)
    x1 = np.fft.rfft(win * x[HOP:HOP + n], nfft)
    m2 = np.abs(x2)
    lobe = int(math.ceil(3 * nfft / n))
    padded = np.concatenate([np.zeros(lobe), m2, np.zeros(lobe)])
    local = padded[:len(m2)].copy()                  # the largest within ±lobe bins, shift by shift
    for i in range(1, 2 * lobe + 1):
        np.maximum(local, padded[i:i + len(m2)], out=local)
    top = m2.max()
    kmin = max(2, int(20.0 / rate * nfft))
    kmax = min(len(m2) - 2, int(0.45 * nfft))
    ks = np.arange(kmin, kmax)
    ok = (m2[ks] >= local[ks]) & (m2[ks] > top * 10.0 ** (PEAK_FLOOR_DB / 20.0)) & (m2[ks] > 0)
    ks = ks[ok]
    if len(ks) > MAX_PARTIALS:
        ks = np.sort(ks[np.argsort(m2[ks])[::-1][:MAX_PARTIALS]])
    wk = 2 * np.pi * ks / nfft
    dev = np.angle(x2[ks]) - np.angle(x2h[ks]) - wk * HOP
    dev = (dev + np.pi) % (2 * np.pi) - np.pi
    omega = wk + dev / HOP
    gain = 2.0 / win.sum()
    a2 = _peak_value(m2, ks) * gain
    a1 = _peak_value(np.abs(x1), ks) * gain
    alpha = np.log(np.maximum(a1, 1e-300) / np.maximum(a2, 1e-300)) / d
    lo, hi = MIN_DECAY_DB_S / _DB_NP / rate, MAX_DECAY_DB_S / _DB_NP / rate
    alpha = np.clip(alpha, lo, hi)
    if len(alpha) and DECAY_PULL:
        mean = float(np.sum(alpha * a2 ** 2) / max(np.sum(a2 ** 2), 1e-300))
        alpha = np.clip(alpha + DECAY_PULL * (mean - alpha), lo, hi)
    centre = (n - 1) / 2.0
    theta_c = np.angle(x2[ks]) + wk * centre        # the phase at the window's centre
    lag = s0 - (s0 - n + centre)                     # samples from the centre to S0
    amp = a2 * np.exp(-alpha * lag)
    phase = np.mod(theta_c + omega * lag, 2 * np.pi)
    peak = float(np.max(np.abs(note))) if len(note) else 0.0   # exact in float32 too
    return PartialTable(omega, alpha, amp, phase, int(rate), s0, peak)


def _z(table: PartialTable, js: np.ndarray, n: int) -> np.ndarray:
    """[Re z_j, −Im z_j] (float32[len(js), 2P]) for consecutive chunk indices js: z_j =
    A·e^(iφ)·e^((−α + iω)·n·j), in closed form (e^(s·n·(j0 + 16q + r)) as a product of three
    exponentials: 2 x 16 a partial instead of one per chunk)."""
    s = (-table.alpha + 1j * table.omega)[None, :] * float(n)
    m = len(js)
    q = -(-m // 16)
    hi = np.exp(s * (float(js[0]) + 16.0 * np.arange(q))[:, None])         # [q, P]
    lo = np.exp(s * np.arange(16.0)[:, None])                                # [16, P]
    e = (hi[:, None, :] * lo[None, :, :]).reshape(q * 16, -1)[:m]
    z = (table.amp * np.exp(1j * table.phase))[None, :] * e
    return np.concatenate([z.real, -z.imag], axis=1).astype(np.float32)


def chunk(table: PartialTable, j: int, n: int = CHUNK) -> np.ndarray:
    """Samples [s0 + j·n, s0 + (j + 1)·n) of the continuation, float64[n]: Re(z_j · W), computed as
    [Re z_j, −Im z_j] · [Re W; Im W] in float32 (a chunk never depends on the ones before it)."""
    if table.size == 0:
        return np.zeros(n)
    return (_z(table, np.array([j]), n) @ table.w(n))[0].astype(np.float64)


def span(table: PartialTable, a: int, b: int) -> np.ndarray:
    """Samples [s0 + a, s0 + b) of the continuation (0 <= a <= b), float64, made of whole chunks
    (`chunk`'s values, every chunk's z_j from its own index), without the partials already
    PRUNE_DB under the note's peak at sample a (inaudible: a tail ends at FLOOR_DB)."""
    if b <= a:
        return np.zeros(0)
    j0, j1 = a // CHUNK, -(-b // CHUNK)
    live = table.amp * np.exp(-table.alpha * (j0 * CHUNK)) >= table.peak * 10.0 ** (PRUNE_DB / 20.0)
    if not live.any():
        return np.zeros(b - a)
    z = _z(table, np.arange(j0, j1), CHUNK)
    if live.all():
        w = table.w(CHUNK)
    else:
        both = np.concatenate([live, live])
        z = z[:, both]
        # A table not made yet (a note's head, say) is made for the live partials alone: the same rows.
        w = table.w(CHUNK)[both] if CHUNK in table._w else _w_rows(table.alpha[live], table.omega[live], CHUNK)
    out = (z @ w).reshape(-1).astype(np.float64)
    return out[a - j0 * CHUNK:b - j0 * CHUNK]


def tail_seconds(table: PartialTable, floor_db: float = FLOOR_DB) -> float:
    """Seconds after S0 until the continuation's envelope (Σ A·e^(−αt), an upper bound of the sum)
    is `floor_db` under the note's peak (at most MAX_TAIL_S)."""
    if table.size == 0 or table.peak <= 0:
        return 0.0
    floor = table.peak * 10.0 ** (floor_db / 20.0)

    def first_below(t: np.ndarray) -> int | None:
        env = (table.amp[None, :] * np.exp(-np.outer(t * table.rate, table.alpha))).sum(axis=1)
        below = np.nonzero(env < floor)[0]
        return int(below[0]) if len(below) else None

    coarse = np.arange(0.0, MAX_TAIL_S + 0.5, 0.5)     # the envelope only falls: bracket, then refine
    i = first_below(coarse)
    if i is None:
        return MAX_TAIL_S
    if i == 0:
        return 0.0
    fine = np.arange(coarse[i - 1], coarse[i] + 0.005, 0.01)
    return float(min(MAX_TAIL_S, fine[first_below(fine)]))


@dataclass
class RingPlan:
    """How one note rings: its table, the seam (note samples where the head ends), the
    continuation's segments (each `seg_len` long, `n_segs` of them, `tail` samples in all)."""

    table: PartialTable
    seam: int
    seg_len: int
    n_segs: int
    tail: int


def plan(note: np.ndarray, rate: int, off_s: float, max_seg: int | None = None) -> RingPlan:
    """Analyse `note` (whole, or a head already made) and lay out its continuation's segments
    (`max_seg`: the longest segment a cache slot holds)."""
    return layout(analyse(note, rate, off_s), max_seg)


def layout(table: PartialTable, max_seg: int | None = None, tail: int | None = None) -> RingPlan:
    """The plan of a note whose partials are `table`: the seam, and the continuation cut into
    segments. `tail`: the continuation's length in samples when known (stored beside the note in
    the disk cache, with the table: then nothing is analysed again)."""
    x = int(round(XFADE_S * table.rate))
    seam = table.s0 + x
    if tail is None:
        tail = max(int(round(0.05 * table.rate)), int(math.ceil(tail_seconds(table) * table.rate)) - x)
    seg = int(round(SEGMENT_SECONDS * table.rate))
    if max_seg is not None:
        seg = max(1, min(seg, max_seg))
    return RingPlan(table, seam, seg, -(-tail // seg), tail)


def head(note: np.ndarray, p: RingPlan) -> np.ndarray:
    """The note up to the seam, its last XFADE_S crossfaded (raised cosine) into the continuation.
    A note no longer than the seam is a head already and comes back as it is."""
    if len(note) <= p.seam:
        return np.asarray(note, np.float32)
    s0 = p.table.s0
    x = p.seam - s0
    out = np.array(note[:p.seam], np.float32)
    c = 0.5 - 0.5 * np.cos(np.pi * (np.arange(x) + 0.5) / x)
    out[s0:] = out[s0:] * (1.0 - c) + span(p.table, 0, x) * c
    return out


def segment(p: RingPlan, k: int) -> np.ndarray:
    """Segment k of the continuation, float32: note samples [seam + k·seg_len, ...), the last one
    shorter and faded out over END_FADE_S."""
    a = p.seam - p.table.s0 + k * p.seg_len
    b = p.seam - p.table.s0 + min(p.tail, (k + 1) * p.seg_len)
    y = span(p.table, a, b).astype(np.float32)
    if k == p.n_segs - 1:
        m = min(len(y), max(1, int(END_FADE_S * p.table.rate)))
        y[len(y) - m:] *= np.linspace(1.0, 0.0, m, dtype=np.float32)
    return y


def continuation(note: np.ndarray, rate: int, off_s: float, max_samples: int | None = None) -> np.ndarray:
    """The whole ringing note, head and continuation, in one array (for baking): at most
    `max_samples` long."""
    p = plan(note, rate, off_s)
    parts = [head(note, p)] + [segment(p, k) for k in range(p.n_segs)]
    y = np.concatenate(parts)
    return y if max_samples is None else y[:max_samples]
