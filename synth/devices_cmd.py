"""`python -m synth devices`: what `play` would open, then the audio host APIs and output devices
(PortAudio) and the MIDI input ports.

It takes the flags that choose where sound and MIDI go (`--audio-api`, `--midi-api`, `--device`,
`--sample-rate`, `--blocksize`, `--midi-port`, `--no-virtual`), and predicts with the same functions
`play` runs (`synth.live.choose_output`, `synth.live.predict`): the audio API, the output device (or
the JACK client and the ports it connects), the rate and block, and the MIDI API and ports. `play`
logs the same lines once it has opened them, and writes the same fields as `opened` in `--stats-json`
(`--json` prints them alone). Works without any device: it then says why `play` would not start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str]) -> int:
    from synth import live

    p = argparse.ArgumentParser(
        prog="python -m synth devices",
        description="What `play` would open with these flags, then every audio output device and MIDI input port.")
    live.add_output_args(p)
    p.add_argument("--json", action="store_true",
                   help="print only the prediction, as JSON: the `opened` field of play's --stats-json")
    args = p.parse_args(argv)
    live.check_output_ranges(args)

    from synth.errors import UserError
    from synth.io import apis, portaudio
    from synth.io.libjack import jack_server_info

    notes: list[str] = []
    if args.json:
        # A UserError here is play's own: one line, exit 2.
        print(json.dumps(live.predict(live.choose_output(args, notes.append), args), indent=1))
        return 0

    out = sys.stdout
    jack = jack_server_info()
    state = f"running, {jack[0]} Hz, period {jack[1]}" if jack else "not running"
    out.write(f"JACK server: {state}"
              f" (JACK_DEFAULT_SERVER={os.environ.get('JACK_DEFAULT_SERVER', 'default')})\n")
    out.write(f"ALSA sequencer (/dev/snd/seq): {'present' if apis.has_alsa_seq() else 'missing'}\n")
    chosen = None
    try:
        choice = live.choose_output(args, notes.append)
        plan = live.predict(choice, args)
    except UserError as e:
        out.write(f"play would not start: {e}\n")
    else:
        chosen = choice.device.index if choice.device is not None else None
        out.write(f"play would use: audio {choice.audio_api}, MIDI {choice.midi_api}\n")
        out.write("play would open:\n")
        for line in [*notes, *live.report_lines(plan)]:
            out.write(f"  {line}\n")
    if jack:
        out.write(f"  (under JACK, --audio-api {apis.JACK_CLIENT_API}, the default: one JACK client of the synth's "
                  "own for MIDI and audio, its outputs connected to the physical playback ports or to --device "
                  "PATTERN; --audio-api jack: PortAudio's JACK host API and a MIDI client)\n")
    out.write("\n")

    sd = portaudio.load_sounddevice()
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
    out.write("  (play also opens a virtual input port named 'neural-synth', unless --no-virtual)\n")
    return 0
