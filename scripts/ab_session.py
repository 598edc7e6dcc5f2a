"""Side-by-side A/B of the bench's live session: variants play the same 60-s session at the same time.

    python scripts/ab_session.py --variant .:jack --variant .:jack-client [--seconds 60] [--reps 2]
    python scripts/ab_session.py --variant /tmp/wt-old:jack --variant .:jack
    python scripts/ab_session.py --variant .:jack --variant .:jack-client --reps 3 --interleave

A variant is `CHECKOUT:AUDIO_API`: a checkout (a `git worktree` of the commit to try) whose `synth`
plays `scripts/latency_probe.session` (512 frames: 256-voice cluster, CC 74 sweeps, 50 notes/s) with
`--audio-api AUDIO_API`. All variants run at once, each in its own process on its own JACK dummy
server (libjack talks to one server per process), so the host's steal and load fall on all of them
alike; run one after the other, they would not (steal here moves from 0 to 40 s a minute). The first
variant also runs the control server (an idle C client) over the same seconds. Each rep swaps which
variant starts first. Prints a JSON line per rep and writes them all to --json.

`--interleave` plays the variants one after the other instead, each alone beside its own control
server, swapping the order each rep: what a session costs alone, with the host's drift spread over
the variants by the alternation rather than shared.

Both sessions load the synth at once: on two cores the xrun counts are higher than a session's alone,
so compare variants within a rep, not against `make bench` rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, os, sys, tempfile
from pathlib import Path
root = os.getcwd()
sys.path[:0] = [root + "/scripts", root]
import latency_probe as lp
seconds, api, control = float(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
with tempfile.TemporaryDirectory(prefix="ab-session-") as tmp:
    work = Path(tmp)
    parent, name = lp._preset_args(None, None, work)
    r = lp.session(parent, name, work, seconds=seconds, synth_args=("--audio-api", api), control=control)
keep = ("xruns_synth", "xruns_jack", "events_played", "events_sent", "stale_midi_cycles", "peak", "exit_code", "jack_blame")
out = {k: r[k] for k in keep}
out["cpu_p99"] = (r.get("cpu") or {}).get("p99")
out["load_p99"] = (r.get("load") or {}).get("p99")
out["steal_ms"] = (r.get("steal") or {}).get("steal_ms")
out["control_xruns"] = None if r["control_xrun_seconds"] is None else len(r["control_xrun_seconds"])
print("RESULT " + json.dumps(out), flush=True)
'''


def run_rep(variants: list[str], seconds: float) -> dict:
    procs = {}
    for i, spec in enumerate(variants):
        checkout, api = spec.rsplit(":", 1)
        procs[spec] = subprocess.Popen([sys.executable, "-c", CHILD, str(seconds), api, "1" if i == 0 else "0"],
                                       cwd=str(Path(checkout).resolve()), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
    out = {}
    for spec, p in procs.items():
        o, e = p.communicate()
        lines = [ln for ln in o.splitlines() if ln.startswith("RESULT ")]
        out[spec] = json.loads(lines[-1][7:]) if lines else {"error": (e or o)[-800:]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True, metavar="CHECKOUT:API")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--interleave", action="store_true",
                    help="play the variants one after the other (each alone, with its own control server)")
    args = ap.parse_args(argv)
    for spec in args.variant:
        checkout, _, api = spec.rpartition(":")
        if not checkout or not (Path(checkout) / "synth").is_dir():
            ap.error(f"--variant {spec!r}: give CHECKOUT:API, where CHECKOUT holds a synth/ package")
    runs = []
    for rep in range(args.reps):
        order = args.variant if rep % 2 == 0 else list(reversed(args.variant))
        if args.interleave:
            res = {spec: run_rep([spec], args.seconds)[spec] for spec in order}
        else:
            res = run_rep(order, args.seconds)
        runs.append(res)
        print(json.dumps(res), flush=True)
    if args.json:
        sys.path.insert(0, str(ROOT))
        from synth.fsutil import atomic_write_text

        atomic_write_text(args.json, json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
