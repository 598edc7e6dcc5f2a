"""The trainer's one numpy STFT: evaluation, the export's parity check, TensorBoard pictures.

Periodic Hann window (as `torch.hann_window`, librosa and scipy.signal use), frame t centred on
sample t*hop with the signal zero-padded by n_fft/2 at both ends (torch.stft(center=True) framing,
zero padding). numpy only, so `trainer eval` needs no torch and no scipy. The computation runs in
the input's precision (float32 in, complex64 out).
"""

from __future__ import annotations

import numpy as np


def hann(n: int, dtype=np.float64) -> np.ndarray:
    """Periodic Hann window float[n] (w[0] = 0, w[n // 2] = 1); `np.hanning(n)` is the symmetric one."""
    return np.hanning(n + 1)[:-1].astype(dtype)


def stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Complex STFT of float[B, N] -> complex[B, T, n_fft // 2 + 1], T = 1 + N // hop (N >= n_fft / 2).

    A signal shorter than that is zero-extended to one frame.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    x = np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)))
    if x.shape[1] < n_fft:
        x = np.pad(x, ((0, 0), (0, n_fft - x.shape[1])))
    starts = np.arange(0, x.shape[1] - n_fft + 1, hop)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=1)[:, starts]     # [B, T, n_fft]
    return np.fft.rfft(frames * hann(n_fft, x.dtype), axis=-1)


def power(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT|² of float[B, N] -> float[B, T, n_fft // 2 + 1], in the input's precision."""
    s = stft(x, n_fft, hop)
    return s.real ** 2 + s.imag ** 2


def magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| of float[B, N] -> float[B, T, n_fft // 2 + 1]."""
    return np.abs(stft(x, n_fft, hop))
