"""General MIDI routing (`synth.routing`): every program with the shipped presets, the fallback table
(an organ never lands on the marimba), channel 10, `--program-map` and `--drums`, bank select across a
family preset's sources, the routing table `render` prints, and the reset sysex a GM file starts with."""

from __future__ import annotations

import json

import mido
import numpy as np
import pytest

import synth.preset as preset_mod
from synth import gm
from synth.cli import main as cli_main
from synth.errors import UserError
from synth.midifile import RESET_GM, RESET_GM2, RESET_GS, RESET_XG, SYSRESET, read_midi
from synth.preset import find_preset, load_preset_dir
from synth.render import _dispatch, needed_presets
from synth.routing import Route, Router, bank_select, scan_uses
from synth.testing.tinymodel import make_tiny_preset

SHIPPED = ("piano", "marimba", "strings", "drums")


@pytest.fixture(scope="module")
def shipped():
    return [find_preset(n) for n in SHIPPED]


def _name(router: Router, route: Route | None) -> str | None:
    return None if route is None else router.label(route)


def test_every_program_with_the_shipped_presets(shipped):
    r = Router(shipped)
    for prog in range(128):
        route = r.resolve(0, 0, 0, prog)
        fam = gm.family_of(prog)
        own = {0: "piano", 1: "marimba", 5: "strings", 6: "strings"}.get(fam)
        assert route is not None and route.timbre is None
        if own is not None:
            assert (_name(r, route), route.fallback) == (own, ""), prog
        else:
            # every other family falls back, and the route says from which family to which preset
            assert route.fallback.startswith(f"{gm.FAMILIES[fam]}: none installed -> {_name(r, route)} ("), prog
        assert r.resolve(3, 0, 0, prog) == route and r.resolve(3, 5, 9, prog) == route   # any channel, any bank
    # the families it installs route exactly as gm.routing (bake --all) does
    assert {(0, p): n for p, n in r.program_map().items() if (0, p) in gm.routing(shipped)} == {
        k: v for k, v in gm.routing(shipped).items() if k[0] == 0}
    assert Router(shipped).describe([(0, 0, 0, p) for p in range(128)]) == r.describe([(0, 0, 0, p) for p in range(128)])


def test_an_organ_never_lands_on_the_marimba(shipped):
    r = Router(shipped)
    for prog in range(16, 24):
        route = r.resolve(0, 0, 0, prog)
        assert _name(r, route) == "strings", (prog, route)   # sustained: the strings hold a chord, like an organ
        assert route.fallback == "Organ: none installed -> strings (Ensemble, nearest family)"
    # without the strings the organ goes to the piano, still not to the marimba by program number
    no_strings = Router([p for p in shipped if p.name != "strings"])
    assert {_name(no_strings, no_strings.resolve(0, 0, 0, p)) for p in range(16, 24)} == {"piano"}
    # a guitar, plucked and decaying, takes the piano; a flute a sustained sound
    assert _name(r, r.resolve(0, 0, 0, 24)) == "piano" and _name(r, r.resolve(0, 0, 0, 73)) == "strings"


def test_the_fallback_table_is_complete():
    for f, order in enumerate(gm.FALLBACK_FAMILIES):
        assert sorted(order) == [g for g in range(16) if g != f]
    for prog in range(128):
        order = gm.fallback_families(prog)
        assert gm.family_of(prog) not in order and len(order) == 15 and len(set(order)) == 15
    assert gm.fallback_families(110)[0] == 5     # the fiddle tries the strings first


def test_last_resort_is_the_default_preset_and_no_pitched_preset_is_silence(tmp_path):
    odd = make_tiny_preset(tmp_path, "odd")               # no GM program known: belongs to no family
    kit = make_tiny_preset(tmp_path, "kit", kind="drums")
    r = Router([kit, odd])
    route = r.resolve(0, 0, 0, 40)
    assert (_name(r, route), route.fallback) == ("odd", "Strings: none installed -> odd (default preset)")
    only_kit = Router([kit])
    assert only_kit.resolve(0, 0, 0, 0) is None and only_kit.resolve(9, 0, 0, 0).preset == 0
    assert only_kit.describe([(0, 0, 0, 0)]) == [
        "ch  1 program 0 Acoustic Grand Piano -> silent  [fallback: no pitched preset loaded -> silent]"]


def test_channel_10_plays_the_kit_and_drums_overrides(shipped, tmp_path):
    r = Router(shipped)
    kit = SHIPPED.index("drums")
    for prog in range(128):
        route = r.resolve(9, 0, 0, prog)
        assert route.preset == kit and r.resolve(9, 3, 1, prog) == route   # bank select ignored on ch 10
        assert route.fallback == ("" if prog == 0 else f"{gm.kit_label(prog)}: none installed -> drums (default kit)")
    assert r.default(9) == Route(kit, None, "") and r.default(0) == Route(0, None, "")
    assert r.resolve(0, 128, 0, 5) == r.resolve(9, 0, 0, 5)   # bank 128 (XG drums) on any channel
    assert r.describe([(9, 0, 0, 25)]) == [
        "ch 10 kit 25 TR-808 Kit -> drums  [fallback: TR-808 Kit: none installed -> drums (default kit)]"]
    # a second kit: the --drums one plays every program, without a fallback note
    other = make_tiny_preset(tmp_path, "kit2", kind="drums")
    with_two = Router([*shipped, other], drums="kit2")
    assert {with_two.resolve(9, 0, 0, p) for p in (0, 25, 40)} == {Route(len(shipped), None, "")}
    assert Router([*shipped, other]).resolve(9, 0, 0, 0).preset == kit    # default: the first kit
    # no kit loaded: silent, as FluidSynth without a bank-128 preset, and the table says so
    pitched = Router([p for p in shipped if not p.is_drums])
    assert pitched.resolve(9, 0, 0, 0) is None and pitched.default(9) is None
    assert pitched.describe([(9, 0, 0, 0)]) == ["ch 10 kit 0 Standard Kit -> silent  [fallback: no drum kit loaded -> silent]"]
    for drums, msg in (("piano", "--drums piano: is a pitched preset, not a drum kit"),
                       ("nosuch", "--drums nosuch: preset 'nosuch' is not loaded")):
        with pytest.raises(UserError, match=msg):
            Router(shipped, drums=drums)


def test_program_map_overrides_those_programs(shipped):
    r = Router(shipped, program_map={19: "marimba", 0: "strings"})
    assert (_name(r, r.resolve(0, 0, 0, 19)), r.resolve(0, 0, 0, 19).fallback) == ("marimba", "")
    assert _name(r, r.resolve(0, 0, 0, 0)) == "strings" and _name(r, r.resolve(0, 7, 0, 0)) == "strings"
    assert _name(r, r.resolve(0, 0, 0, 18)) == "strings" and _name(r, r.resolve(0, 0, 0, 1)) == "piano"
    assert _name(r, r.resolve(9, 0, 0, 19)) == "drums"        # channel 10 keeps its kit
    with pytest.raises(UserError, match="program map 5=harp: preset 'harp' is not loaded"):
        Router(shipped, program_map={5: "harp"})
    with pytest.raises(UserError, match="program 128 must be a GM program 0..127"):
        Router(shipped, program_map={128: "piano"})


def _family(parent, name="keys"):
    """A tiny family preset: GM programs 0, 1 and 4 from FluidR3 (and a bank-8 variation of 4), 0 and 4
    from MuseScore."""
    p = make_tiny_preset(parent, name)
    m = json.loads((p.path / "preset.json").read_text())
    rows = [("Grand", "FluidR3_GM.sf2", 0, 0), ("Bright", "FluidR3_GM.sf2", 0, 1), ("EP1", "FluidR3_GM.sf2", 0, 4),
            ("MS Grand", "MuseScore_General.sf2", 0, 0), ("MS EP1", "MuseScore_General.sf2", 0, 4),
            ("Detuned EP1", "FluidR3_GM.sf2", 8, 4)]
    m["timbres"] = [{"name": n, "source": s, "bank": b, "program": g, "gm_kind": "pitched",
                     "latent": [0.1 * i] * p.latent_size} for i, (n, s, b, g) in enumerate(rows)]
    (p.path / "preset.json").write_text(json.dumps(m))
    return load_preset_dir(p.path)


def test_bank_select_picks_a_family_presets_source(tmp_path):
    piano, keys = make_tiny_preset(tmp_path, "piano"), _family(tmp_path)
    r = Router([piano, keys])
    at = lambda msb, prog, lsb=0: _name(r, r.resolve(0, msb, lsb, prog))   # noqa: E731
    assert at(0, 0) == "piano"                       # the single-instrument piano keeps program 0 bank 0
    assert at(1, 0) == "keys/MS Grand"               # bank MSB 1: the second source
    assert at(5, 0) == "keys/Grand" and at(127, 0) == "keys/Grand"   # a source it lacks: the first
    assert at(1, 0, lsb=7) == at(1, 0)               # the LSB is ignored (FluidSynth's gs style)
    assert at(0, 4) == "keys/EP1" and at(1, 4) == "keys/MS EP1" and at(8, 4) == "keys/Detuned EP1"
    assert at(0, 1) == "keys/Bright" and at(1, 1) == "keys/Bright"   # MuseScore has no program 1
    assert at(0, 2) == "keys/Bright" and at(0, 3) == "keys/EP1"   # same family: the nearest own program
    assert at(0, 7) == "keys/EP1" and r.resolve(0, 0, 0, 7).fallback == ""
    alone = Router([keys])                            # no single piano: keys plays program 0 in bank 0 too
    assert _name(alone, alone.resolve(0, 0, 0, 0)) == "keys/Grand"
    assert _name(alone, alone.resolve(0, 0, 0, 19)) == "keys/Grand"   # organ -> ... -> the piano family
    assert r.describe([(0, 1, 0, 4)]) == ["ch  1 bank 1 program 4 Electric Piano 1 -> keys/MS EP1"]


def _gm_file(path, sysex=True):
    mf = mido.MidiFile(type=0, ticks_per_beat=96)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    if sysex:
        tr.append(mido.Message("sysex", data=[0x7E, 0x7F, 0x09, 0x01]))
    tr += [mido.Message("program_change", program=19, channel=0),
           mido.Message("program_change", program=40, channel=2),      # never plays a note: not loaded
           mido.Message("note_on", note=60, velocity=100, channel=0, time=4),
           mido.Message("note_on", note=36, velocity=100, channel=9),
           mido.Message("note_on", note=67, velocity=100, channel=1),
           mido.Message("note_off", note=60, channel=0, time=48),
           mido.Message("note_off", note=36, channel=9),
           mido.Message("note_off", note=67, channel=1)]
    mf.save(str(path))
    return path


@pytest.fixture
def gm_dir(tmp_path, monkeypatch):
    """Tiny presets only (the repository's are hidden): piano, strings, marimba and a kit."""
    d = tmp_path / "presets"
    for name in ("piano", "strings", "marimba"):
        make_tiny_preset(d, name, note_seconds=0.25)
    make_tiny_preset(d, "kit", note_seconds=0.25, kind="drums")
    (tmp_path / "none").mkdir()
    monkeypatch.setattr(preset_mod, "REPO_PRESETS", tmp_path / "none")
    return d


def test_render_prints_the_routing_table_with_its_fallbacks(gm_dir, tmp_path, capfd):
    mid = _gm_file(tmp_path / "gm.mid")
    out = tmp_path / "out.wav"
    assert cli_main(["render", str(mid), "-o", str(out), "--preset-dir", str(gm_dir), "--no-progress",
                     "--sample-rate", "16000"]) == 0
    err = [ln for ln in capfd.readouterr().err.splitlines() if "routing:" in ln]
    assert err == [
        "synth render: routing: ch  1 program 19 Church Organ -> strings  "
        "[fallback: Organ: none installed -> strings (Ensemble, nearest family)]",
        "synth render: routing: ch  2 program 0 Acoustic Grand Piano -> piano",
        "synth render: routing: ch 10 kit 0 Standard Kit -> kit"]
    assert out.stat().st_size > 1000
    # only what the file plays is loaded (plus the default piano): not the marimba nor channel 3's violin
    installed = [load_preset_dir(gm_dir / n) for n in ("kit", "marimba", "piano", "strings")]
    uses = scan_uses(read_midi(mid))
    assert uses == [(0, 0, 0, 19), (1, 0, 0, 0), (9, 0, 0, 0)]
    assert [p.name for p in needed_presets(installed, {}, None, uses)] == ["kit", "piano", "strings"]
    # --preset piano alone: the organ falls back to it and channel 10 is silent, both in the table; -q: no table
    assert cli_main(["render", str(mid), "-o", str(out), "--preset-dir", str(gm_dir), "--no-progress",
                     "--preset", "piano", "--sample-rate", "16000"]) == 0
    err = capfd.readouterr().err
    assert "ch  1 program 19 Church Organ -> piano  [fallback: Organ: none installed -> piano (Piano, nearest" in err
    assert "ch 10 kit 0 Standard Kit -> silent  [fallback: no drum kit loaded -> silent]" in err
    assert cli_main(["render", str(mid), "-o", str(out), "--preset-dir", str(gm_dir), "--no-progress", "-q",
                     "--sample-rate", "16000", "--program-map", "19=marimba"]) == 0
    assert capfd.readouterr().err == ""


def test_reset_sysex_is_read_and_resets_the_scan(tmp_path):
    mf = mido.MidiFile(type=1, ticks_per_beat=96)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    for data in ([0x7E, 0x7F, 0x09, 0x01],                                      # GM System On
                 [0x7E, 0x10, 0x09, 0x03],                                      # GM2 System On (device 16)
                 [0x41, 0x10, 0x42, 0x12, 0x40, 0x00, 0x7F, 0x00, 0x41],        # GS Reset
                 [0x43, 0x10, 0x4C, 0x00, 0x00, 0x7E, 0x00],                    # XG System On
                 [0x41, 0x10, 0x42, 0x12, 0x40, 0x00, 0x7F, 0x00, 0x40],        # GS Reset, bad checksum
                 [0x7E, 0x7F, 0x09, 0x02],                                      # GM System Off
                 [0x41, 0x10, 0x42, 0x12, 0x40, 0x10, 0x15, 0x02, 0x19]):       # GS rhythm part: not a reset
        tr.append(mido.Message("sysex", data=data, time=10))
    tr.append(mido.Message("note_on", note=60, velocity=9, channel=3, time=10))
    mf.save(str(tmp_path / "resets.mid"))
    ev = read_midi(tmp_path / "resets.mid")
    assert [(k, c, a) for _, k, c, a, _ in ev.as_tuples()] == [
        ("system_reset", 0, RESET_GM), ("system_reset", 0, RESET_GM2), ("system_reset", 0, RESET_GS),
        ("system_reset", 0, RESET_XG), ("note_on", 3, 60)]
    np.testing.assert_allclose(ev.time[:4], np.arange(1, 5) * 10 / 96 * 0.5)
    assert int(ev.kind[0]) == SYSRESET


def test_scan_follows_bank_select_and_resets():
    class Ev:   # the columns of a MidiEvents
        def __init__(self, rows):
            self.kind, self.channel, self.a, self.b = (np.array(c) for c in zip(*rows, strict=True))

    on, cc, prog, reset = 0, 2, 3, SYSRESET
    rows = [(cc, 0, 0, 1), (on, 0, 60, 90),            # a bank select alone changes nothing yet
            (prog, 0, 4, 0), (on, 0, 60, 90),          # ... until the program change: bank 1 program 4
            (reset, 0, RESET_GM, 0), (on, 0, 60, 90),  # GM reset: program 0 bank 0
            (cc, 0, 0, 1), (prog, 0, 5, 0), (on, 0, 60, 90),   # GM mode ignores bank select
            (reset, 0, RESET_XG, 0), (cc, 0, 0, 127), (prog, 0, 0, 0), (on, 0, 36, 90),   # XG: MSB 127 -> kit
            (cc, 0, 0, 0), (cc, 0, 32, 3), (prog, 0, 1, 0), (on, 0, 61, 90)]              # XG: the LSB is the bank
    assert scan_uses(Ev(rows)) == [(0, 0, 0, 0), (0, 0, 0, 5), (0, 1, 0, 4), (0, 3, 0, 1), (0, 128, 0, 0)]
    assert [bank_select(s, 5, 3) for s in ("gs", "gm", "xg")] == [5, 0, 3] and bank_select("xg", 120, 0) == 128


def test_dispatch_hands_a_reset_to_the_engine(shipped):
    """A reset SysEx from a file reaches the engine at its frame: the channels go back to power-on,
    and bank select is read as the standard that reset names (FluidSynth's styles)."""
    from synth.engine import Engine

    piano = next(p for p in shipped if p.name == "piano")
    with Engine(sample_rate=48000, presets=[piano]) as e:
        e.control_change(0, 7, 20)
        e.render(64)
        _dispatch(e, SYSRESET, 0, RESET_GM, 0, 17)
        e.render(16)
        assert e.channels.volume[0] == 20, "applied before its frame"
        e.render(16)
        assert e.channels.volume[0] == 100 and e._bank_style == "gm"
        _dispatch(e, SYSRESET, 0, RESET_GS, 0, 0)
        e.render(16)
        assert e._bank_style == "gs"
    _dispatch(object(), SYSRESET, 0, RESET_GM, 0, 3)   # an engine without it ignores the reset


def test_engine_order_and_an_engine_without_a_router(shipped):
    """`routed` puts the preset channels start on first and the default kit next (an engine without a
    router plays both by position); such an engine gets the bank-0 routing as a program map."""
    from synth.render import engine_routing, routed

    alphabetical = sorted(shipped, key=lambda p: p.name)          # drums, marimba, piano, strings
    r = routed(alphabetical, {}, None)
    assert [p.name for p in r.presets] == ["piano", "drums", "marimba", "strings"]

    class Old:
        def __init__(self, presets=(), program_map=None):
            pass

    class New(Old):
        def __init__(self, presets=(), program_map=None, router=None):
            pass

    old = engine_routing(Old, r)
    assert "router" not in old and old["presets"] == r.presets
    assert old["program_map"][19] == "strings" and old["program_map"][0] == "piano" and len(old["program_map"]) == 128
    assert engine_routing(New, r) == {"presets": r.presets, "router": r}


def test_play_without_preset_loads_every_installed_preset_and_passes_the_router(gm_dir, tmp_path):
    """`python -m synth play` stopped at the engine: no --preset loads every installed preset (GM), and the
    engine gets the router (`synth.engine.Engine` takes one; `--drums` reaches it)."""
    import subprocess
    import sys

    from conftest import ROOT

    code = (f"import sys, synth.preset as P, synth.live as L; P.REPO_PRESETS = P.Path({str(tmp_path / 'none')!r})\n"
            "L.choose_output = lambda args, log: L.Output('auto', 'none', None, None, args.sample_rate, args.blocksize)\n"
            "def factory(**kw):\n"
            "    r = kw.get('router')\n"
            "    print('presets:', ','.join(p.name for p in kw['presets']), 'kit:', r and r.label(r.default(9)))\n"
            "    sys.exit(0)\n"
            "L._default_engine_factory = factory\n"
            "import synth.cli as C; raise SystemExit(C.main(['play', *sys.argv[1:]]))\n")
    run = lambda *a: subprocess.run([sys.executable, "-c", code, "--preset-dir", str(gm_dir), *a],   # noqa: E731
                                    capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                                    env={**__import__("os").environ, "JACK_NO_START_SERVER": "1"})
    r = run()
    assert r.returncode == 0 and r.stdout.strip() == "presets: piano,kit,marimba,strings kit: kit", r.stderr
    r = run("--preset", "strings", "--drums", "kit")
    assert r.returncode == 0 and r.stdout.strip() == "presets: strings,kit kit: kit", r.stderr
    r = run("--drums", "piano")
    assert r.returncode == 2 and "--drums piano: is a pitched preset, not a drum kit" in r.stderr
