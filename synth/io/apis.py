"""Which audio and MIDI API the live synth uses: `--audio-api`, `--midi-api` and what `auto` picks.

A running JACK server owns the sound card, so when one runs, audio and MIDI go through JACK: on the
synth's own JACK client (`jack-client`: one callback a cycle, a key sounds in the cycle it arrives),
chosen by interleaved sessions (docs/live.md). Otherwise audio uses PortAudio's default output and
MIDI the ALSA sequencer (docs/live.md, "Which audio and MIDI system"). Asks libjack and the file
system only: no PortAudio, no rtmidi.
"""

from __future__ import annotations

import os

from synth.errors import UserError
from synth.io.libjack import jack_server_running

# `--audio-api` name -> PortAudio host API name (None: PortAudio's default output).
AUDIO_APIS = {
    "auto": None,
    "jack": "JACK Audio Connection Kit",
    "alsa": "ALSA",
    "oss": "OSS",
    "pulse": "PulseAudio",
    "pipewire": "PipeWire",
    "coreaudio": "Core Audio",
    "wasapi": "Windows WASAPI",
    "asio": "ASIO",
}
# Not a PortAudio host API: one JACK client of our own for MIDI in and audio out (synth.io.jack_audio).
JACK_CLIENT_API = "jack-client"
MIDI_APIS = ("auto", "alsa", "jack", "jack-rtmidi", "none")


def has_alsa_seq() -> bool:
    """True when the ALSA sequencer device exists (ALSA MIDI is usable)."""
    return os.path.exists("/dev/snd/seq")


def choose_apis(audio_api: str = "auto", midi_api: str = "auto") -> tuple[str, str]:
    """Resolve "auto" for the audio and MIDI APIs.

    A running JACK server owns the sound card, so when one runs both go through JACK: audio on our own
    JACK client (`jack-client`) unless `--midi-api` names another MIDI system, which PortAudio's JACK
    host API (`jack`) then pairs with; MIDI through JACK always when `/dev/snd/seq` is missing (there
    is no other MIDI). Otherwise audio uses PortAudio's default output ("auto" stays "auto") and MIDI
    uses ALSA. Explicit choices are kept as given.
    """
    if audio_api not in AUDIO_APIS and audio_api != JACK_CLIENT_API:
        raise UserError(f"--audio-api {audio_api!r} is not known; choose from "
                        f"{', '.join([*AUDIO_APIS, JACK_CLIENT_API])}")
    if midi_api not in MIDI_APIS:
        raise UserError(f"--midi-api {midi_api!r} is not known; choose from {', '.join(MIDI_APIS)}")
    if audio_api == JACK_CLIENT_API:
        if midi_api not in ("auto", "jack"):
            raise UserError(f"--audio-api {JACK_CLIENT_API} reads MIDI on its own JACK port; drop --midi-api "
                            f"{midi_api} (or pass --midi-api jack)")
        if not jack_server_running():
            raise UserError(f"--audio-api {JACK_CLIENT_API} needs a running JACK server; start one first "
                            "(e.g. `jackd -d dummy -r 48000 -p 128 &`)")
        return audio_api, "jack"
    if audio_api != "auto" and midi_api != "auto":
        return audio_api, midi_api
    jack = jack_server_running()
    if audio_api == "auto" and jack:
        if midi_api in ("auto", "jack"):
            return JACK_CLIENT_API, "jack"
        audio_api = "jack"
    if midi_api == "auto":
        midi_api = "jack" if jack and (audio_api == "jack" or not has_alsa_seq()) else "alsa"
    return audio_api, midi_api
