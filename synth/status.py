"""What the live synth reports: the status line on stderr and the counters of `--stats-json`.

Read on the main thread from the audio callback's counters (`LiveCore`), the engine's `stats()` and
the GC tamer. Field meanings: docs/live.md ("Diagnostics").
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from synth.callback import LiveCore
from synth.rt import GcTamer


class StatusLine:
    """One line on stderr: in place on a TTY, a new line every `interval` seconds otherwise."""

    def __init__(self, interval: float | None):
        self.tty = sys.stderr.isatty()
        self.interval = interval if interval is not None else (0.25 if self.tty else 10.0)
        self._last_len = 0

    def show(self, text: str) -> None:
        if self.tty:
            pad = max(0, self._last_len - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            self._last_len = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def log(self, text: str) -> None:
        if self.tty and self._last_len:
            sys.stderr.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def engine_stats(engine) -> dict:
    try:
        return dict(engine.stats()) if hasattr(engine, "stats") else {}
    except Exception:
        return {}


def status_text(preset: str, core: LiveCore, stats: dict, ports: int, latency_ms: float | None = None) -> str:
    """The status line. `ports`: MIDI ports of other programs feeding the synth (never its own virtual
    port or clients); `latency_ms`: key to sound (`synth.live.latency_readout`)."""
    load = core.load()
    hit = stats.get("cache_hit_rate", stats.get("hit_rate"))
    hit_s = f"{100 * hit:.0f}%" if isinstance(hit, (int, float)) and math.isfinite(hit) else "-"
    voices = stats.get("voices", stats.get("active_voices", "-"))
    return (f"{preset} | voices {voices} | cache hits {hit_s} | load p99 {100 * load['p99']:.0f}% "
            f"(max {100 * load['max']:.0f}%, cpu p99 {100 * load['cpu_p99']:.0f}%) | xruns {core.underflows + core.overruns} | MIDI ports {ports}"
            + (f" | latency {latency_ms:.1f} ms" if latency_ms is not None else ""))


def panic_counts(core: LiveCore) -> dict:
    """The panics of a run: the panic button (SIGUSR1) and the CC 120/123 messages that arrived. The
    fade-out of a clean stop is not one (`callback.FADE_OUT`)."""
    messages = int(getattr(core.queue, "panics", 0))
    return {"panics": core.panics + messages, "panic_button": core.panics, "panic_messages": messages}


def final_summary(core: LiveCore, engine, tamer: GcTamer, why: str, midi=None, extra: dict | None = None) -> dict:
    """The counters of `--stats-json` (docs/live.md, "Diagnostics"). `extra` (what was opened, the
    latency readout) is merged in after the scalar counters."""
    load = core.load()
    d = core.durations_ms()
    out = {
        "reason": why,
        "callbacks": core.callbacks,
        "xruns": core.underflows + core.overruns,
        "underflows": core.underflows,
        "overruns": core.overruns,
        "events": core.events,
        "late_events": core.late_events,
        "deduplicated": core.deduped,
        # JACK MIDI: cycles whose events repeated the last cycle's exactly (a stale buffer), dropped.
        "stale_midi_cycles": getattr(midi, "stale_cycles", 0),
        "deferred": core.deferred,
        "dropped": core.dropped,
        "callback_errors": core.errors,
        **panic_counts(core),
        "load_p50": round(load["p50"], 4),
        "load_p99": round(load["p99"], 4),
        "load_max": round(load["max"], 4),
        "cpu_p50": round(load.get("cpu_p50", 0.0), 4),
        "cpu_p99": round(load.get("cpu_p99", 0.0), 4),
        "cpu_max": round(load.get("cpu_max", 0.0), 4),
        "callback_ms_p99": round(float(np.percentile(d, 99)), 4) if len(d) else 0.0,
        "dac_lead_ms": round(1e3 * core._lead, 3) if core._lead is not None else None,
        "gc_mode": tamer.mode,
        "gc_collections": tamer.collections,
        "gc_collect_ms_max": round(1e3 * tamer.collect_seconds_max, 3),
        "gc_collect_cpu_ms_max": round(1e3 * tamer.collect_cpu_max, 3),
        "latency_samples": int(getattr(engine, "latency_samples", 0) or 0),
        **(extra or {}),
        "load_hist_pct": core.load_hist.tolist(),
        "cpu_hist_pct": core.cpu_hist.tolist(),
        "worst_callbacks": core.worst_callbacks(),
        "entry_hist_pct": core.entry_hist.tolist(),
        "engine": engine_stats(engine),
        "pid": os.getpid(),
    }
    return out
