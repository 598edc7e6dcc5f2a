"""DDSP-style harmonic-plus-noise generator, multi-resolution spectral discriminator, encoder.

The generator maps (z, pitch, velocity) through an MLP to a compact description of a note, then
renders it with export-safe oscillator and noise banks (`trainer.nn.dsp`):

- partials f_k = k * f0 * sqrt(1 + B k^2) * 2^(detune/1200) (B: learned inharmonicity), zeroed from
  0.45 x Nyquist up; per-partial level, two-stage exponential decay, attack ramp, release after the
  data's note-off, and a smooth log-gain correction grid over (warped time, log partial index);
- filtered noise from a fixed band bank with per-band level, decay (one or two stages) and a
  correction grid, per band or on `noise_ctrl_bands` coarser bands interpolated across them;
- options a recipe turns on: `attack_audio_rate` (the attack ramp at audio rate, not on the control
  grid), `end_stage` (after a learned end time, at least `end_min_seconds`, the note falls at
  1500 dB/s, as a sampler voice stops where its sample ends), `noise_release_tied` (the noise's
  release after the note-off is the mean of the partials' release rates: one damper).

Everything that varies with time is a [B, M+1, K] control grid at hop resolution; audio-rate work
is matmuls. Why each option exists, with measurements: docs/decisions-trainer.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from trainer.nn.dsp import exp2_small, harmonic_bank, make_noise_bank, midi_note_hz, noise_bank_synth
from trainer.nn.layers import Conditioning, LogMel, ProjectionHead, run_body

_DB = math.log(10.0) / 20.0   # nats per dB


def _interp_matrix(positions: np.ndarray, n_in: int) -> torch.Tensor:
    """float32[len(positions), n_in] linear interpolation at fractional indices `positions`."""
    pos = np.clip(positions, 0.0, n_in - 1.0)
    lo = np.clip(np.floor(pos).astype(int), 0, max(n_in - 2, 0))
    fr = pos - lo
    W = np.zeros((len(pos), n_in))
    W[np.arange(len(pos)), lo] += 1.0 - fr
    if n_in > 1:
        W[np.arange(len(pos)), lo + 1] += fr
    return torch.from_numpy(W).float()


def _two_stage(mix: torch.Tensor, fast: torch.Tensor, slow: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log(mix e^(-fast t) + (1 - mix) e^(-slow t)), computed stably: mix, fast, slow [B, C] (rates in
    nats/s), t [1, T, 1] seconds -> [B, T, C] log-gain (a piano's double decay; a drum's hit and ring)."""
    a = torch.log(mix + 1e-6).unsqueeze(1) - fast.unsqueeze(1) * t
    b = torch.log(1.0 - mix + 1e-6).unsqueeze(1) - slow.unsqueeze(1) * t
    mx = torch.maximum(a, b)
    return mx + torch.log(torch.exp(a - mx) + torch.exp(b - mx))


class DDSPGenerator(nn.Module):
    """forward(z: float32[B, Z], pitch: int64[B], velocity: float32[B] 0..1) -> float32[B, N] in [-1, 1].

    N = note_samples at sample_rate. `hold_seconds`: when the data set's notes were released (note-off
    time, seconds); None means no release stage (the correction grid then shapes the ending).
    `key_hz`: {MIDI key: Hz} where a key's partials start instead of the key's note frequency (drum
    kits: each key's measured dominant peak, `trainer.fit.drum_key_hz`).
    """

    def __init__(self, sample_rate: int, note_samples: int, latent_size: int = 16, kind: str = "pitched",
                 n_harmonics: int = 96, n_noise_bands: int = 16, hop: int = 240, hidden: int = 256,
                 layers: int = 3, ctrl_frames: int = 48, ctrl_bands: int = 8, hold_seconds: float | None = None,
                 noise_seconds: float = 0.5, noise_ctrl_bands: int = 0, noise_decay_stages: int = 1,
                 key_hz: dict | None = None, attack_audio_rate: bool = False, end_stage: bool = False,
                 end_min_seconds: float = 0.0, noise_release_tied: bool = True, **_unused) -> None:
        super().__init__()
        self.sample_rate, self.note_samples, self.latent_size = int(sample_rate), int(note_samples), int(latent_size)
        self.K, self.Q, self.hop = int(n_harmonics), int(n_noise_bands), int(hop)
        self.M = -(-self.note_samples // self.hop)
        self.Mc, self.Kc = int(ctrl_frames), int(ctrl_bands)
        self.hold = None if hold_seconds is None else float(hold_seconds)
        if int(noise_decay_stages) not in (1, 2):
            from synth.errors import UserError
            raise UserError(f"config model.ddsp.noise_decay_stages: must be 1 or 2, not {noise_decay_stages!r}; "
                            "fix the overlay")
        self.Qc = min(int(noise_ctrl_bands), self.Q) if noise_ctrl_bands else self.Q   # the noise grid's band axis
        self.noise_stages = int(noise_decay_stages)
        self.attack_audio_rate, self.end_stage = bool(attack_audio_rate), bool(end_stage)
        self.end_min = float(end_min_seconds)
        self.noise_release_tied = bool(noise_release_tied)
        self.cond = Conditioning(hidden, kind)
        mlp: list[nn.Module] = []
        d_in = latent_size + hidden
        for _ in range(layers):
            mlp += [nn.Linear(d_in, hidden), nn.LeakyReLU(0.2)]
            d_in = hidden
        self.mlp = nn.Sequential(*mlp)
        K, Q, Mc, Kc, Qc = self.K, self.Q, self.Mc, self.Kc, self.Qc
        n_decay = {"n_decay": Q} if self.noise_stages == 1 else {"n_fast": Q, "n_slow": Q, "n_mix": Q}
        self.sizes = {"h_level": K, "h_fast": K, "h_slow": K, "h_mix": K, "h_release": Kc, "h_grid": Mc * Kc,
                      "n_level": Q, **n_decay, **({} if self.noise_release_tied else {"n_release": 1}),
                      "n_grid": Mc * Qc,
                      "attack": 1, "inharm": 1, "detune": 1, **({"end": 1} if self.end_stage else {})}
        self.head = nn.Linear(hidden, sum(self.sizes.values()))
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            b = self._split(self.head.bias.unsqueeze(0))
            k = torch.arange(1, K + 1, dtype=torch.float32)
            b["h_level"][:] = math.log(0.05) - 1.0 * torch.log(k)      # about 1/k spectrum, -26 dB fundamental
            b["n_level"][:] = math.log(0.003 * math.sqrt(16.0 / Q))   # the same total noise for any Q

        t = np.arange(self.M + 1) * self.hop / self.sample_rate
        dur = self.M * self.hop / self.sample_rate
        self.register_buffer("t", torch.from_numpy(t).float(), persistent=False)
        # control grid on a sqrt-warped time axis: dense near the attack, sparse in the tail
        self.register_buffer("Wt", _interp_matrix(np.sqrt(t / dur) * (Mc - 1), Mc), persistent=False)
        # and on a log partial index axis
        logk = np.log(np.arange(1, K + 1)) / max(np.log(K), 1e-9) * (Kc - 1)
        self.register_buffer("Wk", _interp_matrix(logk, Kc), persistent=False)
        # the noise grid's band axis: identity when it is per band
        self.register_buffer("Wq", _interp_matrix(np.linspace(0.0, Qc - 1.0, Q), Qc), persistent=False)
        fade = np.minimum(1.0, (self.note_samples - 1 - np.arange(self.note_samples)) / (0.005 * self.sample_rate))
        self.register_buffer("fade", torch.from_numpy(np.clip(fade, 0.0, 1.0)).float(), persistent=False)
        if self.attack_audio_rate:
            self.register_buffer("t_audio", torch.arange(self.note_samples, dtype=torch.float32) / self.sample_rate,
                                 persistent=False)
        self.dur = dur
        L = max(self.hop, int(round(noise_seconds * self.sample_rate / self.hop)) * self.hop)
        self.register_buffer("noise", torch.from_numpy(make_noise_bank(self.sample_rate, L, Q)), persistent=False)
        self.register_buffer("k", torch.arange(1, K + 1, dtype=torch.float32), persistent=False)
        # f0 per MIDI key: the note's frequency, or for a drum kit's measured keys their dominant peak
        table = midi_note_hz(torch.arange(128))
        for key, hz in (key_hz or {}).items():
            if 0 <= int(key) < 128 and 20.0 <= float(hz) < 0.5 * self.sample_rate:
                table[int(key)] = float(hz)
        self.register_buffer("key_hz", table, persistent=False)

    def _split(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, n in self.sizes.items():
            out[name] = y[:, i:i + n]
            i += n
        return out

    def controls(self, z: torch.Tensor, pitch: torch.Tensor, velocity: torch.Tensor) -> dict[str, torch.Tensor]:
        """The interpretable note description (partial frequencies in Hz, amplitude grids)."""
        h = self.mlp(torch.cat([z, self.cond(pitch, velocity)], dim=-1))
        p = self._split(self.head(h))
        B = z.shape[0]
        t = self.t.view(1, -1, 1)                                                # [1, M+1, 1] seconds
        f0 = self.key_hz[pitch.long().clamp(0, 127)].unsqueeze(-1)              # [B, 1] (a Gather: exact in ORT)
        inharm = torch.pow(10.0, -5.0 + 2.5 * torch.sigmoid(p["inharm"]))        # B in [1e-5, 3e-3]
        detune = exp2_small(10.0 * torch.tanh(p["detune"]) / 1200.0)            # +-10 cents
        k = self.k.unsqueeze(0)
        freqs = k * f0 * torch.sqrt(1.0 + inharm * k * k) * detune               # [B, K]
        nyq = 0.5 * self.sample_rate
        mask = torch.clamp((0.9 * nyq - freqs) / (0.1 * nyq), 0.0, 1.0)

        attack = 0.0005 + 0.03 * torch.sigmoid(p["attack"] - 2.0)                # seconds [B, 1]
        # on the control grid the ramp lasts at least one hop (docs/decisions-trainer.md, 2026-12-03)
        att = 1.0 if self.attack_audio_rate else torch.clamp(t / attack.unsqueeze(1), max=1.0)   # [B, M+1, 1]
        if self.hold is not None:
            after = torch.relu(t - self.hold)
            rel_hc = (20.0 + 300.0 * torch.sigmoid(p["h_release"])) * _DB         # nats/s [B, Kc]
            rel_h = torch.matmul(rel_hc, self.Wk.t()).unsqueeze(1)                # [B, 1, K]
            if self.noise_release_tied:   # one damper: the noise falls as the partials do, on average
                rel_n = rel_hc.mean(dim=1, keepdim=True)                          # [B, 1]
            else:
                rel_n = (20.0 + 300.0 * torch.sigmoid(p["n_release"])) * _DB
            log_rel_h = -after * rel_h
            log_rel_n = -after * rel_n.unsqueeze(1)
        else:
            log_rel_h = log_rel_n = torch.zeros_like(t)
        if self.end_stage:   # the voice stops: -1500 dB/s after a learned end time (mid-note at init)
            # not before end_min: a velocity the kit never had must not silence the hit
            t_end = self.end_min + (self.dur - self.end_min) * torch.sigmoid(p["end"]).unsqueeze(1)   # [B, 1, 1]
            cut = -1500.0 * _DB * torch.relu(t - t_end)
            log_rel_h = log_rel_h + cut
            log_rel_n = log_rel_n + cut

        fast = (2.0 + 200.0 * torch.sigmoid(p["h_fast"])) * _DB                   # nats/s [B, K]
        slow = (0.1 + 40.0 * torch.sigmoid(p["h_slow"] - 1.0)) * _DB
        decay = _two_stage(torch.sigmoid(p["h_mix"]), fast, slow, t)              # [B, M+1, K]
        grid = 3.0 * torch.tanh(p["h_grid"].reshape(B, self.Mc, self.Kc) / 3.0)
        corr = torch.matmul(torch.matmul(self.Wt, grid), self.Wk.t())              # [B, M+1, K]
        log_h = p["h_level"].unsqueeze(1) + decay + corr + log_rel_h
        # min -60 nats (-520 dB): no denormal floats (x86 runs them ~100x slower) and no exact zeros
        amps_h = torch.exp(torch.clamp(log_h, min=-60.0, max=2.0)) * att * mask.unsqueeze(1)

        if self.noise_stages == 1:
            n_decay = (1.0 + 200.0 * torch.sigmoid(p["n_decay"])) * _DB
            n_env = -n_decay.unsqueeze(1) * t
        else:  # fast (a closed hat loses 60 dB in ~50 ms) then slow (a crash rings for seconds)
            n_fast = (5.0 + 1000.0 * torch.sigmoid(p["n_fast"] - 2.0)) * _DB
            n_slow = (0.1 + 60.0 * torch.sigmoid(p["n_slow"] - 1.0)) * _DB
            n_env = _two_stage(torch.sigmoid(p["n_mix"]), n_fast, n_slow, t)
        n_grid = 3.0 * torch.tanh(p["n_grid"].reshape(B, self.Mc, self.Qc) / 3.0)
        if self.Qc != self.Q:
            n_grid = torch.matmul(n_grid, self.Wq.t())                            # [B, Mc, Q]
        log_n = p["n_level"].unsqueeze(1) + n_env + torch.matmul(self.Wt, n_grid) + log_rel_n
        amps_n = torch.exp(torch.clamp(log_n, min=-60.0, max=2.0)) * att
        return {"freqs": freqs, "amps_h": amps_h, "amps_n": amps_n, "inharmonicity": inharm, "attack": attack}

    def forward(self, z: torch.Tensor, pitch: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        c = self.controls(z, pitch, velocity)
        y = harmonic_bank(c["amps_h"], c["freqs"], self.sample_rate, self.hop)
        y = y + noise_bank_synth(c["amps_n"], self.noise, self.hop)
        y = y[:, :self.note_samples] * self.fade
        if self.attack_audio_rate:
            y = y * torch.clamp(self.t_audio / c["attack"], max=1.0)
        return torch.clamp(y, -1.0, 1.0)


class MultiResSpecDiscriminator(nn.Module):
    """Log-mel magnitudes at several STFT resolutions -> 1-D conv over time per resolution.

    forward(x: float32[B, N], pitch, velocity) -> (logit float32[B], aux float32[B, n_classes]):
    logits and auxiliary pitch/class logits summed over resolutions; with `features=True` also the
    list of every conv layer's activations (for feature matching). The projection term makes the
    realness judgement conditional on (pitch, velocity); with `n_instruments` (timbre training) a
    second projection term, an embedding per instrument, makes it conditional on the instrument given
    as `instrument` int64[B] too (omitted when None).
    """

    def __init__(self, sample_rate: int, kind: str = "pitched", channels: int = 64, n_mels: int = 80,
                 resolutions=((2048, 512), (1024, 256)), layers: int = 4, n_classes: int = 128,
                 n_instruments: int = 0, **_unused) -> None:
        super().__init__()
        self.fronts = nn.ModuleList([LogMel(sample_rate, n, h, n_mels) for n, h in resolutions])
        self.bodies = nn.ModuleList()
        self.heads = nn.ModuleList()
        for _ in resolutions:
            mods: list[nn.Module] = [nn.Conv1d(n_mels, channels, 5, padding=2), nn.LeakyReLU(0.2)]
            for _ in range(layers):
                mods += [nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.LeakyReLU(0.2)]
            self.bodies.append(nn.Sequential(*mods))
            self.heads.append(ProjectionHead(2 * channels, kind, n_classes))
        self.n_instruments = int(n_instruments)
        if self.n_instruments:   # zero at init: the judgement starts unconditional on the instrument
            self.inst = nn.ModuleList([nn.Embedding(self.n_instruments, 2 * channels) for _ in resolutions])
            for e in self.inst:
                nn.init.zeros_(e.weight)

    def inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the trainable layers see: float32[B, n_mels, T_r] log-mel magnitudes per resolution."""
        return [front(x) for front in self.fronts]

    def forward(self, x, pitch, velocity, features: bool = False, instrument=None):
        return self.judge(self.inputs(x), pitch, velocity, features, instrument)

    def judge(self, reps: list[torch.Tensor], pitch, velocity, features: bool = False, instrument=None):
        """`forward` from `inputs(x)` (R1 takes its gradient with respect to these)."""
        logit, aux = 0.0, 0.0
        feats: list[torch.Tensor] | None = [] if features else None
        for r, (rep, body, head) in enumerate(zip(reps, self.bodies, self.heads, strict=True)):
            f = run_body(body, rep, feats)
            h = torch.cat([f.mean(-1), f.amax(-1)], dim=-1)
            lo, au = head(h, pitch, velocity)
            if instrument is not None and self.n_instruments:
                lo = lo + (self.inst[r](instrument.long()) * h).sum(-1) / math.sqrt(h.shape[-1])
            logit, aux = logit + lo, aux + au
        return (logit, aux, feats) if features else (logit, aux)


class SpecEncoder(nn.Module):
    """float32[B, N] audio -> (mu, logvar) float32[B, Z]: the reconstruction path's posterior."""

    def __init__(self, sample_rate: int, latent_size: int, channels: int = 128, n_mels: int = 80,
                 **_unused) -> None:
        super().__init__()
        self.front = LogMel(sample_rate, 1024, 256, n_mels)
        self.body = nn.Sequential(
            nn.Conv1d(n_mels, channels, 5, padding=2), nn.LeakyReLU(0.2),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.LeakyReLU(0.2))
        self.out = nn.Linear(2 * channels, 2 * latent_size)

    def forward(self, x):
        f = self.body(self.front(x))
        mu, logvar = self.out(torch.cat([f.mean(-1), f.amax(-1)], -1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 4.0)
