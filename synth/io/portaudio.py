"""Audio out through PortAudio (sounddevice): the only module that imports sounddevice, lazily.

PortAudio scans its host APIs when sounddevice is imported, and its JACK host API only appears while a
JACK server runs. So nothing here imports sounddevice at module load; `load_sounddevice()` does, at
start-up after the API choice, so a JACK server that is already up is seen.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

from synth.errors import UserError
from synth.io.apis import AUDIO_APIS
from synth.io.libjack import jack_server_running

JACK_AUDIO_CLIENT = "neural-synth-audio"   # PortAudio's JACK client, as JACK lists it
# Strings handed to C must outlive the call that stores the pointer.
_keepalive: list[Any] = []
_sd = None
_sd_lock = threading.Lock()


def load_sounddevice(jack_client_name: str | None = JACK_AUDIO_CLIENT):
    """Import sounddevice now (PortAudio scans host APIs here) and name its JACK client.

    Raises `UserError` when PortAudio itself is missing.
    """
    global _sd
    with _sd_lock:
        if _sd is not None:
            return _sd
        try:
            import sounddevice as sd
        except OSError as e:
            raise UserError(f"PortAudio is not installed ({e}); install libportaudio2 "
                            "(`apt-get install libportaudio2`) or render offline with `python -m synth render`") \
                from None
        if jack_client_name:
            _set_jack_client_name(sd, jack_client_name)
        _sd = sd
        return sd


def _set_jack_client_name(sd, name: str) -> None:
    """Make PortAudio's JACK client appear as `name` instead of "PortAudio".

    PaJack_SetClientName only takes effect before Pa_Initialize, which sounddevice already called at
    import, so re-initialise around it. Silently kept as "PortAudio" when the library lacks the call.
    """
    try:
        lib = ctypes.CDLL(sd._libname)
        setter = lib.PaJack_SetClientName
    except (OSError, AttributeError):
        return
    if not (hasattr(sd, "_terminate") and hasattr(sd, "_initialize")):
        return
    buf = ctypes.c_char_p(name.encode())
    _keepalive.append(buf)
    sd._terminate()
    setter.argtypes = [ctypes.c_char_p]
    setter(buf)
    sd._initialize()


def hostapi_names(sd) -> list[str]:
    return [h["name"] for h in sd.query_hostapis()]


@dataclass(frozen=True)
class OutputDevice:
    index: int
    name: str
    hostapi: str
    channels: int
    default_samplerate: float
    low_latency: float


def _describe(sd, index: int) -> OutputDevice:
    d = sd.query_devices(index)
    return OutputDevice(index=index, name=d["name"], hostapi=sd.query_hostapis(d["hostapi"])["name"],
                        channels=d["max_output_channels"], default_samplerate=d["default_samplerate"],
                        low_latency=d["default_low_output_latency"])


def output_devices(sd) -> list[OutputDevice]:
    return [_describe(sd, i) for i, d in enumerate(sd.query_devices()) if d["max_output_channels"] > 0]


def resolve_device(sd, device: str | None, audio_api: str) -> OutputDevice:
    """Pick the output device: `device` is an index or a case-insensitive name substring (or None for
    the default of `audio_api`). Raises `UserError` with a suggestion when nothing fits."""
    devs = output_devices(sd)
    apis = hostapi_names(sd)
    want_api = AUDIO_APIS.get(audio_api)
    if want_api is not None:
        if want_api not in apis:
            hint = " (start a JACK server first, e.g. `jackd -d dummy -r 48000 -p 128 &`)" if audio_api == "jack" \
                else ""
            raise UserError(f"audio API {audio_api!r} is not available here{hint}; available: "
                            f"{', '.join(apis) or 'none'}")
        devs = [d for d in devs if d.hostapi == want_api]
    if not devs:
        jack_hint = "start JACK (`jackd -d dummy -r 48000 -p 128 &` on a headless machine, or your sound " \
                    "card's driver)"
        raise UserError(f"no audio output device{' for API ' + audio_api if want_api else ''}; {jack_hint} "
                        "or pick one with --device (`python -m synth devices` lists them)")
    if device is None or device == "":
        if want_api is not None:
            default = sd.query_hostapis(apis.index(want_api))["default_output_device"]
        else:
            default = sd.default.device[1]
            if default is None or default < 0:
                default = sd.query_hostapis(sd.default.hostapi)["default_output_device"] \
                    if sd.default.hostapi >= 0 else -1
        for d in devs:
            if d.index == default:
                return d
        return devs[0]
    if device.isdigit():
        idx = int(device)
        for d in devs:
            if d.index == idx:
                return d
        raise UserError(f"--device {device}: no output device with that index; `python -m synth devices` "
                        "lists them")
    hits = [d for d in devs if device.lower() in d.name.lower()]
    if not hits:
        raise UserError(f"--device {device!r}: no output device matches; known: "
                        f"{', '.join(repr(d.name) for d in devs)}")
    return hits[0]


class AudioOutput:
    """A running sounddevice `OutputStream`: float32, stereo, `latency='low'`.

    `callback(outdata: float32[frames, 2], frames: int, time_info, status)` is sounddevice's callback
    signature and runs on PortAudio's audio thread (JACK's process thread under JACK).
    """

    def __init__(self, device: OutputDevice, sample_rate: int, blocksize: int, callback):
        sd = load_sounddevice()
        self.device = device
        try:
            self.stream = sd.OutputStream(device=device.index, samplerate=sample_rate, blocksize=blocksize,
                                          channels=2, dtype="float32", latency="low", callback=callback,
                                          prime_output_buffers_using_stream_callback=False)
        except sd.PortAudioError as e:
            raise UserError(f"cannot open audio device {device.name!r} ({device.hostapi}) at {sample_rate} Hz, "
                            f"blocksize {blocksize}: {e}; try another --device, --sample-rate or --blocksize") \
                from None
        self.sample_rate = sample_rate
        self.blocksize = blocksize
        # Frames from a key's arrival to its frame in the block: one block (the callback places an event
        # one block after its time stamp; under JACK, our MIDI client reads it a cycle before this
        # callback takes it). See `synth.live.latency_readout`.
        self.synth_latency_frames = blocksize

    @property
    def latency_seconds(self) -> float:
        """PortAudio's reported output latency, seconds. (Under JACK it is not the port's playback
        latency: `synth.live.latency_readout` asks JACK instead.)"""
        return float(self.stream.latency)

    def time(self) -> float:
        """The stream clock, seconds: the time base of the callback's `time_info` fields."""
        return self.stream.time

    def start(self) -> None:
        self.stream.start()

    def server_lost(self) -> bool:
        """True when this stream runs on JACK and the JACK server has gone away."""
        return self.device.hostapi == AUDIO_APIS["jack"] and not jack_server_running()

    def close(self) -> bool:
        """Stop and close the stream. Returns False, leaving it open, when the JACK server is gone:
        PortAudio's JACK host API then hangs in close and in Pa_Terminate, so the caller must leave the
        process with `os._exit` (`synth.live` does)."""
        if not self.stream.active and self.server_lost():
            return False
        try:
            self.stream.abort(ignore_errors=True)
        finally:
            self.stream.close(ignore_errors=True)
        return True
