"""Per-channel MIDI state with General MIDI's defaults and curves.

One `Channels` object holds, for the 16 channels, what a GM synth keeps per channel: bank select
(CC0/CC32, applied at the next program change), the program, volume (CC7) and expression (CC11),
pan (CC10), the reverb and chorus sends (CC91/CC93), the pedals (CC64 sustain, CC66 sostenuto,
CC67 soft), the registered parameter selected (CC101/CC100) and RPN 0, the pitch-bend range (data
entry CC6/CC38), and the knob CCs the channel has set. The engine asks it for gains and pans.

Curves (GM2, RP-015, as FluidSynth applies them): the channel gain is
`(volume/127)^2 · (expression/127)^2` (40·log10 each, in dB); pan is constant-power; CC121 resets
expression, pedals, bend and the RPN selection, not volume, pan, sends or program.
"""

from __future__ import annotations

import math

N_CHANNELS = 16
DEFAULT_VOLUME = 100
DEFAULT_REVERB_SEND = 40
DEFAULT_CHORUS_SEND = 0
DEFAULT_BEND_RANGE = 2.0          # semitones (RPN 0's GM default)
RPN_NULL = 127
SOFT_PEDAL_VELOCITY = 0.75        # notes struck under CC67 play at this fraction of their velocity


class Channels:
    """The 16 channels' controller state (plain Python lists: read per note-on, set per CC)."""

    def __init__(self):
        self.reset_all()

    def reset_all(self) -> None:
        """GM power-on state for every channel (also what a GM/GS/XG reset SysEx asks for)."""
        n = N_CHANNELS
        self.bank_msb = [0] * n
        self.bank_lsb = [0] * n
        self.program = [0] * n
        self.volume = [DEFAULT_VOLUME] * n
        self.pan = [64] * n
        self.reverb = [DEFAULT_REVERB_SEND] * n
        self.chorus = [DEFAULT_CHORUS_SEND] * n
        self.knob_cc: list[dict[int, int]] = [{} for _ in range(n)]
        self.expression, self.sustain, self.sostenuto, self.soft = [127] * n, [False] * n, [False] * n, [False] * n
        self.bend_value, self.bend_range = [0] * n, [DEFAULT_BEND_RANGE] * n
        self.rpn = [(RPN_NULL, RPN_NULL)] * n

    def reset_controllers(self, ch: int) -> None:
        """CC121 (RP-015): expression, pedals, pitch bend and RPN selection to their defaults."""
        self.expression[ch] = 127
        self.sustain[ch] = self.sostenuto[ch] = self.soft[ch] = False
        self.bend_value[ch] = 0
        self.rpn[ch] = (RPN_NULL, RPN_NULL)

    # ---- derived values ---------------------------------------------------------------------
    def gain(self, ch: int) -> float:
        """Linear channel gain from CC7 and CC11 (GM2's 40·log10 curve on each)."""
        return (self.volume[ch] / 127.0) ** 2 * (self.expression[ch] / 127.0) ** 2

    def pan_offset(self, ch: int) -> float:
        """CC10 as an offset on the 0..1 pan position (0 hard left, 64 centre, 127 hard right)."""
        v = self.pan[ch]
        return (v - 64) / 128.0 if v <= 64 else (v - 64) / 126.0

    def sends(self, ch: int) -> tuple[float, float]:
        """(reverb, chorus) send levels 0..1 from CC91 and CC93."""
        return self.reverb[ch] / 127.0, self.chorus[ch] / 127.0

    def bend_factor(self, ch: int) -> float:
        """The channel's pitch-bend rate factor: its bend value over its RPN 0 range."""
        return 2.0 ** (self.bend_range[ch] * self.bend_value[ch] / 8192.0 / 12.0)

    def velocity(self, ch: int, velocity: int) -> int:
        """The velocity a note plays at: lowered under the soft pedal (a softer, duller note, as una
        corda gives; the model plays the lower layer), else as struck."""
        return soft_velocity(velocity) if self.soft[ch] else velocity

    # ---- controller moves that only change state --------------------------------------------
    def data_entry(self, ch: int, cc: int, value: int) -> bool:
        """RPN selection (CC101/CC100) and data entry (CC6 MSB, CC38 LSB) for RPN 0, the pitch-bend
        range. Returns True when the bend range changed."""
        msb, lsb = self.rpn[ch]
        if cc in (98, 99):                  # an NRPN is selected: data entry no longer goes to an RPN
            self.rpn[ch] = (RPN_NULL, RPN_NULL)
        elif cc == 101:
            self.rpn[ch] = (value, lsb)
        elif cc == 100:
            self.rpn[ch] = (msb, value)
        elif (msb, lsb) == (0, 0) and cc in (6, 38):
            semis = math.floor(self.bend_range[ch] + 1e-9)
            cents = round((self.bend_range[ch] - semis) * 100)
            if cc == 6:
                semis = min(value, 24)      # GM2 allows up to 24 semitones
            else:
                cents = min(value, 99)
            self.bend_range[ch] = semis + cents / 100.0
            return True
        return False


def soft_velocity(velocity: int) -> int:
    """The velocity a note struck under the soft pedal plays at."""
    return max(1, int(math.floor(velocity * SOFT_PEDAL_VELOCITY + 0.5)))
