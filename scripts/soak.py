"""`make soak`: a long live session on a private JACK dummy server, judged like the bench session,
after issue 8's MIDI flood.

    python scripts/soak.py --minutes 10 --flood-seconds 30 [--preset piano --preset-dir DIR] [--json soak.json]

With --flood-seconds S (default 0: no flood) it first floods the synth on its own JACK server at 512
frames (`python -m synth --cache-mb 128`, same preset as the session): S seconds of 10,000 JACK
MIDI events per second (note-ons without note-offs, running status, sysex and junk, CC storms on
every knob of the preset's preset.json, bends...), then CC 120 + CC 123 on all 16 channels. It is
`synth.testing.jack.run_flood`, the measurement tests/test_reliability_live.py makes for 5 s. Figures under
"flood" in the JSON and "flood:" rows in the table: xruns from 1 s to the flood's end (synth and
JACK), RSS at 1 s and 0.5 s after the end, events / dropped / deferred, callback p99 / max, peak and
finiteness, and the time to silence after the panic. It fails on any xrun after the first second,
RSS growth of 5% or more, a non-finite sample, a peak beyond 1.0, output not exactly 0 from 2
periods + 6 ms after the panic, a non-zero exit of the synth, or a flood that could not be run.

Then it plays the `scripts/latency_probe.py` session at 512 frames: a 256-voice cluster, CC 74 sweeps
and 50 notes/s. It samples the synth's RSS (/proc) every second, prints the counters and a table
(RSS growth after the first minute, xruns, callback p99), and exits 1 on any xrun, lost event,
non-finite sample, a peak beyond 1.0, RSS growth of 5% or more after the first minute, or a
non-zero exit of the synth (or on a failed flood).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import latency_probe  # noqa: E402

from synth.testing.jack import knob_ccs, run_flood  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--preset-dir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--flood-seconds", type=float, default=0.0,
                    help="first flood the synth for S s at 10k MIDI events/s (issue 8); 0: no flood")
    ap.add_argument("--audio-api", default="auto",
                    help="the synth's --audio-api: auto (PortAudio under JACK) or jack-client (one JACK client)")
    args = ap.parse_args(argv)
    api = () if args.audio_api == "auto" else ("--audio-api", args.audio_api)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(samples, stop), daemon=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        parent, name = latency_probe._preset_args(args.preset, args.preset_dir, work)
        # Before the sampler starts: it follows the first synth child it finds.
        flood = _flood(parent, name, work, args.flood_seconds, api) if args.flood_seconds > 0 else None
        sampler.start()
        try:
            res = latency_probe.session(parent, name, work, seconds=args.minutes * 60.0, synth_args=api)
        finally:
            stop.set()
            sampler.join(5)
    res["rss"] = _rss_figures(samples)
    log_tail = None
    if flood is not None:
        log_tail = flood.pop("log_tail", None)
        res["flood"] = flood
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        from synth.fsutil import atomic_write_text

        atomic_write_text(args.json, text)
    rss = res["rss"]
    growth = rss.get("growth_after_1min_pct")
    growth_x = rss.get("growth_excl_cache_after_1min_pct")
    judged = growth_x if growth_x is not None else growth    # the cache's fill is capped, see _memory_ok
    rows = [("minutes", f"{args.minutes:g}"), ("events played / sent", f"{res['events_played']} / {res['events_sent']}"),
            ("stale JACK MIDI cycles dropped (a source's buffer read again after it missed a cycle)",
             str(res.get("stale_midi_cycles", 0))),
            ("xruns (synth / JACK)", f"{res['xruns_synth']} / {res['xruns_jack']}"),
            ("callback p99 / max (share of the block)",
             f"{res['load'].get('p99')} / {res['load'].get('max')}"),
            ("callback CPU time p99 / max (share of the block)",
             f"{(res.get('cpu') or {}).get('p99')} / {(res.get('cpu') or {}).get('max')}"),
            ("RSS at 1 min / end / max (MB)", f"{rss.get('at_1min_mb')} / {rss.get('end_mb')} / {rss.get('max_mb')}"),
            ("RSS growth after the first minute", "-" if growth is None else f"{growth:+.2f}%"),
            ("note cache at 1 min / end (MB); RSS growth less the cache's fill",
             f"{rss.get('cache_at_1min_mb')} / {rss.get('cache_end_mb')}; "
             + ("-" if growth_x is None else f"{growth_x:+.2f}%")),
            ("peak, finite", f"{res['peak']:.3f}, {res['finite']}"), ("exit code", str(res["exit_code"])),
            ("JACK xruns per minute of the session", _per_minute(res.get("xrun_seconds") or [], args.minutes)),
            ("hypervisor steal; JACK xruns within 1 s of a second with steal", _steal_text(res.get("steal"))),
            (CONTROL_ROW, _control_text(res.get("control_xrun_seconds"))),
            (BLAME_ROW, _blame_text(res.get("jack_blame"))),
            ("longest GC pause on the main thread, wall / CPU (ms)",
             f"{res.get('gc_collect_ms_max')} / {res.get('gc_collect_cpu_ms_max')}"),
            ("costliest callbacks in CPU time (share of the block @ stream s: events, voices)",
             _worst_text(res.get("worst_callbacks")))]
    if flood is not None:
        rows += _flood_rows(flood)
    w = max(len(k) for k, _ in rows)
    print("| " + "what".ljust(w) + " | figure |\n|" + "-" * (w + 2) + "|--------|")
    for k, v in rows:
        print(f"| {k.ljust(w)} | {v} |")
    ok = (res["xruns_synth"] == 0 and res["xruns_jack"] == 0 and res["events_played"] == res["events_sent"]
          and res["finite"] and res["peak"] <= 1.0 and res["exit_code"] == 0
          and (judged is None or judged < 5.0))
    flood_note = ""
    if flood is not None:
        flood_ok = _flood_ok(flood)
        if not flood_ok and log_tail:
            print("soak: the flood's synth log ends:\n" + log_tail, file=sys.stderr)
        ok = ok and flood_ok
        flood_note = (f"; flood {args.flood_seconds:g} s {'ok' if flood_ok else 'FAILED'}"
                      + (f": {flood['error']}" if "error" in flood else
                         f", xruns after 1 s {flood['xruns_synth_after_1s']} synth / "
                         f"{flood['xruns_jack_after_1s']} JACK"))
    print(f"soak: {'PASS' if ok else 'FAIL'} ({args.minutes:g} min, xruns {res['xruns_synth']} synth / "
          f"{res['xruns_jack']} JACK, events {res['events_played']}/{res['events_sent']}{flood_note})",
          file=sys.stderr)
    return 0 if ok else 1


def _flood(parent: Path, name: str, work: Path, seconds: float, api: tuple[str, ...] = ()) -> dict:
    """Issue 8's flood on the session's preset (knob CCs from its preset.json), at 512 frames."""
    cmd = latency_probe._cmd(parent, name, "--midi-port", "^probe:", "--cache-mb", "128", *api)
    knobs = knob_ccs(parent / name)
    try:
        return run_flood(cmd, work, seconds, knobs=knobs, rate=10_000, period=512, control=True)
    except (RuntimeError, TimeoutError, OSError) as e:   # the synth or jackd died, or never came up
        return {"seconds": seconds, "knobs": list(knobs), "error": f"{type(e).__name__}: {str(e)[-1500:]}"}


def _flood_ok(fl: dict) -> bool:
    return ("error" not in fl and fl["xruns_synth_after_1s"] == 0 and fl["xruns_jack_after_1s"] == 0
            and _memory_ok(fl) and fl["finite"]
            and fl["peak"] <= 1.0 and fl["silent_after_panic"] and fl["exit_code"] == 0)


def _memory_ok(fl: dict) -> bool:
    """Bounded memory: RSS less the note cache's fill grows < 5%, and the cache stays within its cap
    (its fill is mapped pages of one fixed bank, see synth.testing.jack.cache_accounting). Without cache
    figures, raw RSS growth must be < 5%."""
    g = fl.get("rss_growth_excl_cache_pct")
    if g is None:
        return fl["rss_growth_pct"] is not None and fl["rss_growth_pct"] < 5.0
    return g < 5.0 and fl["cache_end_mb"] <= fl["cache_cap_mb"] + 1e-6


def _steal_text(st: dict | None) -> str:
    """synth.testing.jack.StealMonitor.attribution as one cell."""
    if not st or st.get("steal_ms") is None:
        return "- (no /proc/stat)"
    per = " ".join(f"{v:g}" for v in st["steal_ms_per_minute"])
    return (f"{st['steal_ms']:g} ms in {st['seconds_with_steal']} of {st['seconds']} s (per minute: {per}); "
            f"{st['xruns_near_steal']} of {st['xruns']} xruns, against "
            f"{100 * st['share_of_seconds_near_steal']:.0f}% of the seconds")


CONTROL_ROW = "the machine's own xruns (idle C client on a second JACK server, same seconds)"
BLAME_ROW = "whom jackd blamed, in which state (Triggered: not yet running; Running: in its callback)"


def _blame_text(blame: dict | None) -> str:
    """JackServer.blame counts as one cell."""
    if blame is None:
        return "-"
    return ", ".join(f"{k} {v}" for k, v in blame.items()) or "nobody"


def _control_text(xs: list[float] | None) -> str:
    """ControlServer xrun times as one cell."""
    if xs is None:
        return "- (not run)"
    return f"{len(xs)}" + (f" (at {', '.join(f'{x:g}' for x in xs[:8])}{' ...' if len(xs) > 8 else ''} s)" if xs else "")


def _worst_text(worst: list[dict] | None, n: int = 4) -> str:
    """The costliest callbacks (LiveCore.worst_callbacks rows) as one cell."""
    return "; ".join(f"{w['cpu']:.2f} @ {w['stream_s']:.1f} s: {w['events']} ev, {w['voices']} v"
                     for w in (worst or [])[:n]) or "-"


def _per_minute(seconds: list[float], minutes: float) -> str:
    """xrun times (s from the session's start) as counts per minute: clusters show the machine's spells."""
    n = max(1, int(math.ceil(minutes)))
    counts = [0] * n
    for t in seconds:
        counts[min(max(int(t // 60), 0), n - 1)] += 1
    return " ".join(str(c) for c in counts)


def _flood_rows(fl: dict) -> list[tuple[str, str]]:
    if "error" in fl:
        return [("flood: error", fl["error"].splitlines()[0] if fl["error"] else "?")]
    if fl["silent_after_panic"]:
        again = " after the second panic (the first failed next to an xrun)" if fl["panic_judged"] == 2 else ""
        silent = f"yes, {fl['silence_ms']} ms{again} (bar {fl['silence_bar_ms']} ms)"
    elif fl["silence_ms"] is None:
        silent = f"NO: still sounding at the recording's end (peak {fl['post_panic_peak']:.3g} past the bar)"
    else:
        silent = f"NO: last non-zero frame {fl['silence_ms']} ms after (bar {fl['silence_bar_ms']} ms)"
    growth = "-" if fl["rss_growth_pct"] is None else f"{fl['rss_growth_pct']:+.2f}%"
    return [
        ("flood: seconds, events sent (knob CCs), late from the probe",
         f"{fl['seconds']:g}, {fl['events_sent']} ({', '.join(map(str, fl['knobs']))}), {fl['late_midi_probe']}"),
        ("flood: events to the synth / dropped / deferred", f"{fl['events']} / {fl['dropped']} / {fl['deferred']}"),
        ("flood: xruns 1 s to the end (synth / JACK)", f"{fl['xruns_synth_after_1s']} / {fl['xruns_jack_after_1s']}"),
        ("flood: xruns over the whole run (synth / JACK)", f"{fl['xruns_synth_all']} / {fl['xruns_jack_all']}"),
        ("flood: callback p99 / max (share of the block)", f"{fl['load_p99']} / {fl['load_max']}"),
        ("flood: callback CPU time p99 / max, 1 s to the end", f"{fl['cpu']['p99']} / {fl['cpu']['max']}"),
        ("flood: callback start delay beyond the usual p99 / max, 1 s to the end (share of the block)",
         f"{(fl.get('entry_delay') or {}).get('p99')} / {(fl.get('entry_delay') or {}).get('max')}"),
        ("flood: costliest callbacks in CPU time (share of the block @ stream s: events, voices)",
         _worst_text(fl.get("worst_callbacks"))),
        ("flood: longest GC pause on the main thread, wall / CPU (ms)",
         f"{fl.get('gc_collect_ms_max')} / {fl.get('gc_collect_cpu_ms_max')}"),
        ("flood: hypervisor steal; JACK xruns within 1 s of a second with steal", _steal_text(fl.get("steal"))),
        ("flood: " + CONTROL_ROW + ", 1 s to the end", _control_text(fl.get("control_xrun_seconds"))),
        ("flood: " + BLAME_ROW + ", 1 s to the end", _blame_text(fl.get("jack_blame_after_1s"))),
        ("flood: RSS at 1 s / 0.5 s after the end (MB)",
         f"{fl['rss_1s_mb']} / {fl['rss_end_mb']} ({growth})"),
        ("flood: note cache at 1 s / end / cap (MB); RSS growth less the cache's fill",
         f"{fl.get('cache_1s_mb')} / {fl.get('cache_end_mb')} / {fl.get('cache_cap_mb')}; "
         + ("-" if fl.get("rss_growth_excl_cache_pct") is None else f"{fl['rss_growth_excl_cache_pct']:+.2f}%")),
        ("flood: peak, finite", f"{fl['peak']:.3f}, {fl['finite']}"),
        ("flood: silent after the panic, time to silence", silent),
        ("flood: exit code", str(fl["exit_code"])),
    ]


def _synth_pid() -> int | None:
    """The `python -m synth` child of this process, from /proc."""
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == me and b"synth" in (d / "cmdline").read_bytes():
                return int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _stats_path(pid: int) -> Path | None:
    """The --stats-json file of synth process `pid`, from its command line."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for a, b in zip(args, args[1:], strict=False):
        if a == b"--stats-json":
            return Path(b.decode())
    return None


def _sample_rss(samples: list, stop: threading.Event) -> None:
    """(seconds since the synth appeared, VmRSS MB, note cache MB or None) every second while the
    synth runs; the cache figure is the engine's, from the synth's --stats-json."""
    pid = t0 = stats = None
    while not stop.wait(1.0):
        if pid is None:
            pid = _synth_pid()
            stats = _stats_path(pid) if pid else None
            t0 = time.monotonic()
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    cache = None
                    try:
                        cache = json.loads(stats.read_text())["engine"]["cache_mb"] if stats else None
                    except (OSError, ValueError, KeyError, TypeError):
                        pass
                    samples.append((time.monotonic() - t0, int(line.split()[1]) / 1024, cache))
        except OSError:
            pid = None   # it exited (a later one would be a new synth)


def _rss_figures(samples: list) -> dict:
    """RSS growth after the first minute (max over the rest against the first sample past 60 s), raw
    and with the note cache's fill taken out (see synth.testing.jack.cache_accounting)."""
    if not samples:
        return {}
    after = [(m, c) for t, m, c in samples if t >= 60.0]
    at1 = after[0] if after else None
    out = {"samples": len(samples), "max_mb": round(max(m for _, m, _ in samples), 1),
           "end_mb": round(samples[-1][1], 1), "at_1min_mb": None if at1 is None else round(at1[0], 1),
           "cache_at_1min_mb": None if at1 is None or at1[1] is None else round(at1[1], 1),
           "cache_end_mb": None if samples[-1][2] is None else round(samples[-1][2], 1)}
    if at1 is not None:
        out["growth_after_1min_pct"] = round(100.0 * (max(m for m, _ in after) - at1[0]) / at1[0], 2)
        if all(c is not None for _, c in after):
            base = at1[0] - at1[1]
            out["growth_excl_cache_after_1min_pct"] = round(100.0 * (max(m - c for m, c in after) - base) / base, 2)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
