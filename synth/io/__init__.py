"""Live audio and MIDI I/O, one module per role (docs/live.md says what each path does).

- `apis`: which audio and MIDI API to use (`--audio-api`, `--midi-api`, `auto`).
- `portaudio`: audio out through sounddevice; the only module that imports sounddevice.
- `jack_audio`: `--audio-api jack-client`, one JACK client for MIDI in and audio out.
- `libjack`: the low-level JACK layer (ctypes): server probe, `JackFast`, `FrameClock`.
- `events`: the MIDI -> audio-callback event tuples, the byte parser and the queue.
- `ports`: what both MIDI inputs share: which ports they take, hot-plug, the velocity map.
- `midi_rtmidi`: MIDI through rtmidi (ALSA, or rtmidi's JACK API); the only module that imports rtmidi.
- `midi_jack`: frame-exact JACK MIDI through JACK-Client.

sounddevice and rtmidi are imported lazily, inside functions, so offline rendering works on a
machine without PortAudio. Importing this package imports nothing.
"""
