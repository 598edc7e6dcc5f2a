"""`python -m synth devices`: list audio host APIs and output devices (PortAudio) and MIDI input ports.

What `python -m synth play` would pick by itself is marked, so a player can see why sound goes where it
goes. Works without any device: it then says so and how to get one.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m synth devices",
                                description="List audio output devices and MIDI input ports.")
    p.add_argument("--audio-api", default="auto", help="as for `play`: which choice to mark (default auto)")
    p.add_argument("--midi-api", default="auto", help="as for `play` (default auto)")
    args = p.parse_args(argv)

    from synth.errors import UserError
    from synth.io import apis, portaudio
    from synth.io.libjack import jack_server_info

    audio_api, midi_api = apis.choose_apis(args.audio_api, args.midi_api)
    jack = jack_server_info()
    out = sys.stdout
    state = f"running, {jack[0]} Hz, period {jack[1]}" if jack else "not running"
    out.write(f"JACK server: {state}"
              f" (JACK_DEFAULT_SERVER={os.environ.get('JACK_DEFAULT_SERVER', 'default')})\n")
    out.write(f"ALSA sequencer (/dev/snd/seq): {'present' if apis.has_alsa_seq() else 'missing'}\n")
    out.write(f"play would use: audio {audio_api}, MIDI {midi_api}\n")
    if jack:
        out.write(f"  (--audio-api {apis.JACK_CLIENT_API}: one JACK client of the synth's own for MIDI and "
                  "audio, its outputs connected to the physical playback ports or to --device PATTERN)\n")
    out.write("\n")

    sd = portaudio.load_sounddevice()
    chosen = None
    if audio_api != apis.JACK_CLIENT_API:   # no PortAudio device to mark then
        try:
            chosen = portaudio.resolve_device(sd, None, audio_api).index
        except UserError as e:
            out.write(f"(no default output: {e})\n")
    out.write("audio host APIs and output devices (--audio-api, --device):\n")
    devs = portaudio.output_devices(sd)
    for api in portaudio.hostapi_names(sd):
        mine = [d for d in devs if d.hostapi == api]
        out.write(f"  {api}: {len(mine)} output device(s)\n")
        for d in mine:
            mark = "*" if d.index == chosen else " "
            out.write(f"   {mark}{d.index:3d}  {d.name}  ({d.channels} ch, {d.default_samplerate:.0f} Hz, "
                      f"low latency {1e3 * d.low_latency:.1f} ms)\n")
    if not devs:
        out.write("  no audio output device: start JACK (`jackd -d dummy -r 48000 -p 128 &` on a headless "
                  "machine) or check your sound card; offline `python -m synth render` needs none\n")

    out.write("\nMIDI input ports (--midi-api, --midi-port):\n")
    for api in ("alsa", "jack"):
        if api == "jack" and not jack:
            out.write("  jack: no JACK server\n")
            continue
        if api == "alsa" and not apis.has_alsa_seq():
            out.write("  alsa: no ALSA sequencer (/dev/snd/seq missing)\n")
            continue
        try:
            from synth.io.midi_rtmidi import list_ports

            ports = list_ports(api)
        except UserError as e:
            out.write(f"  {api}: unavailable ({e})\n")
            continue
        out.write(f"  {api}: {len(ports)} port(s)\n")
        for name in ports:
            out.write(f"     {name}\n")
    out.write("  (play also opens a virtual input port named 'neural-synth')\n")
    return 0
