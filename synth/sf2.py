"""A small SoundFont 2 writer: samples, instruments and presets → one RIFF `sfbk` file.

It writes what `synth bake` needs and nothing else: mono samples at 16 bits (`smpl`) or 24 bits
(`smpl` + `sm24`, SoundFont 2.04), zones with generators and modulators, the INFO provenance
chunk. The layout follows the SoundFont 2.04 specification (section numbers below):

    RIFF 'sfbk'
      LIST 'INFO'  ifil isng INAM ICRD IENG? ICMT ISFT               (5)
      LIST 'sdta'  smpl [sm24]   every sample followed by 46 zeros    (6)
      LIST 'pdta'  phdr pbag pmod pgen inst ibag imod igen shdr      (7), each with its terminal record

Zone rules the writer enforces (8.1.2): keyRange first, velRange next, the terminal generator
(`instrument` in a preset zone, `sampleID` in an instrument zone) last; a zone without it is the
global zone and comes first. Bag, generator and modulator indices are 16-bit words, so a file holds
at most 65,535 of each; `write_sf2` says so instead of wrapping.

The audio is streamed to the file sample by sample (a baked piano is ~40 M samples), so memory stays
at one note beyond what the caller holds. Sizes are computed up front; nothing is seeked back to.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

# Generator operators (8.1.2) used by the baker.
PAN = 17
HOLD_VOL_ENV = 35
DECAY_VOL_ENV = 36
SUSTAIN_VOL_ENV = 37
RELEASE_VOL_ENV = 38
INSTRUMENT = 41
KEY_RANGE = 43
VEL_RANGE = 44
INITIAL_ATTENUATION = 48
COARSE_TUNE = 51
FINE_TUNE = 52
SAMPLE_ID = 53
SAMPLE_MODES = 54
OVERRIDING_ROOT_KEY = 58
INITIAL_FILTER_FC = 8

# Modulator source operators (8.2): index | CC flag << 7 | direction << 8 | polarity << 9 | type << 10.
SRC_NONE = 0x0000
SRC_VELOCITY = 0x0002
NEGATIVE = 0x0100
CONCAVE = 0x0400
SWITCH = 0x0C00

ZERO_PAD = 46            # zero data points after every sample (6.1)
MAX_INDEX = 0xFFFF       # bag/generator/modulator indices are WORDs
NAME_LEN = 20


@dataclass(frozen=True)
class Modulator:
    """One modulator record (8.2-8.4): `amount` (SHORT) scales src × amount_src into `dest`."""

    src: int
    dest: int
    amount: int
    amount_src: int = SRC_NONE
    transform: int = 0


@dataclass
class Zone:
    """Generators {operator: value} and modulators of one zone. A value is an int (SHORT or WORD) or a
    (lo, hi) range; `target` is the instrument (preset zones) or sample (instrument zones) index, None
    for a global zone."""

    gens: dict[int, int | tuple[int, int]] = field(default_factory=dict)
    mods: list[Modulator] = field(default_factory=list)
    target: int | None = None


@dataclass
class Instrument:
    name: str
    zones: list[Zone]              # a global zone (target None) may come first


@dataclass
class PresetHeader:
    name: str
    program: int
    bank: int
    zones: list[Zone]


@dataclass
class Sample:
    """One mono sample: `data` float32[N] in [-1, 1] (quantised as it is written), played at `rate` Hz;
    its pitch is `root` (MIDI key) + `correction` cents; `loop` = (start, end) in samples, end exclusive
    (the first sample after the loop), or None."""

    name: str
    data: np.ndarray
    rate: int
    root: int
    correction: int = 0
    loop: tuple[int, int] | None = None


def _name(text: str) -> bytes:
    """A 20-byte zero-padded ASCII name (the last byte stays 0)."""
    raw = text.encode("ascii", "replace")[:NAME_LEN - 1]
    return raw.ljust(NAME_LEN, b"\0")


def _chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) & 1 else b"")


def _zstr(text: str, limit: int = 256) -> bytes:
    """A zero-terminated string padded to an even length (5.1: INFO strings)."""
    raw = text.encode("ascii", "replace")[:limit - 2] + b"\0"
    return raw + (b"\0" if len(raw) & 1 else b"")


def _gen_bytes(op: int, value) -> bytes:
    if isinstance(value, tuple):
        lo, hi = value
        return struct.pack("<HBB", op, lo, hi)
    if op in (SAMPLE_ID, INSTRUMENT, SAMPLE_MODES, OVERRIDING_ROOT_KEY) or value > 32767:
        return struct.pack("<HH", op, value & 0xFFFF)
    return struct.pack("<Hh", op, value)


def _zone_records(zones: Sequence[Zone], terminal_op: int, gen_start: int, mod_start: int
                  ) -> tuple[list[tuple[int, int]], bytes, bytes]:
    """(bag records, generator bytes, modulator bytes) of `zones`, indices counted from the starts."""
    bags, gens, mods = [], bytearray(), bytearray()
    g, m = gen_start, mod_start
    for i, z in enumerate(zones):
        if z.target is None and i != 0:
            raise ValueError("only the first zone may be a global zone (no instrument/sampleID)")
        bags.append((g, m))
        order = [op for op in (KEY_RANGE, VEL_RANGE) if op in z.gens]
        order += sorted(op for op in z.gens if op not in (KEY_RANGE, VEL_RANGE, terminal_op))
        for op in order:
            gens += _gen_bytes(op, z.gens[op])
        g += len(order)
        if z.target is not None:
            gens += _gen_bytes(terminal_op, z.target)
            g += 1
        for mod in z.mods:
            mods += struct.pack("<HHhHH", mod.src, mod.dest, mod.amount, mod.amount_src, mod.transform)
        m += len(z.mods)
    return bags, bytes(gens), bytes(mods)


def _hydra(presets: Sequence[PresetHeader], instruments: Sequence[Instrument], samples: Sequence[Sample],
           offsets: Sequence[int]) -> bytes:
    """The `pdta` LIST body (7.1): presets sorted by (bank, program), as 7.2 asks."""
    presets = sorted(presets, key=lambda p: (p.bank, p.program))
    phdr, pbag, pgen, pmod = bytearray(), bytearray(), bytearray(), bytearray()
    n_bag = n_gen = n_mod = 0
    for p in presets:
        phdr += struct.pack("<20sHHHIII", _name(p.name), p.program, p.bank, n_bag, 0, 0, 0)
        bags, g, m = _zone_records(p.zones, INSTRUMENT, n_gen, n_mod)
        pbag += b"".join(struct.pack("<HH", *b) for b in bags)
        pgen += g
        pmod += m
        n_bag, n_gen, n_mod = n_bag + len(bags), n_gen + len(g) // 4, n_mod + len(m) // 10
    _check_counts("preset", n_bag, n_gen, n_mod)
    phdr += struct.pack("<20sHHHIII", _name("EOP"), 0, 0, n_bag, 0, 0, 0)
    pbag += struct.pack("<HH", n_gen, n_mod)
    pmod += bytes(10)
    pgen += bytes(4)

    inst, ibag, igen, imod = bytearray(), bytearray(), bytearray(), bytearray()
    n_bag = n_gen = n_mod = 0
    for ins in instruments:
        inst += struct.pack("<20sH", _name(ins.name), n_bag)
        bags, g, m = _zone_records(ins.zones, SAMPLE_ID, n_gen, n_mod)
        ibag += b"".join(struct.pack("<HH", *b) for b in bags)
        igen += g
        imod += m
        n_bag, n_gen, n_mod = n_bag + len(bags), n_gen + len(g) // 4, n_mod + len(m) // 10
    _check_counts("instrument", n_bag, n_gen, n_mod)
    inst += struct.pack("<20sH", _name("EOI"), n_bag)
    ibag += struct.pack("<HH", n_gen, n_mod)
    imod += bytes(10)
    igen += bytes(4)

    shdr = bytearray()
    for s, off in zip(samples, offsets, strict=True):
        n = len(s.data)
        ls, le = s.loop if s.loop is not None else (0, 0)
        shdr += struct.pack("<20sIIIIIBbHH", _name(s.name), off, off + n, off + ls, off + le, s.rate,
                            s.root, s.correction, 0, 1)
    shdr += struct.pack("<20sIIIIIBbHH", _name("EOS"), 0, 0, 0, 0, 0, 0, 0, 0, 0)
    body = b"pdta" + b"".join(_chunk(cid, bytes(b)) for cid, b in (
        (b"phdr", phdr), (b"pbag", pbag), (b"pmod", pmod), (b"pgen", pgen), (b"inst", inst),
        (b"ibag", ibag), (b"imod", imod), (b"igen", igen), (b"shdr", shdr)))
    return body


def _check_counts(level: str, bags: int, gens: int, mods: int) -> None:
    for what, n in (("zones", bags), ("generators", gens), ("modulators", mods)):
        if n >= MAX_INDEX:
            raise ValueError(f"{n} {level} {what}: a SoundFont holds at most {MAX_INDEX - 1}; bake fewer "
                             f"presets or velocity layers into one file")


def info_chunk(fields: Iterable[tuple[bytes, str]], bits: int) -> bytes:
    """The INFO LIST: ifil (2.01, or 2.04 with 24-bit samples) first, then the given (id, text) pairs."""
    body = b"INFO" + _chunk(b"ifil", struct.pack("<HH", 2, 4 if bits == 24 else 1))
    for cid, text in fields:
        body += _chunk(cid, _zstr(text, 65536 if cid == b"ICMT" else 256))
    return _chunk(b"LIST", body)


def write_sf2(f: BinaryIO, info: Iterable[tuple[bytes, str]], samples: Sequence[Sample],
              instruments: Sequence[Instrument], presets: Sequence[PresetHeader], bits: int = 16) -> int:
    """Write a SoundFont to the open binary file `f`; returns the bytes written.

    `info`: (chunk id, text) pairs such as (b"INAM", "piano"), (b"ISFT", "neural-synth 0.1.0"); isng is
    added. Each sample is quantised to `bits` (rounded, clipped) as it is written, twice at 24 bits
    (`smpl`, then `sm24`), so no integer copy of the whole bank is ever held.
    Raises ValueError when the file would exceed a SoundFont limit; OSError from `f` passes through.
    """
    if bits not in (16, 24):
        raise ValueError(f"bits must be 16 or 24, got {bits}")
    offsets, pos = [], 0
    for s in samples:
        if s.loop is not None and not 0 <= s.loop[0] < s.loop[1] <= len(s.data):
            raise ValueError(f"sample {s.name}: loop {s.loop} outside its {len(s.data)} samples")
        offsets.append(pos)
        pos += len(s.data) + ZERO_PAD
    # An even number of sample points, so that sm24 (one byte a point) needs no RIFF pad byte:
    # FluidSynth ignores an sm24 chunk whose size is odd. One more zero after the last sample.
    extra = pos & 1
    n_points = pos + extra
    info_b = info_chunk([(b"isng", "EMU8000"), *info], bits)
    pdta = _chunk(b"LIST", _hydra(presets, instruments, samples, offsets))
    smpl_size = 2 * n_points
    sm24_size = n_points if bits == 24 else 0
    sdta_size = 4 + 8 + smpl_size + (8 + sm24_size if bits == 24 else 0)
    total = 4 + len(info_b) + 8 + sdta_size + len(pdta)
    f.write(b"RIFF" + struct.pack("<I", total) + b"sfbk")
    f.write(info_b)
    f.write(b"LIST" + struct.pack("<I", sdta_size) + b"sdta")
    pad = np.zeros(ZERO_PAD, np.int16)
    f.write(b"smpl" + struct.pack("<I", smpl_size))
    for s in samples:
        q = quantise(s.data, bits)
        f.write((q >> 8 if bits == 24 else q).astype("<i2").tobytes())
        f.write(pad.tobytes())
    f.write(bytes(2 * extra))
    if bits == 24:
        f.write(b"sm24" + struct.pack("<I", sm24_size))
        zeros = bytes(ZERO_PAD)
        for s in samples:
            f.write((quantise(s.data, bits) & 0xFF).astype(np.uint8).tobytes())
            f.write(zeros)
        f.write(bytes(extra))
    f.write(pdta)
    return 8 + total


def timecents(seconds: float) -> int:
    """Seconds → absolute timecents (1200·log2 s), clamped to the spec's envelope range −12000..8000."""
    import math

    if seconds <= 0.001:
        return -12000
    return int(round(min(8000.0, max(-12000.0, 1200.0 * math.log2(seconds)))))


def quantise(x: np.ndarray, bits: int) -> np.ndarray:
    """float [-1, 1] → int32 at `bits` full scale (rounded, clipped)."""
    full = float(1 << (bits - 1))
    return np.clip(np.rint(np.asarray(x, np.float64) * full), -full, full - 1).astype(np.int32)
