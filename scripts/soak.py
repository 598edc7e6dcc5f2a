"""`make soak`: a long live session on a private JACK dummy server, judged like the bench session.

    python scripts/soak.py --minutes 10 [--preset piano --preset-dir DIR] [--json soak.json]

It plays the `scripts/latency_probe.py` session at 512 frames: a 256-voice cluster, CC 74 sweeps
and 50 notes/s. It prints the counters, and exits 1 on any xrun, lost event, non-finite sample, a
peak beyond 1.0, or a non-zero exit of the synth.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
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
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        parent, name = latency_probe._preset_args(args.preset, args.preset_dir, work)
        res = latency_probe.session(parent, name, work, seconds=args.minutes * 60.0)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        from synth.fsutil import atomic_write_text

        atomic_write_text(args.json, text)
    ok = (res["xruns_synth"] == 0 and res["xruns_jack"] == 0 and res["events_played"] == res["events_sent"]
          and res["finite"] and res["peak"] <= 1.0 and res["exit_code"] == 0)
    print(f"soak: {'PASS' if ok else 'FAIL'} ({args.minutes:g} min, xruns {res['xruns_synth']} synth / "
          f"{res['xruns_jack']} JACK, events {res['events_played']}/{res['events_sent']})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
