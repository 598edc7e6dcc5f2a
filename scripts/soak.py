"""`make soak`: a long live session on a private JACK dummy server, judged like the bench session.

    python scripts/soak.py --minutes 10 [--preset piano --preset-dir DIR] [--json soak.json]

It plays the `scripts/latency_probe.py` session at 512 frames: a 256-voice cluster, CC 74 sweeps
and 50 notes/s. It samples the synth's RSS (/proc) every second, prints the counters and a table
(RSS growth after the first minute, xruns, callback p99), and exits 1 on any xrun, lost event,
non-finite sample, a peak beyond 1.0, RSS growth of 5% or more after the first minute, or a
non-zero exit of the synth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import latency_probe  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--preset-dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(samples, stop), daemon=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        parent, name = latency_probe._preset_args(args.preset, args.preset_dir, work)
        sampler.start()
        try:
            res = latency_probe.session(parent, name, work, seconds=args.minutes * 60.0)
        finally:
            stop.set()
            sampler.join(5)
    res["rss"] = _rss_figures(samples)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        from synth.fsutil import atomic_write_text

        atomic_write_text(args.json, text)
    rss = res["rss"]
    growth = rss.get("growth_after_1min_pct")
    rows = [("minutes", f"{args.minutes:g}"), ("events played / sent", f"{res['events_played']} / {res['events_sent']}"),
            ("xruns (synth / JACK)", f"{res['xruns_synth']} / {res['xruns_jack']}"),
            ("callback p99 / max (share of the block)",
             f"{res['load'].get('p99')} / {res['load'].get('max')}"),
            ("RSS at 1 min / end / max (MB)", f"{rss.get('at_1min_mb')} / {rss.get('end_mb')} / {rss.get('max_mb')}"),
            ("RSS growth after the first minute", "-" if growth is None else f"{growth:+.2f}%"),
            ("peak, finite", f"{res['peak']:.3f}, {res['finite']}"), ("exit code", str(res["exit_code"]))]
    w = max(len(k) for k, _ in rows)
    print("| " + "what".ljust(w) + " | figure |\n|" + "-" * (w + 2) + "|--------|")
    for k, v in rows:
        print(f"| {k.ljust(w)} | {v} |")
    ok = (res["xruns_synth"] == 0 and res["xruns_jack"] == 0 and res["events_played"] == res["events_sent"]
          and res["finite"] and res["peak"] <= 1.0 and res["exit_code"] == 0
          and (growth is None or growth < 5.0))
    print(f"soak: {'PASS' if ok else 'FAIL'} ({args.minutes:g} min, xruns {res['xruns_synth']} synth / "
          f"{res['xruns_jack']} JACK, events {res['events_played']}/{res['events_sent']})", file=sys.stderr)
    return 0 if ok else 1


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


def _sample_rss(samples: list, stop: threading.Event) -> None:
    """(seconds since the synth appeared, VmRSS MB) every second while the synth runs."""
    pid = t0 = None
    while not stop.wait(1.0):
        if pid is None:
            pid = _synth_pid()
            t0 = time.monotonic()
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    samples.append((time.monotonic() - t0, int(line.split()[1]) / 1024))
        except OSError:
            pid = None   # it exited (a later one would be a new synth)


def _rss_figures(samples: list) -> dict:
    if not samples:
        return {}
    after = [m for t, m in samples if t >= 60.0]
    at1 = after[0] if after else None
    out = {"samples": len(samples), "max_mb": round(max(m for _, m in samples), 1),
           "end_mb": round(samples[-1][1], 1), "at_1min_mb": None if at1 is None else round(at1, 1)}
    if at1 is not None:
        out["growth_after_1min_pct"] = round(100.0 * (max(after) - at1) / at1, 2)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
