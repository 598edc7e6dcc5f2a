"""`python -m synth render` end to end on a tiny preset, block-size independence through the MIDI file
path, timing of type 0/1 files with tempo changes, every bad input as exit 2 + one line, and
`python -m synth presets`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT

from synth.cli import main as cli_main
from synth.render import parse_gain, parse_knobs, parse_normalize, parse_program_map, render_file
from synth.testing.tinymodel import make_tiny_preset

SR = 16000  # the tiny preset's own rate: no resampling, so onsets are exact


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("presets")
    make_tiny_preset(d, "piano", note_seconds=0.25)
    make_tiny_preset(d, "organ", note_seconds=0.25, sustain_mode="loop", seed=3)
    make_tiny_preset(d, "kit", note_seconds=0.25, kind="drums")
    return d


def _file(path: Path, midi_type: int = 1) -> Path:
    """A short busy file: tempo changes, sustain, bend, a knob move, a program change, a one-tick note."""
    tpq = 96
    mf = mido.MidiFile(type=midi_type, ticks_per_beat=tpq)
    meta, notes = mido.MidiTrack(), mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=400_000, time=0))
    meta.append(mido.MetaMessage("set_tempo", tempo=200_000, time=tpq))
    ev = [(0, mido.Message("note_on", note=60, velocity=100)),
          (13, mido.Message("note_on", note=67, velocity=40, channel=1)),
          (30, mido.Message("control_change", control=64, value=127)),
          (40, mido.Message("note_off", note=60)),
          (50, mido.Message("pitchwheel", pitch=2000, channel=1)),
          (61, mido.Message("control_change", control=74, value=0)),
          (70, mido.Message("note_on", note=64, velocity=127)),
          (90, mido.Message("control_change", control=64, value=0)),
          (101, mido.Message("program_change", program=16)),
          (102, mido.Message("note_on", note=72, velocity=90)),
          (103, mido.Message("note_off", note=72)),
          (120, mido.Message("note_off", note=64)),
          (121, mido.Message("note_off", note=67, channel=1))]
    last = 0
    for t, m in ev:
        notes.append(m.copy(time=t - last))
        last = t
    if midi_type == 0:
        merged = mido.MidiTrack(mido.merge_tracks([meta, notes]))
        mf.tracks.append(merged)
    else:
        mf.tracks += [meta, notes]
    mf.save(str(path))
    return path


def _read(path) -> np.ndarray:
    x, sr = sf.read(str(path), dtype="float32")
    return x


def test_render_cli_end_to_end(presets, tmp_path):
    mid = _file(tmp_path / "in.mid")
    out = tmp_path / "out.wav"
    r = subprocess.run([sys.executable, "-m", "synth", "render", str(mid), "-o", str(out), "--preset", "piano",
                        "--preset-dir", str(presets), "--sample-rate", "22050", "--format", "pcm24", "--no-progress",
                        "--knob", "74=0.3"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}")
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (22050, 2, "PCM_24", "WAV")
    end = 0.4 + 0.2 * (121 - 96) / 96  # last event: 96 ticks at 0.4 s/beat, then 0.2 s/beat
    assert end * 22050 < info.frames < (end + 1.0) * 22050
    x = _read(out)
    assert np.sqrt(np.mean(x ** 2)) > 1e-3 and np.abs(x).max() <= 1.0
    assert np.abs(x[-64:]).max() < 1e-3  # ends in silence: the tail was rendered out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_the_output_mode_follows_the_umask_without_setting_it(presets, tmp_path, monkeypatch):
    """The file gets the mode the umask asks for, read without os.umask: setting the umask, even to
    read it back at once, is process-wide, and another thread creating a file meanwhile gets mode 0666."""
    want = 0o666 & ~_umask()

    def umask(mask):
        raise AssertionError("render_file set the process umask")

    monkeypatch.setattr(os, "umask", umask)
    out = tmp_path / "out.wav"
    render_file(_file(tmp_path / "in.mid"), out, preset="piano", preset_dirs=[presets], sample_rate=SR)
    assert (out.stat().st_mode & 0o777) == want


def test_flac_output(presets, tmp_path):
    out = tmp_path / "out.flac"
    render_file(_file(tmp_path / "in.mid"), out, preset_dirs=[presets], sample_rate=SR, fmt="pcm16")
    info = sf.info(str(out))
    assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_16", SR)


def test_block_size_independent_through_the_midi_path(presets, tmp_path):
    mid = _file(tmp_path / "in.mid")
    outs = {}
    for bs in (8193, 1, 64, 65, 128):
        out = tmp_path / f"bs{bs}.wav"
        render_file(mid, out, preset_dirs=[presets], sample_rate=SR, fmt="float", blocksize=bs,
                    program_map={1: "organ"})
        outs[bs] = _read(out)
    ref = outs[8193]
    assert np.abs(ref).max() > 0.01
    for bs, x in outs.items():
        assert x.shape == ref.shape and np.array_equal(x, ref), f"block size {bs} changed the output"


def test_effects_keep_block_independence_and_timing(presets, tmp_path):
    mid = _file(tmp_path / "in.mid")
    dry = _read(render_file(mid, tmp_path / "dry.wav", preset_dirs=[presets], sample_rate=SR, fmt="float").path)
    wets = [_read(render_file(mid, tmp_path / f"wet{bs}.wav", preset_dirs=[presets], sample_rate=SR, fmt="float",
                              blocksize=bs, fx="reverb=0.5,chorus").path) for bs in (8193, 65)]
    assert np.array_equal(wets[0], wets[1])
    # The effects' FIFO latency is removed: the first sound comes at the same frame, and the
    # reverb makes the render longer.
    first = [int(np.flatnonzero(np.abs(x[:, 0]) > 1e-6)[0]) for x in (dry, wets[0])]
    assert abs(first[0] - first[1]) <= 1
    assert len(wets[0]) > len(dry) + SR // 10


def _onsets(x: np.ndarray, gap: int = 400) -> list[int]:
    """Frames where sound starts after at least `gap` silent frames."""
    loud = np.flatnonzero(np.abs(x).max(axis=1) > 1e-6)
    if len(loud) == 0:
        return []
    starts = [int(loud[0])] + [int(b) for a, b in zip(loud[:-1], loud[1:], strict=True) if b - a > gap]
    return starts


@pytest.mark.parametrize("midi_type", [0, 1])
def test_tempo_changes_timed_to_the_sample(presets, tmp_path, midi_type):
    # Three short notes: one in each tempo segment (0.5 s/beat, 0.25 s/beat, then 1.0 s/beat).
    tpq = 120
    meta = [(0, mido.MetaMessage("set_tempo", tempo=500_000)), (2 * tpq, mido.MetaMessage("set_tempo", tempo=250_000)),
            (4 * tpq, mido.MetaMessage("set_tempo", tempo=1_000_000))]
    notes = []
    for tick in (tpq, 3 * tpq + 7, 4 * tpq + 33):
        notes += [(tick, mido.Message("note_on", note=69, velocity=127)), (tick + 5, mido.Message("note_off", note=69))]
    expect_s = [0.5, 1.0 + 0.25 * 127 / tpq, 1.5 + 33 / tpq]
    mf = mido.MidiFile(type=midi_type, ticks_per_beat=tpq)
    tracks = [meta, notes] if midi_type == 1 else [sorted(meta + notes, key=lambda e: e[0])]
    for evs in tracks:
        tr, last = mido.MidiTrack(), 0
        for t, m in evs:
            tr.append(m.copy(time=t - last))
            last = t
        mf.tracks.append(tr)
    mid = tmp_path / "timing.mid"
    mf.save(str(mid))
    x = _read(render_file(mid, tmp_path / "t.wav", preset_dirs=[presets], sample_rate=SR, fmt="float").path)
    got = _onsets(x)
    want = [round(s * SR) for s in expect_s]
    assert len(got) == 3
    # The tiny note starts at phase 0 with a linear attack: its first non-zero sample is frame + 1.
    assert all(abs(g - w) <= 1 for g, w in zip(got, want, strict=True)), (got, want)


def test_knob_changes_the_sound(presets, tmp_path):
    mid = _file(tmp_path / "in.mid")
    a = _read(render_file(mid, tmp_path / "a.wav", preset_dirs=[presets], sample_rate=SR, fmt="float",
                          knobs=parse_knobs(["70=0.0"])).path)
    b = _read(render_file(mid, tmp_path / "b.wav", preset_dirs=[presets], sample_rate=SR, fmt="float",
                          knobs=parse_knobs(["70=1.0"])).path)
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-3


def test_drum_channel_plays_the_kit(presets, tmp_path):
    mf = mido.MidiFile(type=0, ticks_per_beat=96)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    for i, key in enumerate((36, 38, 42, 38)):
        tr.append(mido.Message("note_on", note=key, velocity=110, channel=9, time=0 if i == 0 else 48))
        tr.append(mido.Message("note_off", note=key, channel=9, time=10))
    mid = tmp_path / "drums.mid"
    mf.save(str(mid))
    kit = _read(render_file(mid, tmp_path / "kit.wav", preset_dirs=[presets], sample_rate=SR, fmt="float",
                            drums="kit").path)
    plain = _read(render_file(mid, tmp_path / "plain.wav", preset_dirs=[presets], sample_rate=SR, fmt="float",
                              preset=None).path)
    assert np.abs(kit).max() > 0.01
    np.testing.assert_array_equal(plain, kit)       # GM routing: channel 10 plays the installed kit
    # Only a piano loaded: channel 10 has no kit, and is silent, as FluidSynth is without a drum bank.
    only = _read(render_file(mid, tmp_path / "only.wav", preset_dirs=[presets], sample_rate=SR, fmt="float",
                             preset="piano").path)
    assert np.abs(only).max() == 0.0


def test_parsers():
    assert parse_knobs(["74=0.3", "1=100,71=0.5"]) == [(74, 38), (1, 100), (71, 64)]
    # the spelling says the unit: a decimal point or % is a fraction, a bare integer a CC value
    assert parse_knobs(["74=30%", "74=1", "74=1.0", "74=1.", "74=.5", "74=0", "74=100%", "74=0%"]) == [
        (74, 38), (74, 1), (74, 127), (74, 127), (74, 64), (74, 0), (74, 127), (74, 0)]
    assert parse_program_map("0=piano, 48=strings") == {0: "piano", 48: "strings"}


def _bad_midi(tmp_path: Path, kind: str) -> Path:
    good = _file(tmp_path / "good.mid").read_bytes()
    data = {
        "corrupt": good[:14] + b"MTrk\x00\x00\x00\x04\x00\xf4\x00\x00",
        "truncated": good[:-9],
        "empty": b"",
        "not_midi": b"RIFF....WAVEfmt " + bytes(100),
        "random": np.random.default_rng(5).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "zero_division": good[:12] + b"\x00\x00" + good[14:],
        "type2": good[:8] + b"\x00\x02" + good[10:],
        "huge_header": b"MThd\x7f\xff\xff\xff" + good[8:],
    }[kind]
    if kind == "corrupt":
        data = data[:10] + b"\x00\x01" + data[12:]
    p = tmp_path / f"{kind}.mid"
    p.write_bytes(data)
    return p


BAD_ARGS = {
    # name: (extra args or a callable(tmp_path) -> args, expected text in the message)
    "corrupt": ("corrupt", "corrupt"),
    "truncated": ("truncated", "truncated"),
    "empty": ("empty", "empty"),
    "not_midi": ("not_midi", "not a MIDI file"),
    "random": ("random", "not a MIDI file"),
    "zero_division": ("zero_division", "time division is 0"),
    "type2": ("type2", "type 2"),
    "huge_header": ("huge_header", "header declares"),
    "missing_file": (["nope.mid"], "no such file"),
    "unknown_preset": (["--preset", "harpsichord"], "known presets: "),
    "drums_not_a_kit": (["--drums", "organ"], "not a drum kit"),
    "preset_as_path": (["--preset", "../.."], "not a preset name"),
    "preset_as_abs_path": (["--preset", "/etc/passwd"], "not a preset name"),
    "output_folder_missing": (["-o", "{tmp}/no/such/dir/out.wav"], "does not exist"),
    "output_unwritable": (["-o", "/proc/neural-synth-test.wav"], "cannot create a file in /proc"),
    "output_is_folder": (["-o", "{tmp}"], "is a folder"),
    "output_bad_suffix": (["-o", "{tmp}/out.mp3"], "use .wav or .flac"),
    "flac_float": (["-o", "{tmp}/out.flac", "--format", "float"], "FLAC stores integer"),
    "bad_format": (["--format", "pcm8"], "invalid choice"),
    "sample_rate_low": (["--sample-rate", "7999"], "out of range 8000..192000"),
    "sample_rate_high": (["--sample-rate", "192001"], "out of range 8000..192000"),
    "sample_rate_text": (["--sample-rate", "48k"], "not a whole number"),
    "knob_no_value": (["--knob", "74"], "expected CC=VALUE"),
    "knob_text": (["--knob", "74=loud"], "expected CC=VALUE"),
    "knob_cc_range": (["--knob", "200=0.5"], "0..127"),
    "knob_fraction_range": (["--knob", "74=1.5"], "0..1"),
    "knob_value_range": (["--knob", "74=128"], "0..127"),
    # issue 19 item 6: an unambiguous --knob; a CC that is no knob of the preset is refused
    "knob_sustain": (["--knob", "64=127"],
                     "no loaded preset has a knob on CC 64 (CC 64 is the sustain pedal); their knobs: piano: CC 74 brightness, "
                     "CC 70 colour"),
    "knob_not_on_any_preset": (["--preset", "piano", "--preset", "organ", "--knob", "20=0.5"],
                               "no loaded preset has a knob on CC 20; their knobs: piano: CC 74 brightness"),
    "knob_bare_cc": (["--knob", "74"], "expected CC=VALUE"),
    "knob_cc_text": (["--knob", "x=1"], "--knob 'x': not a whole number"),
    "knob_value_text": (["--knob", "74=abc"], "expected CC=VALUE"),
    "knob_exponent": (["--knob", "74=1e-1"], "expected CC=VALUE"),
    "knob_fraction_over_1": (["--knob", "74=1.5"], "a fractional value must be 0..1"),
    "knob_value_200": (["--knob", "74=200"], "a CC value must be 0..127"),
    "knob_percent_range": (["--knob", "74=120%"], "a percentage must be 0..100%"),
    "gain_text": (["--gain", "loud"], "--gain 'loud': not a number"),
    "gain_range": (["--gain", "100"], "choose -60..24 dB"),
    "gain_nan": (["--gain", "nan"], "choose -60..24 dB"),
    "normalize_mode": (["--normalize", "rms"], "unknown mode"),
    "normalize_target_text": (["--normalize", "peak:loud"], "'loud' is not a number"),
    "normalize_target_range": (["--normalize", "lufs:5"], "choose a target of -60..0 LUFS"),
    "program_map_syntax": (["--program-map", "piano"], "expected PROGRAM=PRESET"),
    "program_map_program": (["--program-map", "x=piano"], "not a whole number"),
    "program_map_range": (["--program-map", "128=piano"], "0..127"),
    "program_map_unknown": (["--program-map", "0=nosuch"], "unknown preset 'nosuch'"),
    "blocksize_zero": (["--blocksize", "0"], "--blocksize"),
    "missing_output_flag": (["--no-o"], "required: -o"),
    "bad_fx": (["--fx", "flanger"], "unknown effect"),
    "no_notes": ("no_notes", "no notes"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_input_exits_2_with_one_line_and_no_output(presets, tmp_path, capfd, case):
    spec, expect = BAD_ARGS[case]
    good = _file(tmp_path / "good.mid")
    out = tmp_path / "out.wav"
    out.write_bytes(b"previous render")  # must survive a failed render untouched
    inp, extra = str(good), []
    if isinstance(spec, str) and spec == "no_notes":
        mf = mido.MidiFile(type=0)
        mf.tracks.append(mido.MidiTrack([mido.Message("control_change", control=7, value=100)]))
        inp = str(tmp_path / "silent.mid")
        mf.save(inp)
    elif isinstance(spec, str):
        inp = str(_bad_midi(tmp_path, spec))
    elif spec[0] == "nope.mid":
        inp = str(tmp_path / "nope.mid")
    else:
        extra = [a.replace("{tmp}", str(tmp_path)) for a in spec]
    argv = ["render", inp, "--preset-dir", str(presets), "--no-progress"]
    if "-o" not in extra and "--no-o" not in extra:
        argv += ["-o", str(out)]
    argv += [a for a in extra if a != "--no-o"]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = cli_main(argv)
    err = capfd.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temp file left behind
    assert out.read_bytes() == b"previous render"


def test_a_bad_midi_file_is_reported_before_a_bad_preset(presets, tmp_path, capfd):
    bad = _bad_midi(tmp_path, "zero_division")
    rc = cli_main(["render", str(bad), "-o", str(tmp_path / "o.wav"), "--preset", "nosuch",
                   "--preset-dir", str(presets)])
    err = capfd.readouterr().err
    assert rc == 2 and "time division is 0" in err and len(err.strip().splitlines()) == 1


def test_bad_input_in_a_real_process(presets, tmp_path):
    bad = _bad_midi(tmp_path, "truncated")
    r = subprocess.run([sys.executable, "-m", "synth", "render", str(bad), "-o", str(tmp_path / "o.wav"),
                        "--preset-dir", str(presets)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert str(bad) in r.stderr and not (tmp_path / "o.wav").exists()


def test_presets_listing(presets, tmp_path, capfd):
    broken = tmp_path / "more" / "broken"
    broken.mkdir(parents=True)
    (broken / "preset.json").write_text('{"format": "neural-synth-preset", "version": 1}')
    make_tiny_preset(tmp_path / "more", "rated")
    mf = tmp_path / "more" / "rated" / "preset.json"
    m = json.loads(mf.read_text())
    m["metrics"] = {"pitch_accuracy": 0.97, "ms_per_note": 8.14, "eval": {"split": "test"}}
    mf.write_text(json.dumps(m))
    rc = cli_main(["presets", "--preset-dir", str(presets), "--preset-dir", str(tmp_path / "more")])
    out = capfd.readouterr().out.splitlines()
    assert rc == 0
    by_name = {ln.split()[0]: ln for ln in out}
    assert {"piano", "organ", "broken"} <= set(by_name)
    assert "pitched" in by_name["piano"] and "MIDI 21-108" in by_name["piano"] and "16000 Hz" in by_name["piano"]
    assert "z=8" in by_name["piano"] and "74:brightness" in by_name["piano"] and str(presets) in by_name["piano"]
    assert "BROKEN" in by_name["broken"] and "missing required field" in by_name["broken"]
    assert "pitch_accuracy=0.97" in by_name["rated"] and "ms_per_note=8.14" in by_name["rated"]


# ---- issue 19 item 6: several presets, --gain, --normalize ----------------------------------------------
def _cli_render(mid, out, presets, *extra) -> int:
    return cli_main(["render", str(mid), "-o", str(out), "--preset-dir", str(presets), "--sample-rate", str(SR),
                     "--no-progress", "-q", *extra])


def test_several_presets_load_like_play(presets, tmp_path):
    """`--preset piano --preset organ` loads both (before, the last one won): piano plays until the file's
    program change 16 (GM organ) switches channel 1 to organ."""
    mid = _file(tmp_path / "in.mid")
    assert _cli_render(mid, tmp_path / "both.wav", presets, "--preset", "piano", "--preset", "organ",
                       "--format", "float") == 0
    both = _read(tmp_path / "both.wav")
    piano = _read(render_file(mid, tmp_path / "p.wav", preset="piano", preset_dirs=[presets], sample_rate=SR,
                              fmt="float").path)
    organ = _read(render_file(mid, tmp_path / "o.wav", preset="organ", preset_dirs=[presets], sample_rate=SR,
                              fmt="float").path)
    before_change = int(0.4 * SR)   # the program change is at 0.41 s
    np.testing.assert_allclose(both[:before_change], piano[:before_change], atol=1e-5)
    assert np.abs(both[:before_change] - organ[:before_change]).max() > 1e-3
    n = min(len(both), len(piano))
    assert np.abs(both[before_change:n] - piano[before_change:n]).max() > 1e-3   # the organ after the change


def test_the_first_preset_is_the_channels_default_and_a_knob_reaches_every_preset(presets, tmp_path):
    """A knob moves every loaded preset (as `play`'s), not only the one the channels start on."""
    mid = _file(tmp_path / "in.mid")
    a = _read(render_file(mid, tmp_path / "a.wav", preset=["piano", "organ"], preset_dirs=[presets],
                          sample_rate=SR, fmt="float", knobs=parse_knobs(["70=0.0"])).path)
    b = _read(render_file(mid, tmp_path / "b.wav", preset=["piano", "organ"], preset_dirs=[presets],
                          sample_rate=SR, fmt="float", knobs=parse_knobs(["70=1.0"])).path)
    start = int(0.42 * SR)   # after the program change to organ (the knob CC 74 moves in the file too)
    n = min(len(a), len(b))
    assert np.abs(a[start:n] - b[start:n]).max() > 1e-4   # the organ's one-tick note: small, but not float noise


def test_gain_plus_6_db_doubles_the_samples(presets, tmp_path):
    mid = _file(tmp_path / "in.mid")
    assert _cli_render(mid, tmp_path / "a.wav", presets, "--format", "float") == 0
    assert _cli_render(mid, tmp_path / "b.wav", presets, "--format", "float", "--gain", "6") == 0
    a, b = _read(tmp_path / "a.wav"), _read(tmp_path / "b.wav")
    assert a.shape == b.shape
    assert 0.05 < np.abs(b).max() < 0.9   # below the limiter's knee: the gain alone
    np.testing.assert_allclose(b, a * 10 ** (6 / 20), atol=1e-6)
    assert abs(np.abs(b).max() / np.abs(a).max() - 2.0) < 0.01
    assert parse_gain("-3.5") == -3.5


@pytest.mark.parametrize("fmt", ["float", "pcm16"])
def test_normalize_peak(presets, tmp_path, fmt):
    mid = _file(tmp_path / "in.mid")
    assert _cli_render(mid, tmp_path / "out.wav", presets, "--format", fmt, "--normalize", "peak:-1") == 0
    x = _read(tmp_path / "out.wav")
    assert abs(20 * np.log10(np.abs(x).max()) - (-1.0)) < 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mid", "out.wav"]   # no intermediate left
    assert parse_normalize("peak") == ("peak", -1.0)


def test_normalize_lufs_measured_by_pyloudnorm(presets, tmp_path, capfd):
    pyloudnorm = pytest.importorskip("pyloudnorm")
    mid = _file(tmp_path / "in.mid")
    rc = cli_main(["render", str(mid), "-o", str(tmp_path / "out.wav"), "--preset-dir", str(presets),
                   "--sample-rate", str(SR), "--no-progress", "--format", "float", "--normalize", "lufs"])
    assert rc == 0
    assert "normalized lufs -16:" in capfd.readouterr().out
    x, sr = sf.read(str(tmp_path / "out.wav"), dtype="float64")
    assert abs(pyloudnorm.Meter(sr).integrated_loudness(x) - (-16.0)) < 0.5
    assert parse_normalize("lufs:-23") == ("lufs", -23.0)
    # the same render at another target: only the scale differs
    assert _cli_render(mid, tmp_path / "quiet.wav", presets, "--format", "float", "--normalize", "lufs:-26") == 0
    q = _read(tmp_path / "quiet.wav")
    np.testing.assert_allclose(q * 10 ** (10 / 20), x, atol=1e-4)
