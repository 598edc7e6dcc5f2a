"""The benchmark harness (scripts/bench.py): a failing area is a row, not a crash; rows are cleaned;
the table names every row. And the benchmark MIDI generators are deterministic and the right size."""

from __future__ import annotations

import sys

import mido
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402
import make_bench_midi  # noqa: E402
import make_demo_midi  # noqa: E402


def test_failing_area_becomes_a_failed_row():
    res = bench.run_area("doesnotexist", quick=True, timeout=60)
    assert res["error"] and res["rows"][-1]["pass"] is False
    assert res["rows"][-1]["name"] == "doesnotexist: benchmark failed"
    table = bench.render_table({"machine": {"cpu": "test"}, "date": "today", "command": "python scripts/bench.py",
                                "quick": True, "areas": {"doesnotexist": res}})
    assert "| doesnotexist: benchmark failed | — |" in table and "missed: 1" in table


def test_rows_are_cleaned():
    r = bench._clean_row({"name": "x", "value": float("nan"), "unit": None, "pass": 1}, "a")
    assert r == {"name": "x", "value": None, "unit": "", "bar": "", "pass": True, "notes": ""}
    assert bench._clean_row("junk", "a")["pass"] is False


def test_generated_midi_is_deterministic_and_sized(tmp_path):
    a, b = make_bench_midi.build(5.0), make_bench_midi.build(5.0)
    a.save(str(tmp_path / "a.mid"))
    b.save(str(tmp_path / "b.mid"))
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()
    notes = sum(1 for tr in a.tracks for m in tr if m.type == "note_on" and m.velocity > 0)
    tempos = sum(1 for tr in a.tracks for m in tr if m.type == "set_tempo")
    pedal = sum(1 for tr in a.tracks for m in tr if m.type == "control_change" and m.control == 64)
    assert 270 <= a.length <= 330 and 5500 <= notes <= 6500 and tempos > 10 and pedal > 50
    demo = make_demo_midi.build()
    assert 20 <= demo.length <= 32
    demo.save(str(tmp_path / "demo.mid"))
    assert (tmp_path / "demo.mid").read_bytes() == (ROOT / "examples" / "demo.mid").read_bytes()
    assert isinstance(mido.MidiFile(str(tmp_path / "demo.mid")), mido.MidiFile)
