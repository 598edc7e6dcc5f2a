"""JACK test helpers: a private `jackd -d dummy` server and a probe client that plays MIDI at exact
frame times and records audio. Nothing is mocked: the synth under test talks to a real JACK server.

Each server gets a unique name (pid + random), so parallel test runs never share one; the server is
killed in teardown, and a server that fails to come up raises with its log.

jackd keeps a registry of running servers in shared memory with room for 8, and it frees a slot only
when a server exits cleanly or a new server of the *same name* finds the old one dead. Servers that
were killed (the tests kill some on purpose) under unique names would therefore fill the registry
for good, and every later jackd on the machine fails with "Too many servers already active". So
before each start, and after each stop, `reclaim_stale_servers` clears the slots of this user's
servers whose process is gone: what jackd itself does for a dead server of the same name.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from synth.io.libjack import JackFast
from synth.rt import GcTamer

ROOT = Path(__file__).resolve().parents[2]   # the repository (synth/testing/jack.py)


def have_jackd() -> bool:
    return shutil.which("jackd") is not None


JACK_REGISTRY = Path("/dev/shm/jack-shm-registry")
_MAX_SERVERS = 8     # jack2 shm.h MAX_SERVERS
_HEADER_FIXED = 24   # magic, protocol, type, size, hdr_len, entry_len (then the server slots)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # someone else's live process
    return True


def reclaim_stale_servers(registry: Path = JACK_REGISTRY) -> list[str]:
    """Clear this user's server slots in jackd's shared-memory registry whose process is dead.

    Returns the names of the slots cleared. Slots of live processes and of other users are never
    touched; a registry of an unknown layout is left alone. jackd takes a SysV semaphore around its
    own registry edits; this does not, so a slot is only cleared when its pid is dead (no live
    server can be writing it), and the write is a single pwrite of zeros over that slot.
    """
    try:
        fd = os.open(registry, os.O_RDWR)
    except OSError:
        return []
    cleared: list[str] = []
    try:
        head = os.pread(fd, _HEADER_FIXED, 0)
        if len(head) < _HEADER_FIXED or head[:4] != b"KCAJ":
            return []
        hdr_len = int.from_bytes(head[16:20], "little")
        stride, rest = divmod(hdr_len - _HEADER_FIXED, _MAX_SERVERS)
        if rest or not 8 <= stride <= 4096:
            return []
        prefix = f"jack-{os.getuid()}:".encode()
        for i in range(_MAX_SERVERS):
            off = _HEADER_FIXED + i * stride
            slot = os.pread(fd, stride, off)
            pid = int.from_bytes(slot[:4], "little", signed=True)
            name = slot[4:].split(b"\0", 1)[0]
            if pid > 0 and name.startswith(prefix) and not _pid_alive(pid):
                os.pwrite(fd, bytes(stride), off)
                cleared.append(name.decode(errors="replace"))
    finally:
        os.close(fd)
    return cleared


class JackServer:
    """`jackd -n <unique> -d dummy -r RATE -p PERIOD`, started on enter and killed on exit."""

    def __init__(self, period: int = 512, rate: int = 48000, log_dir: Path | None = None):
        self.period = period
        self.rate = rate
        self.name = f"nstest{os.getpid()}x{uuid.uuid4().hex[:8]}"
        self.log_path = Path(log_dir or "/tmp") / f"{self.name}.jackd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients of this server (also for the synth subprocess)."""
        return dict(os.environ, JACK_DEFAULT_SERVER=self.name, JACK_NO_START_SERVER="1", PYO_GUI_WX="0")

    def __enter__(self) -> JackServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 15.0) -> None:
        import jack

        # libjack prints "Cannot connect to server socket" for every poll before the server is up.
        jack.set_error_function(lambda msg: None)
        jack.set_info_function(lambda msg: None)
        reclaim_stale_servers()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["jackd", "-n", self.name, "-d", "dummy", "-r", str(self.rate),
                 "-p", str(self.period)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True)
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jackd exited with {self.proc.returncode}: {self.log()}")
            try:
                c = jack.Client("nstest-probe", servername=self.name, no_start_server=True)
                c.close()
                return
            except jack.JackError:
                if time.monotonic() > end:
                    self.stop()
                    raise RuntimeError(f"jackd {self.name} did not come up in {timeout} s: {self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def log_mark(self) -> int:
        """Where the server's log ends now: pass it to `blame` to read what came after."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def blame(self, mark: int = 0) -> dict[str, int]:
        """Which client jackd blamed for each xrun since `mark`, and in which state, counted:
        {"neural-synth: Triggered": 2, ...}. In async mode jackd checks, as each cycle begins, that every
        client finished the last one. "Triggered": the client's thread had been woken but had not started
        (the OS did not run it in time); "Running": it was inside its process callback (its own work, a
        wait for the GIL, or CPU taken from it while it ran). A client runs after those it takes audio from:
        the probe runs after the synth (docs/reliability.md), so `probe: Triggered` usually means the
        synth finished too late in the cycle for the probe to start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(mark)
                text = f.read().decode(errors="replace")
        except OSError:
            return {}
        out: dict[str, int] = {}
        for client, state in re.findall(r"client = (\S+) was not finished, state = (\w+)", text):
            k = f"{client}: {state}"
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        reclaim_stale_servers()   # a killed server leaves its registry slot behind
        try:
            self.log_path.unlink()
        except OSError:
            pass
        # A server that had to be killed leaves its clients' semaphores and its sockets behind; they
        # are ours alone.
        shm = Path("/dev/shm")
        for leftover in [*shm.glob(f"jack_sem.*_{self.name}_*"), *shm.glob(f"jack_{self.name}_*")]:
            try:
                leftover.unlink()
            except OSError:
                pass


# The synth's audio clients: PortAudio's under --audio-api jack, its own under --audio-api jack-client.
SYNTH_AUDIO_CLIENTS = ("neural-synth-audio", "neural-synth")


class _ProbeFast(JackFast):
    """The synth's `JackFast` (per-cycle libjack calls through `ctypes.PyDLL`, which keep the GIL) plus
    what the probe needs besides: MIDI out and audio in. None of its calls releases the GIL, so no other
    thread of the measuring process can slip in halfway through the probe's callback and make it late.
    (JACK-Client's cffi calls release it around each C call; a probe late in its cycle is an xrun that
    JACK and the synth count, though the synth was on time.)"""

    def __init__(self, client):
        super().__init__(client)
        vp = ctypes.c_void_p
        self._clear = self.lib.jack_midi_clear_buffer
        self._clear.argtypes, self._clear.restype = [vp], None
        self._write = self.lib.jack_midi_event_write
        self._write.argtypes, self._write.restype = [vp, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int

    def midi_out(self, port: int, frames: int) -> int:
        """This cycle's buffer of MIDI output port `port`, cleared (0 when JACK gives none)."""
        buf = self._get_buffer(port, frames)
        if buf:
            self._clear(buf)
        return buf or 0

    def write(self, buf: int, offset: int, data: bytes) -> None:
        self._write(buf, offset, data, len(data))

    def read_audio(self, port: int, frames: int, dst: int, n: int) -> None:
        """Copy the first `n` samples of audio input port `port` to address `dst`."""
        src = self._get_buffer(port, frames)
        if src:
            self._memmove(dst, src, 4 * n)


class _QuietInterpreter:
    """While any probe lives in this process, the synth's own `GcTamer` settings: no automatic garbage
    collection (what lives is frozen) and a 0.5-ms switch interval. The probe's callback is Python on
    JACK's real-time thread; a collection of the measuring process's generations (pytest with torch
    imported: about 100 ms) run by any thread stalls it, and a thread that holds the GIL keeps it for
    the switch interval (5 ms by default) before the callback gets it."""

    users = 0
    tamer: GcTamer | None = None

    @classmethod
    def enter(cls) -> None:
        if cls.users == 0:
            cls.tamer = GcTamer()
            cls.tamer.start()
        cls.users += 1

    @classmethod
    def leave(cls) -> None:
        cls.users -= 1
        if cls.users == 0 and cls.tamer is not None:
            cls.tamer.stop()
            cls.tamer = None


class Probe:
    """A JACK client with a MIDI out port and two audio in ports.

    `schedule(events)` queues `(absolute_frame, bytes)` MIDI events; the process callback writes each at
    its exact offset inside the period that contains it. `record(seconds)` captures the inputs into a
    preallocated buffer; `stop_recording()` returns float32[n, 2] whose row 0 is the absolute frame
    `rec_start`. Every JACK xrun the server reports is counted in `xruns`.

    The callback makes no call that releases the GIL and allocates next to nothing (see `_ProbeFast`,
    `_QuietInterpreter`): the probe measures the synth, so it must not be the one that is late.
    """

    def __init__(self, server: JackServer, name: str = "probe", record_seconds: float = 20.0):
        import jack

        self.jack = jack
        self.client = jack.Client(name, servername=server.name, no_start_server=True)
        self.sr = self.client.samplerate
        self.period = self.client.blocksize
        self.midi_out = self.client.midi_outports.register("midi_out")
        self.ins = [self.client.inports.register(f"in_{i + 1}") for i in range(2)]
        self._fast = _ProbeFast(self.client)
        self._midi_ptr = self._fast.ptr(self.midi_out)
        self._in_ptrs = [self._fast.ptr(p) for p in self.ins]
        # Planar (one row per input), so each cycle is two plain memory copies into the rows.
        self._cap = int(record_seconds * self.sr) + self.period
        self.buf = np.zeros((2, self._cap), np.float32)
        self._rows = (self.buf.ctypes.data, self.buf.ctypes.data + 4 * self._cap)
        self.pos = 0
        self.rec_start: int | None = None
        self._recording = False
        self._events: list[tuple[int, bytes]] = []
        self._ev_i = 0
        self._lock = threading.Lock()
        self.late_midi = 0
        self.xruns = 0
        self.xrun_frames: list[int] = []   # JACK frame time at each xrun report
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        _QuietInterpreter.enter()
        self._quiet = True
        try:
            self.client.activate()
        except Exception:
            self._leave_quiet()
            raise

    def _leave_quiet(self) -> None:
        if self._quiet:
            self._quiet = False
            _QuietInterpreter.leave()

    def _xrun(self, delay_usecs: float) -> None:
        self.xruns += 1
        if len(self.xrun_frames) < 10000:
            self.xrun_frames.append(self.client.frame_time)

    def _process(self, frames: int) -> None:
        fast = self._fast
        fr = fast.last_frame_time()
        buf = fast.midi_out(self._midi_ptr, frames)
        if self._lock.acquire(blocking=False):
            try:
                ev = self._events
                end = fr + frames
                while self._ev_i < len(ev) and ev[self._ev_i][0] < end:
                    at, data = ev[self._ev_i]
                    off = at - fr
                    if off < 0:
                        self.late_midi += 1
                        off = 0
                    if buf:
                        fast.write(buf, off, data)
                    self._ev_i += 1
            finally:
                self._lock.release()
        if self._recording:
            if self.rec_start is None:
                self.rec_start = fr
            # Index by frame time, not by call count: JACK skips cycles on an xrun, and appending would
            # shift everything after it.
            pos = fr - self.rec_start
            n = min(frames, self._cap - pos)
            if n > 0:
                for row, port in zip(self._rows, self._in_ptrs, strict=True):
                    fast.read_audio(port, frames, row + 4 * pos, n)
                self.pos = pos + n

    @property
    def now(self) -> int:
        """The current absolute frame (JACK's frame clock)."""
        return self.client.frame_time

    def connect_synth(self, midi_port: str = "neural-synth:neural-synth",
                      audio_clients: tuple[str, ...] = SYNTH_AUDIO_CLIENTS, timeout: float = 30.0) -> list[str]:
        """Wait for the synth's ports, then connect our MIDI out to its input and its outputs to ours."""
        outs = self.record_synth(audio_clients, timeout, also_wait_for=midi_port)
        # The synth connects every MIDI output it sees by itself (hot-plug); either side may win the race.
        self._connect(self.midi_out.name, midi_port)
        return outs

    def record_synth(self, audio_clients: tuple[str, ...] = SYNTH_AUDIO_CLIENTS, timeout: float = 30.0,
                     also_wait_for: str | None = None) -> list[str]:
        """Wait for the synth's two audio outputs and connect them to our inputs (nothing else: no
        MIDI from us, so no feedback loop). They are those of the first client in `audio_clients` that
        has two: PortAudio's (`--audio-api jack`) or the synth's own (`--audio-api jack-client`)."""
        end = time.monotonic() + timeout
        while True:
            names = [p.name for p in self.client.get_ports()] if also_wait_for else []
            audio = [p.name for p in self.client.get_ports(is_audio=True, is_output=True)]
            outs = []
            for c in audio_clients:
                outs = sorted(n for n in audio if n.startswith(c + ":"))
                if len(outs) >= 2:
                    break
            if len(outs) >= 2 and (also_wait_for is None or also_wait_for in names):
                break
            if time.monotonic() > end:
                raise TimeoutError(f"synth ports did not appear in {timeout} s; audio outputs: {audio}")
            time.sleep(0.05)
        for src, dst in zip(outs[:2], self.ins, strict=True):
            self._connect(src, dst.name)
        return outs

    def _connect(self, src: str, dst: str, tries: int = 20) -> None:
        for i in range(tries):
            try:
                self.client.connect(src, dst)
                return
            except self.jack.JackErrorCode as e:
                if e.code == 17:  # EEXIST: already connected
                    return
                # A busy server (xruns while the synth starts) can refuse a request; ask again.
                if i == tries - 1:
                    raise
                time.sleep(0.1)

    def schedule(self, events: list[tuple[int, bytes]]) -> None:
        with self._lock:
            self._events = sorted(self._events[self._ev_i:] + list(events), key=lambda e: e[0])
            self._ev_i = 0

    def start_recording(self) -> None:
        self.buf.fill(0)
        self.rec_start = None
        self.pos = 0
        self._recording = True

    def stop_recording(self) -> np.ndarray:
        self._recording = False
        return np.ascontiguousarray(self.buf[:, :self.pos].T)

    def close(self) -> None:
        try:
            self.client.deactivate()
        finally:
            self.client.close()
            self._leave_quiet()


class SynthProcess:
    """`python -m synth ...` as a subprocess on `server`; stderr goes to a file we can poll.

    `stats()` reads the counters the synth writes with --stats-json (refreshed every status line)."""

    def __init__(self, server: JackServer, cmd: list[str], workdir: Path):
        self.stats_path = Path(workdir) / f"stats-{uuid.uuid4().hex[:6]}.json"
        self.err_path = Path(workdir) / f"synth-{uuid.uuid4().hex[:6]}.log"
        self.cmd = [*cmd, "--stats-json", str(self.stats_path), "--status-interval", "0.5"]
        self._err = open(self.err_path, "wb")
        # PYTHONFAULTHANDLER: a synth that hangs on its way out dumps every thread's stack on SIGABRT
        # (`stop`), so the failure says where it hung.
        self.proc = subprocess.Popen(self.cmd, env={**server.env, "PYTHONFAULTHANDLER": "1"},
                                     stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL,
                                     cwd=str(ROOT))

    def __enter__(self) -> SynthProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while text not in self.stderr:
            if self.proc.poll() is not None:
                raise RuntimeError(f"synth exited with {self.proc.returncode} before {text!r}:\n{self.stderr[-3000:]}")
            if time.monotonic() > end:
                raise TimeoutError(f"synth did not print {text!r} in {timeout} s:\n{self.stderr[-3000:]}")
            time.sleep(0.05)

    def stats(self) -> dict:
        import json

        return json.loads(self.stats_path.read_text())

    def fresh_stats(self, timeout: float = 5.0) -> dict:
        """Counters written after this call (waits for the next status tick)."""
        try:
            before = self.stats_path.stat().st_mtime_ns
        except FileNotFoundError:
            before = 0
        end = time.monotonic() + timeout
        while True:
            try:
                if self.stats_path.stat().st_mtime_ns != before:
                    return self.stats()
            except FileNotFoundError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"synth wrote no stats in {timeout} s:\n{self.stderr[-2000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        """Send `sig` and wait for the exit status; a synth still running after `timeout` s is aborted
        (its threads' stacks go to its log) and the error carries the end of that log."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                raise TimeoutError(f"synth did not exit within {timeout} s of {signal.Signals(sig).name}; its "
                                   f"log ends:\n{self.stderr[-6000:]}") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._err.close()


def synth_cmd(preset_dir: Path, *args: str, stand_in: str | None = None) -> list[str]:
    """Command line for `python -m synth --preset piano --preset-dir DIR ARGS`.

    `stand_in="module:Factory"` runs `synth.live.main` with that engine factory instead of the real
    engine (the module is imported from tests/)."""
    base = ["--preset", "piano", "--preset-dir", str(preset_dir), *args]
    if stand_in is None:
        return [sys.executable, "-m", "synth", *base]
    mod, attr = stand_in.split(":")
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import {mod}; "
            f"from synth.cli import run_command; import synth.live as L; "
            f"raise SystemExit(L.main(sys.argv[1:], engine_factory={mod}.{attr}))")
    return [sys.executable, "-c", code, *base]


def onsets(x: np.ndarray, starts: list[int], window: int, threshold: float = 0.01) -> list[int | None]:
    """For each search start (row index into x), the first row in [start, start + window) whose |x|
    exceeds `threshold` on either channel, or None."""
    env = np.abs(x).max(axis=1)
    out: list[int | None] = []
    for s in starts:
        seg = env[max(0, s):s + window]
        hit = np.flatnonzero(seg > threshold)
        out.append(int(max(0, s) + hit[0]) if hit.size else None)
    return out


def silent_before(x: np.ndarray, starts: list[int], window: int, threshold: float) -> list[bool]:
    """For each row index in `starts`, True when |x| stays below `threshold` on both channels for the
    `window` rows before it (the key is pressed in silence, so an onset after it is this note's).
    Rows before the recording count as silent."""
    env = np.abs(x).max(axis=1)
    return [bool(s <= 0 or env[max(0, s - window):s].max(initial=0.0) < threshold) for s in starts]


def note_events(sent: list[int], notes: list[int], velocity: int = 100, hold: int = 2880, channel: int = 0):
    """Note-on at each frame of `sent` (absolute JACK frames) and note-off `hold` frames later."""
    evs = []
    for f, n in zip(sent, notes, strict=True):
        evs.append((f, bytes([0x90 | channel, n, velocity])))
        evs.append((f + hold, bytes([0x80 | channel, n, 0])))
    return evs


def play_and_record(probe: Probe, events: list[tuple[int, bytes]], tail_seconds: float = 0.5) -> np.ndarray:
    """Record from now until `tail_seconds` after the last event; returns float32[n, 2] whose row 0 is
    absolute frame `probe.rec_start`."""
    probe.start_recording()
    probe.schedule(events)
    last = max(f for f, _ in events)
    while probe.now < last + int(tail_seconds * probe.sr):
        time.sleep(0.05)
    return probe.stop_recording()


# Periods tried in turn by `at_kept_period`: the live bar's 128 frames first.
KEPT_PERIODS = (128, 256, 512)


def at_kept_period(measure, enough, periods: tuple[int, ...] = KEPT_PERIODS) -> tuple[int, object, list]:
    """`measure(period)` at the smallest of `periods` at which this host keeps JACK in time.

    An xrun drops its period's MIDI, so a note next to one cannot be timed, and `measure` leaves it out.
    Some hosts steal so much CPU that JACK's dummy driver xruns in nearly every 128-frame cycle (CI,
    2026-12-07: the probe saw 5,184 xruns in ~13 s, and no note could be timed). A frame-exact timing
    rule holds at every period, so then it is checked at the next one. `enough(result)` says whether
    enough notes were timed. Returns (period, result, [(period, result) of each try])."""
    tries = []
    for p in periods:
        r = measure(p)
        tries.append((p, r))
        if enough(r):
            return p, r, tries
    return periods[-1], r, tries


def dominant_hz(x: np.ndarray, sr: int) -> float:
    """Frequency of the strongest FFT bin of a mono signal (Hann window)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spec[:3] = 0
    return float(np.argmax(spec) * sr / len(x))


# -- the MIDI flood of issue 8 (tests/test_reliability_live.py, and `scripts/soak.py --flood-seconds`) ----------

FLOOD_KNOBS = (70, 74)   # the tiny test preset's knob CCs


def knob_ccs(preset_folder: Path) -> tuple[int, ...]:
    """The `knobs[].cc` list of `preset_folder/preset.json`, in manifest order."""
    import json

    m = json.loads((Path(preset_folder) / "preset.json").read_text())
    return tuple(int(k["cc"]) for k in m.get("knobs", []))


def cache_accounting(rss1: float, rss2: float, eng1: dict, eng2: dict) -> dict:
    """RSS growth with the note cache's fill taken out, from two engine stats snapshots.

    The cache is one bank of `--cache-mb` whose pages the OS maps as notes are first written, so RSS
    rises as it fills, up to its cap, and then stays flat (slots are reused). That rise is bounded
    by design; what must not grow is everything else. Returns cache MB at both points, its cap, and
    `rss_growth_excl_cache_pct` (None when the synth reported no cache figures).
    """
    c1, c2, cap = eng1.get("cache_mb"), eng2.get("cache_mb"), eng2.get("cache_cap_mb")
    if c1 is None or c2 is None or not rss1:
        return {"cache_1s_mb": c1, "cache_end_mb": c2, "cache_cap_mb": cap, "rss_growth_excl_cache_pct": None}
    base = rss1 - c1
    return {"cache_1s_mb": round(c1, 1), "cache_end_mb": round(c2, 1), "cache_cap_mb": cap,
            "rss_growth_excl_cache_pct": round(100.0 * ((rss2 - c2) - base) / base, 2) if base > 0 else None}


class ControlServer:
    """The machine's own xruns, measured beside a run: a second `jackd -d dummy` at the same period with
    one idle C client (`jack_metro`) and a listener that only counts the server's xrun reports.

    Nothing of ours runs in that graph, so its xruns come from the machine (the host's scheduling and
    steal, timer slack): a side-by-side baseline for the synth's server over the same seconds. Its
    cost is one more real-time wake-up per period, a few microseconds of CPU. The listener is its own
    process: libjack serves one server per process, and this one talks to the synth's.
    """

    LISTENER = (
        "import sys, time, jack\n"
        "c = jack.Client('control-listener', servername=sys.argv[1], no_start_server=True)\n"
        "c.set_xrun_callback(lambda d: print(time.monotonic(), flush=True))\n"
        "c.activate()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )

    def __init__(self, period: int = 512, rate: int = 48000):
        self.server = JackServer(period=period, rate=rate)
        self.procs: list[subprocess.Popen] = []
        self.times: list[float] = []     # time.monotonic() of each xrun report (system-wide clock)
        self._reader: threading.Thread | None = None

    def __enter__(self) -> ControlServer:
        self.server.start()
        try:
            env = self.server.env
            self.procs.append(subprocess.Popen(["jack_metro", "-b", "120"], env=env, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                               start_new_session=True))
            lis = subprocess.Popen([sys.executable, "-c", self.LISTENER, self.server.name], env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True, start_new_session=True)
            self.procs.append(lis)
            if lis.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the control server's xrun listener did not start: {self.server.log()}")
            self._reader = threading.Thread(target=self._read, args=(lis.stdout,), daemon=True)
            self._reader.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _read(self, stream) -> None:
        for line in stream:
            try:
                self.times.append(float(line))
            except ValueError:
                pass

    def xruns(self, t_from: float, seconds: float) -> list[float]:
        """xrun report times in seconds from monotonic time `t_from`, within [0, seconds)."""
        return [round(t - t_from, 2) for t in list(self.times) if 0 <= t - t_from < seconds]

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
        self.procs = []
        self.server.stop()


class StealMonitor:
    """Hypervisor steal time (the `steal` column of /proc/stat, all CPUs) sampled on a thread every
    `interval` s: the time the host ran something else while this VM wanted its CPUs. It is counted
    apart from any process (this kernel accounts steal), so xruns in seconds the host took time from
    us are the machine's. The counter moves in clock ticks (10 ms): a bin shows 0 or >= 10 ms.

        with StealMonitor() as sm:
            ...                                      # the measured run
        sm.attribution(t0_mono, xrun_offsets_s, seconds)
    """

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.samples: list[tuple[float, float]] = []   # (time.monotonic(), cumulative steal ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read_ms() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
            return float(fields[8]) * 1000.0 / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self.read_ms()
            if v is None:
                return
            self.samples.append((time.monotonic(), v))
            self._stop.wait(self.interval)

    def start(self) -> StealMonitor:
        self._thread.start()
        return self

    def __enter__(self) -> StealMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        v = self.read_ms()
        if v is not None:
            self.samples.append((time.monotonic(), v))

    def per_second(self, t_from: float, seconds: float) -> list[float] | None:
        """Steal in ms in each 1-s bin from monotonic time t_from (None: no /proc/stat here)."""
        if len(self.samples) < 2:
            return None
        t = np.array([a for a, _ in self.samples])
        v = np.array([b for _, b in self.samples])
        edges = t_from + np.arange(int(math.ceil(seconds)) + 1)
        cum = np.interp(edges, t, v)     # linear between samples 0.25 s apart
        return [round(float(x), 1) for x in np.diff(cum)]

    def attribution(self, t_from: float, xrun_offsets: list[float], seconds: float) -> dict:
        """Steal over the window and how many xruns (offsets in s from t_from) fell within a second of
        a second with steal, against the share of such seconds."""
        bins = self.per_second(t_from, seconds)
        if bins is None:
            return {"steal_ms": None}
        hit = [b >= 5.0 for b in bins]
        near = [any(hit[max(0, i - 1):i + 2]) for i in range(len(hit))]
        inside = [x for x in xrun_offsets if 0 <= x < len(bins)]
        return {"steal_ms": round(sum(bins), 1),
                "steal_ms_per_minute": [round(sum(bins[i:i + 60]), 1) for i in range(0, len(bins), 60)],
                "seconds_with_steal": int(sum(hit)), "seconds": len(bins),
                "xruns": len(inside), "xruns_near_steal": sum(1 for x in inside if near[int(x)]),
                "share_of_seconds_near_steal": round(sum(near) / max(1, len(near)), 3)}


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def flood_events(t0: int, seconds: float, rate: float = 10_000, seed: int = 3, knobs: tuple[int, ...] = FLOOD_KNOBS,
                 sr: int = 48000) -> list[tuple[int, bytes]]:
    """`rate` JACK MIDI events per second from frame t0: note-ons without note-offs (some packed with
    running status), CC storms on every knob (`knobs`: CC numbers) of every channel, other CCs, bends,
    program changes, aftertouch, sysex and junk bytes without a status. Sorted by frame. With no knobs,
    the storm goes to CC 1 and 74."""
    knobs = tuple(knobs) or FLOOD_KNOBS
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    frames = t0 + np.sort(rng.integers(0, int(seconds * sr), n))
    kinds = rng.random(n)
    ch = rng.integers(0, 16, n)
    d1 = rng.integers(0, 128, n)
    d2 = rng.integers(1, 128, n)
    ev = []
    for f, r, c, a, b in zip(frames.tolist(), kinds.tolist(), ch.tolist(), d1.tolist(), d2.tolist(), strict=True):
        if r < 0.35:
            data = bytes([0x90 | c, a, b])
        elif r < 0.45:
            data = bytes([0x90 | c, a, b, (a + 7) % 128, b, (a + 12) % 128, b])   # running status
        elif r < 0.75:
            data = bytes([0xB0 | c, knobs[a % len(knobs)], b])                    # knob storm
        elif r < 0.80:
            data = bytes([0xB0 | c, (7, 10, 11, 64, 91)[a % 5], b])
        elif r < 0.85:
            data = bytes([0xE0 | c, a, b])
        elif r < 0.88:
            data = bytes([0xC0 | c, a % 2])
        elif r < 0.90:
            data = bytes([0xA0 | c, a, b])
        elif r < 0.95:
            data = bytes([0xF0, a, b, 0x7F, 0xF7]) if r < 0.93 else bytes([a, b])   # sysex / junk
        else:
            data = bytes([0x80 | c, a, 0])
        ev.append((f, data))
    return ev


def hist_percentile(hist: list[int], q: float) -> float | None:
    """Percentile (0..100) of a 1%-bin load histogram, as a share of the block (0.01 resolution)."""
    h = np.asarray(hist, np.int64)
    total = int(h.sum())
    if total == 0:
        return None
    idx = int(np.searchsorted(np.cumsum(h), q / 100.0 * total))
    return (idx + 1) / 100.0


def window_load(before: dict, after: dict, key: str = "load_hist_pct") -> dict:
    """Percentiles of a cumulative 1%-bin histogram (`load_hist_pct`, `cpu_hist_pct`, `entry_hist_pct`)
    between two stats snapshots: p50, p99, max (shares of the block), callbacks counted, and how many
    took a whole block or more (`over`)."""
    d = np.asarray(after[key]) - np.asarray(before[key])
    nz = np.flatnonzero(d)
    return {"p50": hist_percentile(d, 50), "p99": hist_percentile(d, 99), "callbacks": int(d.sum()),
            "max": (int(nz[-1]) + 1) / 100.0 if nz.size else None, "over": int(d[100:].sum())}


def run_flood(cmd: list[str], workdir: Path, seconds: float, knobs: tuple[int, ...] = FLOOD_KNOBS,
              rate: float = 10_000, seed: int = 3, period: int = 512, control: bool = False) -> dict:
    """Issue 8's flood, measured: a private `jackd -d dummy -p PERIOD`, the synth `cmd` (it must take
    MIDI from `^probe:`), `seconds` of `flood_events` at `rate`, then CC 120 + CC 123 on all 16
    channels at the flood's end; the output is recorded until 0.5 s after it.

    Returns the figures (JSON-ready): xruns from 1 s to the flood's end (the synth's counter, read at
    its status ticks, and JACK's xrun callback), RSS at 1 s and 0.5 s after the end, the synth's
    event counters and callback load, the output's peak and finiteness, the peak of the flood's
    middle (it did sound), whether the output is exactly 0 from 2 periods + 6 ms after the panic, and
    the time from the panic to the last non-zero frame. The panic is sent twice, 0.2 s apart: the
    second is judged only where the first failed with an xrun the probe saw near it (an xrun drops
    MIDI). `log_tail` is the end of the synth's stderr.
    With `control`, a second JACK server with an idle C client runs beside it (`ControlServer`): its
    xruns from 1 s to the flood's end are the machine's own."""
    with ControlServer(period=period) if control else contextlib.nullcontext() as ctl:
        return _run_flood(cmd, workdir, seconds, knobs, rate, seed, period, ctl)


def _run_flood(cmd, workdir, seconds, knobs, rate, seed, period, ctl) -> dict:
    with JackServer(period=period) as srv, SynthProcess(srv, cmd, workdir) as sp:
        sr = srv.rate
        sp.wait_for("ready")
        probe = Probe(srv, record_seconds=seconds + 3)
        try:
            probe.connect_synth()
            time.sleep(0.5)
            rel = flood_events(0, seconds, rate, seed, knobs, sr)   # built before t0 is fixed: 30 s takes a while
            t0 = probe.now + sr // 4
            ev = [(f + t0, d) for f, d in rel]
            end = t0 + int(seconds * sr)
            # The panic, and again 0.2 s later: an xrun drops its period's MIDI, so the second is
            # judged where the first failed next to one (`panic_judged`).
            again = end + int(0.2 * sr)
            ev += [(f, bytes([0xB0 | c, cc, 0])) for f in (end, again) for c in range(16) for cc in (120, 123)]
            t0_mono = time.monotonic() + (t0 - probe.now) / sr
            steal = StealMonitor().start()
            probe.start_recording()
            probe.schedule(ev)
            while probe.now < t0 + sr + period:
                time.sleep(0.02)
            log1 = srv.log_mark()   # the judged part begins (1 s in)
            one = sp.fresh_stats()
            rss1 = rss_mb(sp.proc.pid)
            while probe.now < end - period:
                time.sleep(0.01)
            blame = srv.blame(log1)
            flood_end = sp.fresh_stats()
            while probe.now < end + int(0.5 * sr):
                time.sleep(0.05)
            rss2 = rss_mb(sp.proc.pid)
            x = probe.stop_recording()
            start = probe.rec_start
            after = sp.fresh_stats()
            xr_jack = [f for f in probe.xrun_frames if t0 + sr < f < end]
            xrun_seconds = [round((f - t0) / sr, 3) for f in probe.xrun_frames]
            late_midi = probe.late_midi
            steal.stop()
        finally:
            probe.close()
        alive = sp.proc.poll() is None
        rc = sp.stop()
        log_tail = sp.stderr[-2000:]
    env = np.abs(x).max(axis=1) if len(x) else np.zeros(1, np.float32)
    bar = 2 * period + int(0.006 * sr)

    def quiet_from(f):
        return len(env) > f - start + bar and env[f - start + bar:].max() == 0.0

    # The first panic is judged unless it failed next to an xrun the probe saw (which can drop it).
    near = any(end - 2 * period <= xf <= end + bar + 2 * period for xf in probe.xrun_frames)
    judged = 1 if quiet_from(end) or not near else 2
    panic_row = (end if judged == 1 else again) - start
    quiet_row = panic_row + bar
    tail = env[panic_row:]
    nz = np.flatnonzero(tail)
    # Frames from the panic to the last non-zero one; None when the recording ends still sounding.
    silence = (int(nz[-1]) + 1 if nz.size else 0) if not (nz.size and nz[-1] == len(tail) - 1) else None
    eng = after.get("engine", {})
    periods = (end - t0 - sr) / period
    return {
        "seconds": seconds, "rate": rate, "period": period, "knobs": list(knobs), "events_sent": len(ev),
        "late_midi_probe": late_midi,
        "events": after["events"], "dropped": after["dropped"], "deferred": after["deferred"],
        "late_events": after["late_events"], "callback_errors": after["callback_errors"],
        "periods_judged": periods,
        "xruns_synth_after_1s": flood_end["xruns"] - one["xruns"], "xruns_synth_all": after["xruns"],
        "xruns_jack_after_1s": len(xr_jack), "xruns_jack_all": len(xrun_seconds),
        "jack_xrun_seconds": xrun_seconds[:100],
        # Whom jackd blamed for the xruns from 1 s to the flood's end, and in which state.
        "jack_blame_after_1s": blame,
        # Hypervisor steal from t0 to the flood's end and the JACK xruns within a second of it.
        "steal": steal.attribution(t0_mono, xrun_seconds, seconds),
        # The machine's own xruns over the same window (1 s to the flood's end), or None.
        "control_xrun_seconds": None if ctl is None else [x + 1.0 for x in ctl.xruns(t0_mono + 1.0, seconds - 1.0)],
        "load_p99": after["load_p99"], "load_max": after["load_max"],
        # The callback's own CPU time (thread time: excludes preemption, GIL waits and hypervisor
        # steal), from 1 s to the flood's end: what the synth costs, whatever the machine does.
        "cpu": window_load(one, flood_end, "cpu_hist_pct"),
        "load_window": window_load(one, flood_end),
        # How late the audio callback started in its cycle beyond the usual (waiting for the GIL or a
        # CPU), and the costliest callbacks of the whole run: what the synth did when it was slow.
        "entry_delay": window_load(one, flood_end, "entry_hist_pct"),
        "worst_callbacks": after.get("worst_callbacks"),
        "gc_collect_ms_max": after.get("gc_collect_ms_max"),
        "gc_collect_cpu_ms_max": after.get("gc_collect_cpu_ms_max"),
        "rss_1s_mb": round(rss1, 1), "rss_end_mb": round(rss2, 1),
        "rss_growth_pct": round(100.0 * (rss2 - rss1) / rss1, 2) if rss1 else None,
        **cache_accounting(rss1, rss2, one.get("engine", {}), after.get("engine", {})),
        "peak": float(env.max()), "finite": bool(np.isfinite(x).all()),
        "flood_peak": float(env[max(0, t0 - start + sr // 2):end - start].max(initial=0.0)),
        "silence_bar_ms": round(bar / sr * 1e3, 3),
        # 1: the first panic; 2: the one 0.2 s later (the first failed with an xrun near it).
        "panic_judged": judged,
        "silent_after_panic": bool(quiet_from(panic_row + start)),
        "silence_ms": None if silence is None else round(silence / sr * 1e3, 3),
        "post_panic_peak": float(env[quiet_row:].max(initial=0.0)),
        "voices": eng.get("voices"), "misses_dropped": eng.get("misses_dropped"),
        "misses_stale": eng.get("misses_stale"),
        "alive": alive, "exit_code": rc, "log_tail": log_tail,
    }
