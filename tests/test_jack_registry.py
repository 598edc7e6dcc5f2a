"""jackd's server registry must not fill up with killed test servers.

jackd has 8 server slots in /dev/shm/jack-shm-registry and frees a slot only on a clean exit or when a
server of the same name starts again. The live tests kill servers on purpose under unique names, so
without `reclaim_stale_servers` the ninth killed server made every later jackd on the machine fail
with "Too many servers already active" (that failed 13 JACK tests in CI).
"""

from __future__ import annotations

import os
import signal
import struct

import pytest

from synth.testing.jack import JACK_REGISTRY, JackServer, _pid_alive, have_jackd, reclaim_stale_servers

STRIDE = 264   # jack2: pid (4) + name, per server slot


def _registry(tmp_path, slots: list[tuple[int, str]], magic: bytes = b"KCAJ"):
    hdr_len = 24 + 8 * STRIDE
    head = magic + struct.pack("<HHiiii", 0, 0, 1, hdr_len + 4096, hdr_len, 268)
    body = bytearray(hdr_len + 4096)
    body[:24] = head
    for i, (pid, name) in enumerate(slots):
        off = 24 + i * STRIDE
        body[off:off + 4] = struct.pack("<i", pid)
        enc = name.encode()
        body[off + 4:off + 4 + len(enc)] = enc
    path = tmp_path / "jack-shm-registry"
    path.write_bytes(bytes(body))
    return path


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _slots(path) -> list[tuple[int, str]]:
    data = path.read_bytes()
    out = []
    for i in range(8):
        off = 24 + i * STRIDE
        pid = struct.unpack("<i", data[off:off + 4])[0]
        name = data[off + 4:off + STRIDE].split(b"\0", 1)[0].decode()
        out.append((pid, name))
    return out


def test_reclaim_clears_only_this_users_dead_slots(tmp_path):
    uid = os.getuid()
    dead = _dead_pid()
    path = _registry(tmp_path, [
        (dead, f"jack-{uid}:gone:"),            # ours, dead: cleared
        (os.getpid(), f"jack-{uid}:alive:"),    # ours, alive: kept
        (dead, f"jack-{uid + 1}:theirs:"),      # another user's: kept
        (dead, f"jack-{uid}:gone2:"),           # ours, dead: cleared
    ])
    assert reclaim_stale_servers(path) == [f"jack-{uid}:gone:", f"jack-{uid}:gone2:"]
    slots = _slots(path)
    assert slots[0] == (0, "") and slots[3] == (0, "")
    assert slots[1] == (os.getpid(), f"jack-{uid}:alive:")
    assert slots[2] == (dead, f"jack-{uid + 1}:theirs:")
    assert reclaim_stale_servers(path) == []


def test_reclaim_leaves_an_unknown_registry_alone(tmp_path):
    dead = _dead_pid()
    path = _registry(tmp_path, [(dead, f"jack-{os.getuid()}:gone:")], magic=b"XXXX")
    before = path.read_bytes()
    assert reclaim_stale_servers(path) == []
    assert path.read_bytes() == before
    assert reclaim_stale_servers(tmp_path / "missing") == []


@pytest.mark.jack
def test_ten_killed_servers_do_not_block_the_next_one():
    """More SIGKILLed servers than jackd has slots, then one more starts and answers a client."""
    assert have_jackd(), "jackd is missing: run `make sysdeps` (scripts/system_deps.sh installs jackd2)"
    for _ in range(10):
        srv = JackServer(period=512)
        srv.start()
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(5)
        srv.stop()
    with JackServer(period=512) as srv:
        assert srv.proc.poll() is None
        assert int.from_bytes(JACK_REGISTRY.read_bytes()[16:20], "little") == 24 + 8 * STRIDE
        slots = [(pid, n) for pid, n in _slots(JACK_REGISTRY) if n]
        assert (srv.proc.pid, f"jack-{os.getuid()}:{srv.name}:") in slots
        # Other test runs on the machine may hold live servers; no dead one of ours is left.
        assert all(_pid_alive(pid) for pid, n in slots if n.startswith(f"jack-{os.getuid()}:"))
