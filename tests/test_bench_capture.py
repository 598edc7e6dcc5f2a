"""scripts/bench_capture.py's pure helpers: the summary and program rows from given figures, the skip
row, the capture command. No capture and no FluidSynth runs."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench_capture as bc  # noqa: E402


def _fig(program, gain, pitch=1.0, seconds=141.0, nearest_db=10.0):
    return {"program": program, "program_name": f"P{program}", "nearest": "Clavinet", "given_nearest": 11.0,
            "given_captured": 9.0, "other_nearest": nearest_db, "other_captured": nearest_db - gain,
            "gain": gain, "pitch_acc": pitch, "seconds": seconds, "steps": 90}


def test_summary_counts_gains_and_passes_on_the_documented_table():
    gains = [2.29, 0.08, 2.54, 0.06, 2.34, 1.78, 1.49, 1.66]    # docs/decisions-trainer.md, TimGM6mb 0-7
    row = bc.summary_row([_fig(i, g) for i, g in enumerate(gains)])
    assert abs(row["value"] - 1.53) < 1e-3 and row["unit"] == "dB"
    assert row["pass"] is True
    assert "6 of 8 clear 1 dB" in row["notes"] and "slowest 141 s" in row["notes"]


def test_summary_fails_on_pitch_time_or_mean_gain():
    good = [_fig(0, 2.0), _fig(1, 1.5)]
    assert bc.summary_row(good)["pass"] is True
    assert bc.summary_row(good + [_fig(2, 2.0, pitch=0.9)])["pass"] is False
    assert bc.summary_row(good + [_fig(2, 2.0, seconds=181.0)])["pass"] is False
    assert bc.summary_row([_fig(0, 0.5), _fig(1, 0.9)])["pass"] is False


def test_summary_of_nothing_is_an_unjudged_row():
    row = bc.summary_row([])
    assert row["value"] is None and row["pass"] is None


def test_program_row_value_is_the_gain_and_bar_is_one_db():
    row = bc.program_row(_fig(4, 2.34))
    assert row["value"] == 2.34 and row["pass"] is True and row["name"].startswith("capture: program 4 P4")
    assert "nearest Clavinet" in row["notes"] and "pitch acc. 1.00" in row["notes"]
    assert bc.program_row(_fig(1, 0.08))["pass"] is False


def test_missing_soundfont_gives_one_skip_row(tmp_path):
    got = bc.run(quick=True, sf2=tmp_path / "nope.sf2")
    assert len(got["rows"]) == 1
    row = got["rows"][0]
    assert row["pass"] is None and row["value"] is None and "no SoundFont" in row["notes"]


def test_capture_command_names_the_given_keys_and_budget(tmp_path):
    cmd = bc.capture_command(tmp_path / "x.sf2", 3, tmp_path, 60.0)
    s = " ".join(cmd)
    assert "-m trainer capture" in s and "--program 3" in s and "--base keys" in s
    assert "--pitches 36,43,50,57,64,71,78,85" in s and "--seconds 60" in s and "--force" in s
    assert "--preset cap3" in s
