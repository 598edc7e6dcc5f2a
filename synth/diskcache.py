"""Persistent on-disk store of generated notes: a second render, or a second live start, skips the model.

What is stored is exactly what the worker publishes into the `NoteCache`: float32 samples at the
output rate (resampled, decay-shaped, loop baked in) and the loop points. Layout:

    <root>/v<FORMAT>/<keyboard>/<pitch>-<velocity layer>.note

`<keyboard>` hashes everything the samples depend on besides the note: the preset's digest (the
bytes of its generator.onnx, hashed once per (path, size, mtime), and its sound-relevant manifest
fields as loaded), the knob state, the output rate, the format version and the versions of what
computes the samples (ONNX Runtime and its provider, soxr, numpy). A note file is a 64-byte header
(magic, format, length, loop points, CRC-32 of the samples, the note's own key digest) and the
samples as little-endian float32, then, for a note that rings (`synth.ring`), its partial table:
s0, tail, peak, the partials' count P and their omega, alpha, amp and phase (float64[P] each), so a
warm start lays out the continuation without analysing the note again (0.14 s of a one-minute
piano chorale's 0.5-s start here). The CRC covers both.

Writes go to a temporary file beside the note that is then renamed onto it, so a reader (or a
process killed mid-write) never sees a half-written note; a reader checks size, header and CRC and
deletes a file that fails, so a note torn by a power cut is regenerated, never played. The file is
not fsynced: durability buys a cache nothing once torn files are caught, and an fsync cost 3.5 ms a
note here (8 ms with `synth.fsutil.atomic_path`'s folder fsync) against 0.2 ms for the write and
rename, which made a cold render's prepare 3x slower (docs/decisions-engine.md, 2026-12-05).
Bounded: once the store passes `cap_bytes`, the least recently used notes (mtime, refreshed on every
hit) are deleted down to 90% of the cap. Processes may share a folder: renames are atomic and a
file that vanishes under a reader is a miss. Best effort: a write that fails (read-only folder, full
disk, file size limit) logs one warning and turns writing off for the process; reading goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

from synth.errors import UserError

log = logging.getLogger("synth")

# Bump when the notes the worker publishes change for the same inputs (its resampling, decay shaping or
# loop making, `synth.worker`) or the file layout does: the old notes are then never read again, and age out.
FORMAT = 3
DEFAULT_CAP_BYTES = 2 * 1024**3
MAGIC = b"NSYNNOTE"
HEADER = struct.Struct("<8sIIddI16sI8x")   # magic, format, samples, loop start, loop end, crc32, key digest, ring bytes
RING = struct.Struct("<IIdI")                 # s0, tail, peak, partials
MAX_RING_BYTES = RING.size + 4 * 8 * 4096
SUFFIX = ".note"
STALE_TMP_SECONDS = 3600        # a temporary file this old is a killed writer's
# Manifest fields that do not change a generated note (edited by `trainer eval --update-preset` etc.).
_NOT_SOUND = ("description", "training", "metrics")

HELP = ("folder that keeps generated notes across runs, so a second run skips the model; 'off' keeps none "
        "(default: neural-synth in the user cache folder, $XDG_CACHE_HOME or ~/.cache, at most 2 GB)")
_digests: dict[tuple, str] = {}              # (path, size, mtime_ns) -> sha256 of the file
_digest_lock = threading.Lock()


def default_root() -> Path:
    """$XDG_CACHE_HOME/neural-synth, or ~/.cache/neural-synth (XDG: a relative value is ignored)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "neural-synth"


def parse_option(text: str | None, flag: str = "--disk-cache") -> Path | None:
    """`--disk-cache` as given (None: the default folder, "off": none, else a folder) → a path or None."""
    if text is None:
        return default_root()
    text = str(text).strip()
    if text.lower() in ("off", "none", "no"):
        return None
    if not text:
        raise UserError(f"{flag}: give a folder, or 'off'")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {text}: not a folder; give a folder for the note cache, or 'off'")
    return path


def open_disk_cache(spec) -> DiskCache | None:
    """The engine's `disk_cache` argument → a DiskCache or None: None/False/"off" (none), a folder, or a DiskCache."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, DiskCache):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        path = parse_option(os.fspath(spec), "disk_cache")
        return None if path is None else DiskCache(path)
    raise UserError(f"disk_cache {spec!r}: give a folder, 'off' or None")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, computed once per (path, size, mtime) in this process."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    with _digest_lock:
        d = _digests.get(key)
    if d is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        d = h.hexdigest()
        with _digest_lock:
            _digests[key] = d
    return d


def preset_digest(preset) -> str:
    """sha256 over the preset's generator.onnx and the manifest fields the engine's notes depend on."""
    from synth.preset import manifest_dict

    m = {k: v for k, v in manifest_dict(preset).items() if k not in _NOT_SOUND}
    text = json.dumps(m, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((file_digest(preset.generator_path) + text).encode()).hexdigest()


def _write_renamed(path: Path, *parts) -> None:
    """Write `parts` to a temporary file beside `path` (a dot name the store ignores), then rename it onto
    `path`. The note keeps mkstemp's mode 0600: the cache is the user's own."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "wb") as f:
            for b in parts:
                f.write(b)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class DiskCache:
    """Generated notes under `root`, at most about `cap_bytes` of them (see the module docstring).

    Thread-safe for one writer thread; several processes may share `root`."""

    def __init__(self, root: str | os.PathLike, cap_bytes: int = DEFAULT_CAP_BYTES):
        if not cap_bytes > 0:
            raise UserError(f"disk cache size {cap_bytes!r} bytes must be positive")
        self.root = Path(root)
        self.dir = self.root / f"v{FORMAT}"
        self.cap_bytes = int(cap_bytes)
        self.writable = True
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self.bad = 0            # files that failed validation (deleted)
        self.evicted = 0
        self._size: int | None = None   # bytes in the store at the last scan, plus what this process wrote since
        self._warned = False

    # ---- keys -----------------------------------------------------------------------------------
    def keyboard(self, preset, knobkey: tuple, out_rate: int, provider: str) -> str:
        """The folder name of one keyboard: a hash of everything a note's samples depend on but the note."""
        import onnxruntime

        parts = {"format": FORMAT, "preset": preset_digest(preset), "knobs": [int(v) for v in knobkey],
                 "rate": int(out_rate), "provider": str(provider), "onnxruntime": onnxruntime.__version__,
                 "numpy": np.__version__}
        if preset.sample_rate != out_rate:
            import soxr

            parts["soxr"] = soxr.__version__
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def has_keyboard(self, kb: str) -> bool:
        """Whether any note of keyboard `kb` may be stored (its folder exists)."""
        return (self.dir / kb).is_dir()

    def has(self, kb: str, pitch: int, vlayer: int) -> bool:
        """Whether note (pitch, vlayer) of keyboard `kb` is stored (its file exists; `load` checks it)."""
        return self._path(kb, pitch, vlayer)[0].is_file()

    def _path(self, kb: str, pitch: int, vlayer: int) -> tuple[Path, bytes]:
        digest = hashlib.sha256(f"{kb}/{pitch}/{vlayer}".encode()).digest()[:16]
        return self.dir / kb / f"{int(pitch)}-{int(vlayer)}{SUFFIX}", digest

    # ---- read -----------------------------------------------------------------------------------
    @staticmethod
    def scratch_size(max_samples: int) -> int:
        """Bytes of the largest file `load` accepts for notes of at most `max_samples` samples."""
        return HEADER.size + 4 * max_samples + MAX_RING_BYTES

    def load(self, kb: str, pitch: int, vlayer: int, max_samples: int, ring: bool = False,
             scratch: bytearray | None = None):
        """(samples, loop or None) of a stored note, or None (a miss; a bad file is deleted). With
        `ring`: (samples, loop, partials or None), partials as `store` takes them. With `scratch`
        (at least `scratch_size(max_samples)` bytes) the file is read into it and the arrays returned
        are views of it, valid until its next use: no fresh buffer (and page faults) per note."""
        path, digest = self._path(kb, pitch, vlayer)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if not HEADER.size < size <= self.scratch_size(max_samples):
                    return self._bad(path)
                if scratch is None:
                    buf = f.read(size)
                else:
                    buf = memoryview(scratch)[:size]
                    if f.readinto(buf) != size:
                        return self._bad(path)
        except OSError:
            self.misses += 1    # absent, or evicted by another process meanwhile
            return None
        magic, fmt, n, ls, le, crc, kd, rb = HEADER.unpack_from(buf)
        if (magic != MAGIC or fmt != FORMAT or kd != digest or n > max_samples
                or len(buf) != HEADER.size + 4 * n + rb or zlib.crc32(memoryview(buf)[HEADER.size:]) != crc):
            return self._bad(path)
        x = np.frombuffer(buf, "<f4", n, HEADER.size)
        partials = None
        if rb:
            at = HEADER.size + 4 * n
            s0, tail, peak, k = RING.unpack_from(buf, at)
            if rb != RING.size + 32 * k:
                return self._bad(path)
            a = np.frombuffer(buf, "<f8", 4 * k, at + RING.size).reshape(4, k)
            if scratch is not None:
                a = a.copy()        # a ringing plan keeps its table: never a view of the scratch
            partials = (s0, tail, peak, *a)
        with contextlib.suppress(OSError):
            os.utime(path)      # least recently used = oldest mtime
        self.hits += 1
        loop = (ls, le) if math.isfinite(le) else None
        return (x, loop, partials) if ring else (x, loop)

    def _bad(self, path: Path) -> None:
        self.bad += 1
        self.misses += 1
        with contextlib.suppress(OSError):
            path.unlink()
        return None

    # ---- write ----------------------------------------------------------------------------------
    def store(self, kb: str, pitch: int, vlayer: int, audio: np.ndarray, loop: tuple[float, float] | None,
              partials: tuple | None = None) -> bool:
        """Write one note atomically; False (and one warning per process) when the store cannot be written.
        `partials`: a ringing note's (s0, tail, peak, omega, alpha, amp, phase), kept beside it."""
        if not self.writable:
            return False
        path, digest = self._path(kb, pitch, vlayer)
        data = np.ascontiguousarray(audio, "<f4")
        ls, le = loop if loop is not None else (0.0, math.inf)
        extra = b""
        if partials is not None:
            s0, tail, peak, *arrays = partials
            a = np.ascontiguousarray(np.stack([np.asarray(v, np.float64) for v in arrays]), "<f8")
            extra = RING.pack(int(s0), int(tail), float(peak), a.shape[1]) + a.tobytes()
            if len(extra) > MAX_RING_BYTES:
                extra = b""             # more partials than any table has: store the note alone
        crc = zlib.crc32(extra, zlib.crc32(data))
        head = HEADER.pack(MAGIC, FORMAT, len(data), float(ls), float(le), crc, digest, len(extra))
        for attempt in (0, 1):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_renamed(path, head, memoryview(data).cast("B"), extra)
                break
            except FileNotFoundError:
                if attempt:     # the folder was evicted by another process twice in a row
                    return self._failed(path, "its folder keeps vanishing")
            except OSError as e:
                return self._failed(path, e.strerror or str(e))
        self.stored += 1
        if self._size is not None:
            self._size += HEADER.size + 4 * len(data) + len(extra)
        if self._size is None or self._size > self.cap_bytes:
            self.evict()
        return True

    def _failed(self, path: Path, why: str) -> bool:
        self.writable = False
        if not self._warned:
            self._warned = True
            log.warning("note disk cache: cannot write %s (%s); notes are generated as usual and not kept "
                        "(--disk-cache off silences this)", path.parent.parent.parent, why)
        return False

    # ---- bound ----------------------------------------------------------------------------------
    def _scan(self) -> list[tuple[float, int, str]]:
        """(mtime, bytes, path) of every stored note; temporary files of writers killed over an hour ago go."""
        out = []
        try:
            kbs = list(os.scandir(self.dir))
        except OSError:
            return out
        old = time.time() - STALE_TMP_SECONDS
        for kb in kbs:
            try:
                entries = list(os.scandir(kb.path))
            except OSError:
                continue
            for e in entries:
                try:
                    st = e.stat()
                except OSError:
                    continue
                if e.name.startswith("."):
                    if st.st_mtime < old:
                        with contextlib.suppress(OSError):
                            os.unlink(e.path)
                elif e.name.endswith(SUFFIX):
                    out.append((st.st_mtime, st.st_size, e.path))
        return out

    def evict(self, target: float = 0.9) -> int:
        """Delete least recently used notes until the store is under `target` × the cap; returns how many."""
        files = self._scan()
        total = sum(s for _, s, _ in files)
        n = 0
        if total > self.cap_bytes:
            files.sort()
            emptied = set()
            for _, s, p in files:
                if total <= target * self.cap_bytes:
                    break
                with contextlib.suppress(OSError):
                    os.unlink(p)
                    n += 1
                total -= s          # gone, or another process took it
                emptied.add(os.path.dirname(p))
            for kb in emptied:
                with contextlib.suppress(OSError):
                    os.rmdir(kb)    # only once it is empty
        self.evicted += n
        self._size = total
        return n

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "stored": self.stored, "bad": self.bad,
                "evicted": self.evicted, "writable": self.writable}
