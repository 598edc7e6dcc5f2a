"""What both MIDI inputs share: which ports they take, the hot-plug scan, and the velocity map.

The port rule, the same for rtmidi (ALSA, `jack-rtmidi`) and JACK MIDI:
- A port is *wanted* when its client is not the synth's own (`neural-synth`, `neural-synth-...`)
  and its full name matches one of the `--midi-port` patterns (case-insensitive regex search), or
  any port when none is given.
- A scan, at start and then every `poll_seconds`, takes each wanted port that appeared since the
  last scan: rtmidi opens it, JACK connects it to our input port. When that fails, the failure is
  logged once and the port is tried again at every scan until it works or the port vanishes.
- Each port is decided once per appearance, so a connection you remove by hand stays removed. A
  taken port that vanishes is released and logged; when a port of that name comes back, it is taken
  again.
- The virtual port `neural-synth` also plays whatever other programs connect to it. `--no-virtual`
  leaves only the wanted ports: under ALSA there is no virtual port; under JACK, whose input port is
  the only way in, a connection from a port that is not wanted is removed at the next scan.
"""

from __future__ import annotations

import collections
import re
import sys
import threading
from collections.abc import Callable

from synth.errors import UserError
from synth.io.events import NOTE_ON

CLIENT_NAME = "neural-synth"
VIRTUAL_PORT = "neural-synth"


def compile_patterns(patterns: list[str] | None) -> list[re.Pattern]:
    """`--midi-port` patterns, compiled once (case-insensitive)."""
    try:
        return [re.compile(p, re.I) for p in (patterns or [])]
    except re.error as e:
        raise UserError(f"--midi-port: bad pattern ({e}); use a plain name or a regular expression") from None


def is_own(name: str) -> bool:
    """True for a port of one of the synth's own clients (`neural-synth`, `neural-synth-audio`,
    rtmidi's `neural-synth-in1`, ...): those never feed back into us."""
    client = name.split(":", 1)[0]
    return client == CLIENT_NAME or client.startswith(CLIENT_NAME + "-")


def wants(name: str, patterns: list[re.Pattern]) -> bool:
    """The port rule: True when `name` is not one of the synth's own ports and matches one of
    `patterns` (`compile_patterns`), or any port when there are none. `play` takes exactly these ports,
    and `python -m synth devices` predicts them with this same function."""
    return not is_own(name) and (not patterns or any(p.search(name) for p in patterns))


def velocity_map(curve: float) -> list[int] | None:
    """128-entry velocity response: out = round(127 * (v / 127) ** curve), kept >= 1 for v >= 1.
    curve < 1 is a light touch (soft keys louder), > 1 a heavy one; 1 is identity (None)."""
    if curve == 1.0:
        return None
    return [0] + [max(1, min(127, int(round(127 * (v / 127) ** curve)))) for v in range(1, 128)]


def make_emit(queue: collections.deque, vmap: list[int] | None) -> Callable[[tuple], None]:
    """The MIDI thread's last step: apply the velocity map to note-ons and append to `queue`."""
    append = queue.append
    if vmap is None:
        return append

    def emit(ev: tuple) -> None:
        if ev[1] == NOTE_ON:
            ev = (ev[0], NOTE_ON, ev[2], ev[3], vmap[ev[4]], ev[5])
        append(ev)

    return emit


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr)


class PortRefused(Exception):
    """Opening or connecting a port failed; the next scan asks again."""


class MidiSource:
    """Base of both MIDI inputs: the port rule and the hot-plug thread (module docstring).

    A subclass lists the source ports (`_list_ports`), takes one (`_take`: returns a handle, None when
    the port vanished meanwhile, or raises `PortRefused`) and releases one (`_release`). `emit` is the
    MIDI thread's way onto the queue. `take_words` and `gone_word` name what happens in the log.
    """

    take_words = ("open", "opened")
    gone_word = "closed"

    def __init__(self, queue: collections.deque, port_patterns: list[str] | None = None, virtual: bool = True,
                 poll_seconds: float = 1.0, velocity_map: list[int] | None = None,
                 log: Callable[[str], None] | None = None):
        self.queue = queue
        self.patterns = compile_patterns(port_patterns)
        self.virtual = virtual
        self.poll_seconds = poll_seconds
        self.velocity_map = velocity_map
        self.emit = make_emit(queue, velocity_map)
        self.log = log or _stderr_line
        self._taken: dict[str, object] = {}   # port name -> handle (rtmidi: its MidiIn)
        self._seen: set[str] = set()          # ports decided in their present appearance
        self._failed: set[str] = set()        # ports whose take failed: tried again each scan, logged once
        self._lock = threading.Lock()         # guards the sets between the scan thread and close(); never audio
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wanted(self, name: str) -> bool:
        return wants(name, self.patterns)

    # -- what a source provides ----------------------------------------------------------------------
    def _list_ports(self) -> list[str]:
        raise NotImplementedError

    def _take(self, name: str) -> object | None:
        raise NotImplementedError

    def _release(self, name: str, handle: object) -> None:
        pass

    def _after_scan(self, present: set[str]) -> None:
        pass

    # -- the scan ------------------------------------------------------------------------------------
    def rescan(self) -> None:
        """Take the wanted ports that appeared since the last scan; release the taken ones that vanished."""
        try:
            names = self._list_ports()
        except Exception as e:   # a JACK server that went away: keep playing what we have
            self.log(f"midi: cannot list ports ({e})")
            return
        present = set(names)
        verb, done = self.take_words
        with self._lock:
            for name in sorted(self._seen - present):
                self._seen.discard(name)
                if name in self._taken:
                    self._release(name, self._taken.pop(name))
                    self.log(f"midi: port {self.gone_word}: {name}")
            for name in names:
                if name in self._seen:
                    continue
                if not self.wanted(name):
                    self._seen.add(name)
                    continue
                try:
                    handle = self._take(name)
                except PortRefused as e:
                    if name not in self._failed:
                        self._failed.add(name)
                        self.log(f"midi: cannot {verb} {name}: {e}; trying again every {self.poll_seconds:g} s")
                    continue
                if handle is None:
                    continue
                self._seen.add(name)
                self._failed.discard(name)
                self._taken[name] = handle
                self.log(f"midi: port {done}: {name}")
            self._failed &= present
            self._after_scan(present)

    def start_hotplug(self) -> None:
        """Scan now, then every `poll_seconds` on a daemon thread."""
        self.rescan()
        self._thread = threading.Thread(target=self._poll, name="midi-hotplug", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.rescan()

    def stop_hotplug(self) -> None:
        """Stop the scan thread and release every taken port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for name in list(self._taken):
                self._release(name, self._taken.pop(name))

    @property
    def port_names(self) -> list[str]:
        """The virtual port (when open) and the ports feeding the synth, for the start-up log."""
        return self._virtual_label() + self.external_ports

    @property
    def external_ports(self) -> list[str]:
        """The ports of other programs that feed the synth, sorted: what the status line counts (never
        the virtual port, never a port of the synth's own clients)."""
        with self._lock:
            return sorted(self._taken)

    @property
    def virtual_port(self) -> str | None:
        """The virtual port's name while it is open, else None."""
        return f"{CLIENT_NAME}:{VIRTUAL_PORT}" if self.virtual else None

    def _virtual_label(self) -> list[str]:
        v = self.virtual_port
        return [f"{v} (virtual)"] if v else []
