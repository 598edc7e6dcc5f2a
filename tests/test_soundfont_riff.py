"""SoundFont preset headers are read from padded (SF2) and unpadded (some SF3 writers) RIFF chunks."""

from __future__ import annotations

import struct

import pytest

from synth.errors import UserError
from trainer.data.soundfont import find_preset, read_presets


def _chunk(cid: bytes, body: bytes, pad: bool) -> bytes:
    out = cid + struct.pack("<I", len(body)) + body
    return out + (b"\0" if pad and len(body) % 2 else b"")


def _sfbk(pad: bool) -> bytes:
    phdr = b"".join(struct.pack("<20sHHHIII", name, prog, bank, 0, 0, 0, 0)
                    for name, prog, bank in [(b"Grand", 0, 0), (b"Strings", 48, 0), (b"EOP", 0, 0)])
    info = _chunk(b"LIST", b"INFO" + _chunk(b"ifil", struct.pack("<HH", 2, 1), pad), pad)
    sdta = _chunk(b"LIST", b"sdta" + _chunk(b"smpl", b"\1\2\3", pad), pad)  # odd size: padding matters
    pdta = _chunk(b"LIST", b"pdta" + _chunk(b"phdr", phdr, pad), pad)
    body = b"sfbk" + info + sdta + pdta
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("pad", [True, False])
def test_presets_found_with_and_without_padding(tmp_path, pad):
    f = tmp_path / "t.sf2"
    f.write_bytes(_sfbk(pad))
    assert [(p.name, p.program, p.bank) for p in read_presets(f)] == [("Grand", 0, 0), ("Strings", 48, 0)]
    assert find_preset(f, 48, 0).name == "Strings"
    with pytest.raises(UserError, match="no program 5 in bank 0"):
        find_preset(f, 5, 0)
