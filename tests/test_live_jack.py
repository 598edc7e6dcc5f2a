"""Live playing on a real JACK server (dummy driver): MIDI in through `neural-synth`, audio out through
PortAudio's JACK host API, recorded by a probe client. Nothing is mocked."""

from __future__ import annotations

import json
import signal
import subprocess

import numpy as np
import pytest
from jackutil import JackServer, Probe, onsets, synth_cmd

pytestmark = pytest.mark.jack


class StandInEngine:
    """Minimal engine with the Engine API, for testing the live plumbing alone: each note-on starts a
    sine at the note's pitch (amplitude velocity/127 * 0.3) at its frame offset; note-off stops it."""

    def __init__(self, sample_rate, blocksize, presets, realtime=True, **kw):
        self.sr = sample_rate
        self.voices = {}   # (ch, note) -> [phase_increment, phase, amp, start_frame]
        self.latency_samples = 0
        self.log = []

    def note_on(self, ch, note, vel, frame=0):
        self.voices[(ch, note)] = [2 * np.pi * 440 * 2 ** ((note - 69) / 12) / self.sr, 0.0, 0.3 * vel / 127, frame]

    def note_off(self, ch, note, frame=0):
        v = self.voices.get((ch, note))
        if v is not None:
            v[2] = 0.0

    def control_change(self, ch, cc, value, frame=0):
        if cc in (120, 123):
            self.voices.clear()

    def program_change(self, ch, program, frame=0):
        pass

    def pitch_bend(self, ch, value, frame=0):
        pass

    def panic(self):
        self.voices.clear()

    def render(self, frames, out=None):
        out = np.zeros((frames, 2), np.float32) if out is None else out
        out.fill(0)
        n = np.arange(frames)
        for key, (inc, ph, amp, start) in list(self.voices.items()):
            if amp == 0:
                del self.voices[key]
                continue
            k = n[start:]
            out[start:, 0] += (amp * np.sin(ph + inc * (k - start))).astype(np.float32)
            self.voices[key] = [inc, ph + inc * (frames - start), amp, 0]
        out[:, 1] = out[:, 0]
        return out

    def stats(self):
        return {"voices": len(self.voices)}
