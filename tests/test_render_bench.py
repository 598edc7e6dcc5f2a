"""The benchmark harness (scripts/bench.py): a failing area is a row, not a crash; rows are cleaned;
the table names every row. And the benchmark MIDI generators are deterministic and the right size."""

from __future__ import annotations

import json
import sys

import mido
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402
import bench_archs  # noqa: E402
import make_bench_midi  # noqa: E402
import make_demo_midi  # noqa: E402


def test_failing_area_becomes_a_failed_row():
    res = bench.run_area("doesnotexist", quick=True, timeout=60)
    assert res["error"] and res["rows"][-1]["pass"] is False
    assert res["rows"][-1]["name"] == "doesnotexist: benchmark failed"
    table = bench.render_table({"machine": {"cpu": "test"}, "date": "today", "command": "python scripts/bench.py",
                                "quick": True, "areas": {"doesnotexist": res}})
    assert "| doesnotexist: benchmark failed | — |" in table and "missed: 1" in table


def _comparison(minutes, results):
    return {"run": "today", "minutes_per_arch": minutes, "pitches": "28-96", "machine": {"cpu_count": 2},
            "command": f"python scripts/compare_archs.py --minutes {minutes}",
            "results": [{"arch": a, "steps": st, "onnx_mb": mb, "recipe": {"adv_weight": 0.3},
                         "eval": {"pitch_accuracy": pa, "log_mel_distance": lm, "diversity": 1.0,
                                  "ms_per_note": ms, "ms_per_88": 88 * ms}}
                        for a, st, pa, lm, ms, mb in results]}


def test_arch_side_by_side_table_has_a_column_per_arch_and_a_row_per_budget(tmp_path):
    (tmp_path / "arch_comparison-60min.json").write_text(json.dumps(_comparison(
        60, [("wavegan", 900, 0.2, 12.5, 36.0, 5.5), ("spectral", 230, 0.1, 20.0, 37.0, 11.9)])))
    (tmp_path / "arch_comparison-24min.json").write_text(json.dumps(_comparison(
        24, [("ddsp", 4809, 0.99, 6.05, 1.6, 3.8), ("wavegan", 400, 0.0, 15.0, 36.0, 5.5)])))
    (tmp_path / "arch_comparison.json").write_text("{}")   # not a budget file: ignored
    budgets = bench_archs.sources(tmp_path)
    assert [m for m, _ in budgets] == [24.0, 60.0]
    md = bench_archs.markdown(budgets)
    assert "| budget | metric | ddsp | wavegan | spectral |" in md
    # ddsp was not run at 60 minutes: a dash, not a number borrowed from another budget.
    assert "| 60 min | log-mel distance to real test notes (dB) | – | **12.50** | 20.00 |" in md
    assert "| 24 min | log-mel distance to real test notes (dB) | **6.05** | 15.00 | – |" in md
    assert "| 24 min | training steps | 4809 | 400 | – |" in md
    # Speed and size come from each arch's longest run.
    assert "| any | generator.onnx (MB) | 3.8 | 5.5 | 11.9 |" in md


def test_an_area_can_add_a_summary_table_above_its_rows():
    res = bench.run_area("archs", quick=True, timeout=120)
    assert res["error"] is None and res["markdown"].count("| budget | metric |") == 1
    table = bench.render_table({"machine": {"cpu": "test"}, "date": "today", "command": "python scripts/bench.py",
                                "quick": True, "areas": {"archs": res}})
    assert table.index("| budget | metric |") < table.index("| name | value | unit |")
    assert any(r["name"].startswith("archs ddsp @ 15 min") for r in res["rows"])


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


def test_long_runs_are_recorded_per_step_and_tabled(tmp_path):
    """scripts/record_run.py keeps one point per (task, step), replacing a re-measured one; the archs
    area turns each into a row and a line of its table."""
    import record_run

    path = tmp_path / "long_runs.json"

    def point(steps, lm):
        return {"at_steps": steps, "exported_step": steps - 500, "train_minutes": steps / 200, "date": "today",
                "cpu_count": 2, "eval_command": "python -m trainer eval PRESET --data data/piano",
                "eval": {"log_mel_distance": lm, "log_mel_distance_random": lm + 0.2,
                         "log_mel_distance_random_std": 0.05, "pitch_accuracy": 1.0},
                "curve": [[steps - 500, lm - 0.3, 1.0], [steps, lm - 0.1, 1.0]]}

    meta = {"label": "GM piano, piano recipe", "bar": "<= 5.5 dB", "commands": ["fit"]}
    record_run.record("piano", point(12000, 6.0), meta, path)
    record_run.record("piano", point(4809, 6.5), meta, path)
    record_run.record("piano", point(12000, 5.9), meta, path)
    doc = json.loads(path.read_text())
    assert [p["at_steps"] for p in doc["tasks"]["piano"]["points"]] == [4809, 12000]
    rows, md = bench_archs.long_run_rows(path)
    assert [r["name"] for r in rows] == ["long runs piano @ 4809 steps: test log-mel distance",
                                         "long runs piano @ 12000 steps: test log-mel distance"]
    assert rows[1]["value"] == 5.9 and "6.10 ± 0.05" in rows[1]["notes"]
    assert "| GM piano, piano recipe | 12000 | 60.0 | 5.90 | 6.10 ± 0.05 | 1.000 | 5.60 | <= 5.5 dB |" in md
    assert bench_archs.long_run_rows(tmp_path / "none.json") == ([], "")


def test_speed_and_size_are_added_to_a_recorded_point_and_judged(tmp_path, capsys):
    """`record_run.py --speed` merges speed into the point at a step (no point: an error naming the
    file); the archs area judges each task's latest such point by the issue's bars, saying by how much
    a figure misses."""
    import record_run

    path = tmp_path / "long_runs.json"
    base = {"exported_step": 5000, "date": "today", "cpu_count": 2, "eval_command": "eval",
            "eval": {"log_mel_distance": 6.0}, "curve": []}
    record_run.record("wg", {**base, "at_steps": 6000}, {"label": "WaveGAN kit"}, path)
    record_run.record("wg", {**base, "at_steps": 3000}, {}, path)
    speed = {"ms_per_note": 8.6, "ms_per_88": 1500.0, "ms_per_88_all_cores": 900.0, "onnx_mb": 7.1,
             "speed_date": "now"}
    assert record_run.add_speed("wg", 6000, dict(speed), path) == 0
    with pytest.raises(SystemExit, match="no point of task 'wg' at step 123"):
        record_run.add_speed("wg", 123, dict(speed), path)
    pts = json.loads(path.read_text())["tasks"]["wg"]["points"]
    assert "ms_per_note" not in pts[0]["eval"] and pts[1]["eval"]["ms_per_88"] == 1500.0 and pts[1]["onnx_mb"] == 7.1
    rows, md = bench_archs.long_run_rows(path)
    got = {r["name"]: r for r in rows}
    assert got["long runs wg: ms per note (CPU, 1 thread)"]["pass"] is True
    miss = got["long runs wg: ms per 88 keys (CPU, 1 thread)"]
    assert miss["pass"] is False and miss["notes"].startswith("misses by 500 ms (1.50x the bar)")
    assert got["long runs wg: generator.onnx"]["value"] == 7.1
    assert "| WaveGAN kit | 5000 | 8.6 | 1500 | 7.1 | now |" in md
