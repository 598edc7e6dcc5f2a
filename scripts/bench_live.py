"""Live-playing benchmarks for `make bench`: the JACK probe of `scripts/latency_probe.py` as rows.

    python scripts/bench_live.py [--quick]

`run(quick)` returns rows for `scripts/bench.py`. Quick mode plays fewer notes and a 10-second
session instead of 60 seconds. Uses the shipped `presets/piano` when it exists, else the tiny test
preset; the notes say which.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _row(name, value, unit, bar, ok, notes):
    return {"name": name, "value": None if value is None else float(value), "unit": unit, "bar": bar,
            "pass": ok, "notes": notes}


def rows_from(res: dict) -> list[dict]:
    which = f"preset {res['preset']} from {res['preset_dir']}"
    lat, miss, ses = res["latency_128"], res["miss_128"], res["session_512"]
    def valid(r):   # every note measured from silence (or lost next to a JACK xrun), none before its key
        return (r.get("measured", r["sounded"]) + r.get("near_xrun", 0) >= r["notes"] and r.get("measured", 1) > 0
                and not r.get("not_silent") and not r.get("negative"))

    def validity(r):
        return (f"{r.get('measured', r['sounded'])}/{r['notes']} notes measured, each pressed in silence "
                f"({r.get('spacing_ms', 120):.0f} ms apart; not silent before the key: {r.get('not_silent', '?')}, "
                f"negative: {r.get('negative', '?')}, left out next to a JACK xrun: {r.get('near_xrun', 0)})")

    rows = [
        _row("live.latency_median_128", lat["latency_ms_median"], "ms", "<= 8 ms",
             valid(lat) and lat["latency_ms_median"] <= 8.0,
             f"JACK dummy 48 kHz, period 128 ({lat['period_ms']:.2f} ms): MIDI send frame -> first frame of the "
             f"note (onset minus the attack's offline onset bias), cached notes at random offsets; {validity(lat)}; "
             f"engine latency {lat['engine_latency_samples']} samples; {which}"),
        _row("live.jitter_p95_p5_128", lat["jitter_ms"], "ms", "<= 1 ms", valid(lat) and lat["jitter_ms"] <= 1.0,
             f"min {lat.get('latency_ms_min', float('nan')):.3f} ms, p5 {lat['latency_ms_p5']:.3f} ms, p95 "
             f"{lat['latency_ms_p95']:.3f} ms, max {lat['latency_ms_max']:.3f} ms; "
             f"xruns during the run: synth {lat['xruns_synth']}, JACK {lat['xruns_jack']} (not judged at 128)"),
        *_direct_rows(res.get("direct_128")),
        _row("live.callback_p99_128", None if lat["load"]["p99"] is None else 100 * lat["load"]["p99"],
             "% of block", "<= 50%", lat["load"]["p99"] is not None and lat["load"]["p99"] <= 0.5,
             f"callback duration over {lat['load']['callbacks']} callbacks while playing (1% bins); p50 "
             f"{100 * (lat['load']['p50'] or 0):.0f}%"),
        _row("live.callback_cpu_p99_128", None if (lat.get("cpu") or {}).get("p99") is None else 100 * lat["cpu"]["p99"],
             "% of block", "<= 50%", (lat.get("cpu") or {}).get("p99") is not None and lat["cpu"]["p99"] <= 0.5,
             "the callback's own CPU time (thread time: without preemption, GIL waits or hypervisor steal) over the "
             "same callbacks; the wall-time row above minus this one is time spent waiting"),
        _row("live.cache_miss_latency_max_128", miss["latency_ms_max"], "ms",
             "<= cached latency + 1 period",
             valid(miss) and valid(lat)
             and miss["latency_ms_max"] <= lat["latency_ms_median"] + miss["period_ms"],
             f"--cache-mb 4: {miss['misses']} misses, {miss['fallbacks']} nearest-pitch fallbacks among "
             f"{miss['notes']} notes across the keyboard, {miss['sounded']} sounded; {validity(miss)}; min "
             f"{miss.get('latency_ms_min', float('nan')):.3f} ms, median {miss['latency_ms_median']:.3f} ms; "
             f"MIDI events reaching the synth {miss['events_played']}/"
             f"{miss['events_sent']} (JACK drops a period's events on an xrun: {miss['xruns_jack']} here)"),
        _row("live.session_xruns_512", ses["xruns_synth"] + ses["xruns_jack"], "xruns", "0",
             ses["xruns_synth"] + ses["xruns_jack"] == 0,
             f"{ses['seconds']:.0f} s at period 512: 256-voice cluster (8 ch x 32), CC74 sweeps on 8 channels, "
             f"{ses['notes_per_second']:.0f} notes/s; synth xruns {ses['xruns_synth']}, JACK xrun callbacks "
             f"{ses['xruns_jack']}; events {ses['events_played']}/{ses['events_sent']}; "
             f"{ses['knob_states_generated']} notes generated (misses at new knob states, and keyboard prefills once "
             f"a knob settles); peak {ses['peak']:.3f}; {_steal_note(ses.get('steal'))}; {_control_note(ses)}"
             f"{_blame_note(ses)}"),
        *_session_portaudio_rows(res.get("session_512_portaudio"), ses),
        _row("live.session_callback_p99_512", None if ses["load"]["p99"] is None else 100 * ses["load"]["p99"],
             "% of block", "", None, f"callback duration p99 during the session ({ses['load']['callbacks']} callbacks); "
             f"its own CPU time p99 {100 * ((ses.get('cpu') or {}).get('p99') or 0):.0f}%, max "
             f"{100 * ((ses.get('cpu') or {}).get('max') or 0):.0f}%"),
    ]
    rows += _prefill_rows(res.get("prefill_512"))
    g = res.get("gc_gil")
    if g:
        rows.append(_row("live.gc_full_pause", g["gc_full_ms"], "ms", "", None,
                         f"gc.collect(2) with the engine loaded ({g['gc_objects']} objects); after gc.freeze() "
                         f"{g['gc_full_frozen_ms']:.4f} ms, gen-0 {g['gc_gen0_frozen_ms']:.4f} ms. The synth "
                         "freezes after loading and runs gen-0 collections off the audio thread"))
        a, b = g["gil_wait_switch_5ms"], g["gil_wait_switch_0.5ms"]
        rows.append(_row("live.gil_wait_p999_switch_0.5ms", b["p999"], "ms", "", None,
                         f"SCHED_FIFO Python thread waking every 1 ms (it needs the GIL, like the callback) while the "
                         f"worker regenerates the keyboard for a knob moved every 60 ms, process at nice -10: "
                         f"p99 {b['p99']:.2f} / p99.9 {b['p999']:.2f} / max {b['max']:.1f} ms with "
                         f"sys.setswitchinterval(0.0005) vs p99 {a['p99']:.2f} / p99.9 {a['p999']:.2f} / max "
                         f"{a['max']:.1f} ms with Python's default 5 ms (interleaved runs)"))
    return rows


def _direct_rows(direct: dict | None) -> list[dict]:
    """Key-to-sound latency with no feedback loop (a keyboard's MIDI in, the playback ports out)."""
    rows = []
    for api, r in (direct or {}).items():
        ok = r["measured"] > 0 and r["measured"] + r["near_xrun"] >= r["notes"]
        how = ("one JACK client for MIDI and audio (--audio-api jack-client): the note sounds in the cycle "
               "it arrives" if api == "jack-client" else
               "PortAudio's JACK host API beside our MIDI client (the default): the audio callback takes "
               "the events a cycle later")
        rows.append(_row(f"live.keyboard_latency_128{'_jack_client' if api == 'jack-client' else ''}",
                         r["latency_ms_median"], "ms", "<= 8 ms", ok and r["latency_ms_median"] <= 8.0,
                         f"period 128: one client only sends MIDI, another only records the outputs (no feedback "
                         f"loop, as with a keyboard and speakers); send frame -> the note's first frame, inside "
                         f"the graph (the driver's playback buffering comes on top for any client); {how}; "
                         f"{r['measured']}/{r['notes']} notes measured ({r['near_xrun']} next to an xrun left "
                         f"out), frames {sorted(set(r['latency_frames']))}, jitter {r['jitter_ms']:.3f} ms"))
    return rows


def _session_portaudio_rows(jc: dict | None, ses: dict) -> list[dict]:
    """The session again on the other path under JACK (`--audio-api jack`: PortAudio's JACK host API and a
    MIDI client), run right after the default one (our own JACK client)."""
    if not jc:
        return []
    n = jc["xruns_synth"] + jc["xruns_jack"]
    return [_row("live.session_xruns_512_portaudio", n, "xruns", "0", n == 0,
                 f"the same session with --audio-api jack (PortAudio's JACK host API and a JACK MIDI client; the "
                 f"default under JACK is our own client), run right after the row above: synth xruns {jc['xruns_synth']}, JACK "
                 f"{jc['xruns_jack']} (default: {ses['xruns_synth']} / {ses['xruns_jack']}); events "
                 f"{jc['events_played']}/{jc['events_sent']}; callback CPU p99 "
                 f"{100 * ((jc.get('cpu') or {}).get('p99') or 0):.0f}%; peak {jc['peak']:.3f}; "
                 f"{_steal_note(jc.get('steal'))}; {_control_note(jc)}{_blame_note(jc)}")]


def _prefill_rows(pf: dict | None) -> list[dict]:
    """Issue 6: the full-keyboard prefill after a preset load or a knob move never causes an xrun."""
    if not pf:
        return []
    n = pf["startup_xruns"] + pf["xruns_synth"] + pf["xruns_jack"]
    moves = pf["moves"]
    notes = [m["notes"] for m in moves]
    secs = [m["seconds"] for m in moves]
    return [_row("live.prefill_xruns_512", n, "xruns", "0", n == 0,
                 f"period 512, nothing else playing: the start-up prefill ({pf['startup_notes']} notes, every "
                 f"velocity layer, stream running) had {pf['startup_xruns']} synth xruns"
                 f"{_blame_note({'jack_blame': pf.get('startup_blame')})}; then {len(moves)} knob "
                 f"moves (CC 74, then still), each filling the new state's keyboard ({min(notes)}-{max(notes)} "
                 f"notes in {min(secs):g}-{max(secs):g} s; "
                 f"{pf.get('cache_evictions')} cache evictions): synth xruns {pf['xruns_synth']}, JACK "
                 f"{pf['xruns_jack']}; callback CPU p99 {100 * ((pf.get('cpu') or {}).get('p99') or 0):.0f}%; "
                 f"{_steal_note(pf.get('steal'))}; {_control_note(pf)}{_blame_note(pf)}")]


def _blame_note(ses: dict) -> str:
    b = ses.get("jack_blame")
    if b is None:
        return ""
    return "; jackd blamed: " + (", ".join(f"{k} {v}" for k, v in b.items()) or "nobody")


def _control_note(ses: dict) -> str:
    xs = ses.get("control_xrun_seconds")
    if xs is None:
        return "no control server"
    return (f"the machine's own: {len(xs)} xrun(s) on a second JACK server with only an idle C client "
            "(jack_metro), same seconds")


def _steal_note(st) -> str:
    if not st or st.get("steal_ms") is None:
        return "hypervisor steal not readable"
    return (f"hypervisor steal {st['steal_ms']:g} ms in {st['seconds_with_steal']} of {st['seconds']} s, "
            f"{st['xruns_near_steal']} of {st['xruns']} JACK xruns within 1 s of it")


def run(quick: bool = False) -> list[dict]:
    import latency_probe

    return rows_from(latency_probe.run(quick=quick))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(json.dumps(run(args.quick), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
