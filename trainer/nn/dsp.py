"""Export-safe DSP blocks: oscillator banks, filtered noise, inverse STFT, mel matrices.

Everything here is written with real-valued plain ops (matmul, sin/cos, reshape, pad, slicing), so
`torch.onnx.export` produces a graph with no complex tensors and onnxruntime matches torch to
float32 rounding. Shapes use B = batch, M = frames (control points - 1), H = hop in samples,
N = M * H samples, K = harmonics, Q = noise bands.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Correctly rounded float32 Hz of MIDI notes 0..127 (computed in float64, rounded once).
_MIDI_HZ = torch.tensor([440.0 * 2.0 ** ((k - 69) / 12.0) for k in range(128)], dtype=torch.float32)


def midi_note_hz(pitch: torch.Tensor) -> torch.Tensor:
    """float32 Hz of integer MIDI notes (int64[B], clamped to 0..127), read from a table.

    Why a table rather than pow(): torch and ONNX Runtime may round pow() differently by an ulp, and
    a partial's phase after N samples is 2*pi*f*N/sr, so one ulp of frequency (6e-8 relative) grows
    to ~3e-3 rad by the end of a 4-s note at 2 kHz. A lookup (ONNX Gather) is exact in both. (The
    partials' inharmonicity and detune still come from the network, whose float32 GEMMs round
    differently in the two runtimes; trainer/export.py's parity check allows for that drift.)
    """
    return _MIDI_HZ.to(pitch.device)[pitch.long().clamp(0, 127)]


def exp2_small(x: torch.Tensor) -> torch.Tensor:
    """2**x for small |x| (a detune in octaves, |x| <= 0.05) by its Taylor series to the 4th order.

    Same reason as `midi_note_hz`: plain multiply-adds round identically in torch and ONNX Runtime,
    pow() may not. Relative error (x ln 2)^5 / 120 < 4e-10 for |x| <= 0.05.
    """
    u = x * math.log(2.0)
    return 1.0 + u * (1.0 + u * (0.5 + u * (1.0 / 6.0 + u * (1.0 / 24.0))))


def _frac(x: torch.Tensor) -> torch.Tensor:
    return x - torch.floor(x)


def harmonic_bank(amps: torch.Tensor, freqs: torch.Tensor, sample_rate: int, hop: int) -> torch.Tensor:
    """Sum of K fixed-frequency sinusoids with amplitudes linearly interpolated between frames.

    amps: float32[B, M+1, K], linear amplitude at times m*hop (m = 0..M); freqs: float32[B, K] in Hz,
    constant over the note (callers zero the amplitude of partials at or above Nyquist).
    Returns float32[B, M*hop].

    Why not a phase accumulator: a [B, K, N] oscillator tensor is 88 x 64 x 96000 floats for a
    keyboard batch. With constant frequencies, sin(w(mH + n)) = sin(wmH)cos(wn) + cos(wmH)sin(wn),
    so each hop segment is a matmul of per-frame coefficients [B, M, 4K] with a per-note basis
    [B, 4K, H] (cos/sin times the two interpolation ramps): O(B*M*K) + O(B*K*H) memory.
    Phases are reduced modulo one cycle in two steps (per-hop increment, then times m) so float32
    keeps about 1e-5 cycle accuracy over long notes.
    """
    B, M1, K = amps.shape
    M = M1 - 1
    n = torch.arange(hop, device=amps.device, dtype=amps.dtype)
    ramp1 = n / hop
    ramp0 = 1.0 - ramp1
    cyc = freqs / sample_rate                                   # cycles per sample [B, K]
    w = 2.0 * math.pi * cyc
    wn = w.unsqueeze(-1) * n                                    # [B, K, H], |wn| < pi * hop
    c, s = torch.cos(wn), torch.sin(wn)
    basis = torch.cat([c * ramp0, s * ramp0, c * ramp1, s * ramp1], dim=1)   # [B, 4K, H]
    per_hop = _frac(cyc * hop)                                  # [B, K]
    m = torch.arange(M, device=amps.device, dtype=amps.dtype)
    theta = 2.0 * math.pi * _frac(per_hop.unsqueeze(1) * m.unsqueeze(-1))     # [B, M, K]
    st, ct = torch.sin(theta), torch.cos(theta)
    a0, a1 = amps[:, :-1], amps[:, 1:]
    coef = torch.cat([a0 * st, a0 * ct, a1 * st, a1 * ct], dim=-1)          # [B, M, 4K]
    return torch.bmm(coef, basis).reshape(B, M * hop)


def make_noise_bank(sample_rate: int, length: int, bands: int, seed: int = 1234,
                    fmin: float = 40.0) -> np.ndarray:
    """float32[bands, length]: one white-noise sequence split into mel-spaced bands (sum = the noise).

    Deterministic for (sample_rate, length, bands, seed), so it is rebuilt rather than stored in
    checkpoints. Each band has unit RMS so the generator's band gains are band levels.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(length)
    X = np.fft.rfft(x)
    f = np.fft.rfftfreq(length, 1.0 / sample_rate)
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    edges_mel = np.linspace(mel(fmin), mel(sample_rate / 2.0), bands + 1)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    edges[0] = 0.0
    out = np.zeros((bands, length), dtype=np.float64)
    for q in range(bands):
        mask = (f >= edges[q]) & (f < edges[q + 1] if q < bands - 1 else f <= sample_rate / 2.0 + 1)
        y = np.fft.irfft(X * mask, n=length)
        out[q] = y / max(np.sqrt(np.mean(y ** 2)), 1e-9)
    return out.astype(np.float32)


def noise_bank_synth(amps: torch.Tensor, bank: torch.Tensor, hop: int) -> torch.Tensor:
    """Filtered noise: band gains linearly interpolated between frames times a looped band bank.

    amps: float32[B, M+1, Q] linear band gains at times m*hop; bank: float32[Q, L] with L % hop == 0
    (looped when the note is longer than L). Returns float32[B, M*hop].
    The note is cut into repeats of the bank period (Mp = L/hop frames) and rendered as one batched
    matmul over the Mp bank frames ([Mp, B*r, 2Q] x [Mp, 2Q, H]); no [B, Q, N] or [M, Q, H] tensor.
    """
    B, M1, Q = amps.shape
    M = M1 - 1
    L = bank.shape[1]
    Mp = L // hop
    r = -(-M // Mp)
    n = torch.arange(hop, device=amps.device, dtype=amps.dtype)
    ramp1 = n / hop
    frames = bank.reshape(Q, Mp, hop).permute(1, 0, 2)                # [Mp, Q, H]
    basis = torch.cat([frames * (1.0 - ramp1), frames * ramp1], dim=1)   # [Mp, 2Q, H]
    coef = torch.cat([amps[:, :-1], amps[:, 1:]], dim=-1)            # [B, M, 2Q]
    coef = torch.nn.functional.pad(coef, (0, 0, 0, r * Mp - M))      # [B, r*Mp, 2Q]
    coef = coef.reshape(B * r, Mp, 2 * Q).transpose(0, 1)            # [Mp, B*r, 2Q]
    y = torch.bmm(coef, basis)                                       # [Mp, B*r, H]
    return y.transpose(0, 1).reshape(B, r * Mp * hop)[:, :M * hop]


def linear_upsample_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """float32[n_out, n_in]: linear interpolation from n_in evenly spaced points to n_out (ends aligned)."""
    pos = torch.linspace(0.0, n_in - 1.0, n_out, dtype=torch.float64)
    lo = pos.floor().clamp(max=n_in - 2 if n_in > 1 else 0).long()
    fr = pos - lo
    W = torch.zeros(n_out, n_in, dtype=torch.float64)
    W[torch.arange(n_out), lo] += 1.0 - fr
    if n_in > 1:
        W[torch.arange(n_out), lo + 1] += fr
    return W.float()


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 30.0) -> torch.Tensor:
    """float32[n_mels, n_fft//2+1]: triangular mel filters (Slaney-style spacing, peak 1)."""
    def mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    f = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    pts = hz(np.linspace(mel(fmin), mel(sample_rate / 2.0), n_mels + 2))
    fb = np.zeros((n_mels, len(f)))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        up = (f - lo) / max(c - lo, 1e-9)
        down = (hi - f) / max(hi - c, 1e-9)
        fb[i] = np.maximum(0.0, np.minimum(up, down))
        if fb[i].max() == 0.0:  # narrower than one bin: take the nearest bin
            fb[i, np.argmin(np.abs(f - c))] = 1.0
    return torch.from_numpy(fb).float()


def mel_to_linear_matrix(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 30.0) -> torch.Tensor:
    """float32[n_fft//2+1, n_mels]: interpolate values on mel-spaced bin centres to linear bins."""
    def mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    centres = np.linspace(mel(fmin), mel(sample_rate / 2.0), n_mels)
    f_mel = mel(np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1))
    pos = np.interp(f_mel, centres, np.arange(n_mels))
    lo = np.clip(np.floor(pos).astype(int), 0, max(n_mels - 2, 0))
    fr = pos - lo
    W = np.zeros((len(f_mel), n_mels))
    W[np.arange(len(f_mel)), lo] += 1.0 - fr
    if n_mels > 1:
        W[np.arange(len(f_mel)), lo + 1] += fr
    return torch.from_numpy(W).float()


class InverseSTFT(torch.nn.Module):
    """iSTFT with a fixed real basis (matmul) and overlap-add by slicing; export-safe.

    forward(real, imag: float32[B, T, F]) -> float32[B, T*hop], F = n_fft//2+1, periodic Hann,
    n_fft = R*hop with integer R. Frame t is centred at sample t*hop (the torch.stft(center=True)
    convention), so `InverseSTFT(n_fft, hop, T)` inverts `torch.stft(x, n_fft, hop, center=True)`
    of an N = T*hop signal (its first T frames) exactly, edges included (the window-sum
    normalisation for T frames is precomputed).
    """

    def __init__(self, n_fft: int, hop: int, frames: int) -> None:
        super().__init__()
        if n_fft % hop:
            raise ValueError("n_fft must be a multiple of hop")
        self.n_fft, self.hop, self.R, self.T = n_fft, hop, n_fft // hop, frames
        F_ = n_fft // 2 + 1
        k = np.arange(F_)[:, None]
        n = np.arange(n_fft)[None, :]
        ang = 2.0 * np.pi * ((k * n) % n_fft) / n_fft           # exact integer phase reduction
        scale = np.full((F_, 1), 2.0)
        scale[0] = 1.0
        if n_fft % 2 == 0:
            scale[-1] = 1.0
        win = np.hanning(n_fft + 1)[:-1]
        cos_b = scale * np.cos(ang) / n_fft * win[None, :]
        sin_b = -scale * np.sin(ang) / n_fft * win[None, :]
        wsum = np.zeros((frames + self.R - 1) * hop)
        for t in range(frames):
            wsum[t * hop:t * hop + n_fft] += win ** 2
        half = n_fft // 2
        norm = wsum[half:half + frames * hop]
        self.register_buffer("basis", torch.from_numpy(np.concatenate([cos_b, sin_b], 0)).float(), persistent=False)
        self.register_buffer("inv_norm", torch.from_numpy(1.0 / np.maximum(norm, 1e-3)).float(), persistent=False)

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        B, T, _ = real.shape
        frames = torch.matmul(torch.cat([real, imag], dim=-1), self.basis)   # [B, T, n_fft]
        frames = frames.reshape(B, T, self.R, self.hop)
        R = self.R
        # block j of the uncentred output receives piece r of frame j - r
        out = F.pad(frames[:, :, 0], (0, 0, 0, R - 1))
        for r in range(1, R):
            out = out + F.pad(frames[:, :, r], (0, 0, r, R - 1 - r))
        y = out.reshape(B, (T + R - 1) * self.hop)
        half = self.n_fft // 2
        return y[:, half:half + T * self.hop] * self.inv_norm
