"""Model cards: `card.md` rendered from a preset's manifest, and the spectrogram grid PNG.

The card is a pure function of `preset.json` (plus the ONNX file's size), so `trainer export` and
`trainer eval --update-preset` write the same card from the same facts and it never drifts from
the manifest. matplotlib is imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

CARD_FILE = "card.md"
GRID_FILE = "spectrograms.png"
VALID_FILE = "validation.png"
TIMBRES_FILE = "timbres.png"     # family presets: the timbres on the latent's main plane, knobs as arrows
MORPH_FILE = "morph.png"         # family presets: C4 morphing between two timbres
MAX_ONNX_MB = 10.0
# Measured with `python scripts/bench_model.py` (FluidR3_GM, MIDI 28-96, velocities 25-127, 24 kHz).
LMD_SCALE = ("FluidR3's acoustic grand vs itself at an adjacent velocity layer 1.2 dB, vs its Bright "
             "Acoustic program (same samples, brighter) 2.5 dB, vs its Electric Grand 18.5 dB")

# metric key -> (label, format, bar text, pass test or None)
METRIC_ROWS: tuple[tuple[str, str, str, str, Any], ...] = (
    ("pitch_accuracy", "pitch accuracy (±50 cents, pYIN)", "{:.3f}", ">= 0.95", lambda v: v >= 0.95),
    ("pitch_accuracy_default", "↳ default latent", "{:.3f}", "", None),
    ("pitch_accuracy_random", "↳ random latents", "{:.3f}", "", None),
    ("pitch_accuracy_random_std", "↳ spread across the random latents", "{:.3f}", "", None),
    ("pitch_median_abs_cents", "median pitch error (cents)", "{:.1f}", "", None),
    ("log_mel_distance", "log-mel distance to real held-out notes (dB)", "{:.2f}", "<= 6.5 (piano)", None),
    ("log_mel_distance_random", "↳ random latents, every note each (mean over latents)", "{:.2f}", "", None),
    ("log_mel_distance_random_std", "↳ spread across those latents", "{:.2f}", "", None),
    ("diversity", "diversity across latents (dB)", "{:.2f}", "", None),
    ("class_accuracy", "drum class accuracy (generated hits)", "{:.3f}", ">= 0.9", lambda v: v >= 0.9),
    ("class_accuracy_default", "↳ default latent", "{:.3f}", "", None),
    ("class_accuracy_real", "↳ the classifier on real held-out hits", "{:.3f}", "", None),
    ("ms_per_note", "ms per note (CPU, 1 thread)", "{:.1f}", "<= 20", lambda v: v <= 20),
    ("ms_per_88", "ms per 88-key batch (CPU, 1 thread)", "{:.0f}", "<= 1000", lambda v: v <= 1000),
    ("ms_per_88_all_cores", "ms per 88-key batch (CPU, all cores)", "{:.0f}", "", None),
    ("ms_per_note_cuda", "ms per note (CUDA)", "{:.2f}", "", None),
    ("ms_per_88_cuda", "ms per 88-key batch (CUDA)", "{:.1f}", "", None),
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def metrics_table(metrics: dict[str, Any], name: str = "") -> list[str]:
    """Markdown rows for the figures present in `metrics` (empty when nothing was measured yet)."""
    rows = []
    for key, label, fmt, bar, ok in METRIC_ROWS:
        v = metrics.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if key == "log_mel_distance":
            ok = (lambda x: x <= 6.5) if name == "piano" else None
        verdict = "" if ok is None else ("pass" if ok(v) else "**fail**")
        rows.append(f"| {label} | {fmt.format(v)} | {bar} | {verdict} |")
    if not rows:
        return []
    return ["| metric | value | bar | |", "| --- | --- | --- | --- |", *rows]


def render_card(m: dict[str, Any], folder: Path) -> str:
    """The card for manifest `m` (a `synth.preset.manifest_dict`) of the preset in `folder`."""
    tr = m.get("training") or {}
    met = m.get("metrics") or {}
    name = m["name"]
    lines = [f"# {name}", ""]
    if m.get("description"):
        lines += [m["description"], ""]
    sr, n = m["sample_rate"], m["note_samples"]
    gen = folder / m.get("generator", "generator.onnx")
    size_mb = gen.stat().st_size / 1e6 if gen.is_file() else float("nan")
    if m["kind"] == "drums":
        keys = ", ".join(f"{k} {v}" for k, v in (m.get("drum_classes") or {}).items())
        rng = f"drum kit, keys: {keys}"
    else:
        rng = f"pitched, MIDI {m['pitch_range'][0]}–{m['pitch_range'][1]}"
    vel = m["velocity"]
    lines += [
        "## Sound", "",
        f"- {rng}; {sr} Hz, {n} samples per note ({n / sr:.2f} s).",
        f"- Velocity: {'conditioned on' if vel['conditioned'] else 'not conditioned; gain only'}; trained layers "
        f"{vel['layers']}; gain curve (v/127)^{vel.get('curve', 1.0):g}"
        + (f" ({tr['velocity_curve_evidence']})" if tr.get("velocity_curve_evidence") else "") + ".",
        f"- Sustain: {m.get('sustain', {}).get('mode', 'oneshot')}"
        + (f" ({tr['sustain_evidence']})" if tr.get("sustain_evidence") else "")
        + f"; release {m['release_seconds']:.2f} s" + (f" ({tr['release_evidence']})" if tr.get("release_evidence")
                                                        else "") + ".",
        f"- Generator: `{m.get('generator', 'generator.onnx')}`, {size_mb:.2f} MB "
        f"({'within' if size_mb <= MAX_ONNX_MB else '**over**'} the {MAX_ONNX_MB:g} MB bar), ONNX opset "
        f"{tr.get('onnx_opset', '?')}, latent size {m['latent']['size']}.",
        "",
        "## Data", "",
    ]
    data = tr.get("data")
    if isinstance(data, dict):
        for k, v in data.items():
            lines.append(f"- {k}: {_fmt(v)}")
    elif data:
        lines.append(f"- {data}")
    else:
        lines.append("- not recorded")
    lines += ["", "## Architecture and training", ""]
    for key, label in (("arch", "architecture"), ("params", "generator parameters"), ("steps", "steps"),
                       ("minutes", "training minutes"), ("checkpoint", "checkpoint exported"),
                       ("run_steps", "steps the run trained"), ("run_minutes", "minutes the run trained"),
                       ("ended_by", "the run ended by (steps, minutes, signal or patience)"),
                       ("steps_per_second", "training steps per second"), ("discriminator", "discriminator"),
                       ("diversity_floor", "latent diversity floor"), ("hardware", "hardware"), ("run", "run folder"),
                       ("refine", "refined at the default latent after training (`trainer refine`)"),
                       ("parity_max_abs", "ONNX vs torch max |Δ|"),
                       ("parity_max_abs_attack", "ONNX vs torch max |Δ| over the first 4096 samples"),
                       ("parity_spectral_rel", "ONNX vs torch STFT magnitude difference (share of the peak)")):
        if key in tr:
            v = tr[key]
            if key == "params" and isinstance(v, int):
                v = f"{v:,} ({v * 4 / 1e6:.2f} MB as float32)"
            if key == "checkpoint" and v == "best.pt":
                v = "best.pt (the best validation; `trainer export --last` takes the last weights)"
            if isinstance(v, dict):
                v = ", ".join(f"{k} {json.dumps(x, sort_keys=True) if isinstance(x, dict) else _fmt(x)}"
                              for k, x in v.items())
            lines.append(f"- {label}: {_fmt(v) if not isinstance(v, str) else v}")
    if tr.get("arch_details"):
        lines.append(f"- details: {tr['arch_details']}")
    cmds = tr.get("commands") or []
    if cmds:
        lines += ["", "Reproduce:", "", "```sh", *cmds, "```"]
    lines += ["", "## Metrics", ""]
    table = metrics_table(met, name)
    if table:
        ev = met.get("eval") or {}
        lines += table
        lines += ["", f"Measured by `{ev.get('command', 'python -m trainer eval')}` on {ev.get('date', '?')} "
                      f"(split {ev.get('split', '?')}, MIDI {ev.get('pitches', '?')}, "
                      f"{ev.get('log_mel_distance_notes', '?')} real notes, {ev.get('cpu_cores', '?')} CPU cores). "
                      "Definitions: `trainer/evaluate.py`. For scale, by the same log-mel distance: "
                      f"{LMD_SCALE}."]
    else:
        lines.append("Not measured yet: run `python -m trainer eval PRESET --data DATASET --update-preset`.")
    lines += ["", "## Knobs", ""]
    knobs = m.get("knobs") or []
    if knobs:
        units = {"latent": "latent units", "tune": "semitones", "decay": "seconds to -60 dB"}
        lines += ["| CC | name | what it does | range |", "| --- | --- | --- | --- |"]
        for k in knobs:
            kind = k.get("kind", "latent")
            lines.append(f"| {k['cc']} | {k['name']} | {k.get('description', '')} | "
                         f"{k['range'][0]:+.2f} … {k['range'][1]:+.2f} {units.get(kind, '')} |")
        lines.append("")
    else:
        lines += ["No knobs: no latent direction changed the sound audibly (less than 0.5 dB of log-mel "
                  "change between its ends); the generator (nearly) ignores its latent.", ""]
    if tr.get("knob_method"):
        lines.append(f"How the directions were found: {tr['knob_method']}")
    if m.get("timbres"):
        lines += _timbre_lines(m, folder)
    if tr.get("default_latent"):
        lines.append(f"Default latent: {tr['default_latent']}")
    if (folder / GRID_FILE).is_file():
        lines += ["", "## Spectrograms", "", f"![spectrograms]({GRID_FILE})"]
    if (folder / VALID_FILE).is_file():
        lines += ["", "## Validation during training", "", *_validation_text(tr), "", f"![validation]({VALID_FILE})"]
    return "\n".join(lines).rstrip() + "\n"


def _timbre_lines(m: dict[str, Any], folder: Path) -> list[str]:
    """A family preset's timbres (with each one's figures once `trainer eval --timbres` stored them in
    metrics.family), its bars and its pictures."""
    timbres = m["timbres"]
    fam = (m.get("metrics") or {}).get("family") or {}
    figs = {r.get("timbre"): r for r in fam.get("timbres") or []}
    tfit = (m.get("training") or {}).get("timbre_fit") or {}
    refined = {r.get("timbre"): r for r in tfit.get("timbres") or []}
    text = (f"{len(timbres)} learned timbres, one latent point per training instrument (the knobs move "
            "between them)")
    if refined:
        text += (f". Export refined each code by sound (`trainer/timbre_fit.py`: {tfit.get('generations')} "
                 f"generations against {tfit.get('notes')} train notes of its instrument, kept where not nearer "
                 f"on its valid notes): {tfit.get('moved')} of {len(timbres)} moved")
    lines = ["", "## Timbres", "", text + ":", ""]
    head = "| # | name | source | bank:program | kind |"
    if refined:
        head += " valid notes, learned → refined (dB) |"
    if figs:
        head += " to its own notes (dB) | nearest other kind, dB (own on the same notes) |"
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for i, t in enumerate(timbres):
        row = f"| {i} | {t['name']} | {t.get('source') or ''} | {t.get('bank')}:{t.get('program')} | "
        f_ = figs.get(i)
        row += f"{(f_ or {}).get('kind', t.get('gm_kind') or '')} |"
        if refined:
            v = (refined.get(i) or {}).get("valid_db")
            kept = "" if (refined.get(i) or {}).get("moved") else " (kept the learned code)"
            row += f" {v[0]:.2f} → {v[1]:.2f}{kept} |" if v else " not searched |"
        if figs:
            if f_:
                other = (f"{f_['nearest_other_kind']} {f_['nearest_other_kind_db']:.2f} "
                         f"({f_.get('own_db_cross_notes', float('nan')):.2f})" if f_.get("nearest_other_kind") else "")
                flag = " **confused**" if f_.get("ok") is False else ""
                row += f" {f_['own_db']:.2f} | {other}{flag} |"
            else:
                row += " | |"
        lines.append(row)
    lines.append("")
    rows = fam.get("bars") or {}
    if rows:
        prefix = f"family {m['name']}: "
        lines += ["### Family figures", "", "| figure | value | bar | |", "| --- | --- | --- | --- |"]
        for name, (v, ok, bar) in rows.items():
            verdict = "" if ok is None else ("pass" if ok else "**fail**")
            lines.append(f"| {name.removeprefix(prefix)} | {'' if v is None else _fmt(v)} | {bar} | {verdict} |")
        lines += ["", f"Measured by `{fam.get('command', 'python -m trainer eval PRESET --data DATA --timbres')}` on "
                      f"{fam.get('date', '?')} (split {fam.get('split', '?')}, MIDI {fam.get('pitches', '?')}). "
                      "Definitions: `trainer/family_eval.py`.", ""]
    if (folder / TIMBRES_FILE).is_file():
        lines += [f"![timbres]({TIMBRES_FILE})", "",
                  "The timbres on the first two principal axes of their latent points; arrows: each knob from the "
                  "default timbre to its CC 127 end (dashed: to CC 0); grey: random latents z ~ N(0, I).", ""]
    if (folder / MORPH_FILE).is_file():
        lines += [f"![morph]({MORPH_FILE})", "", "C4 morphing between two timbres (CC 16 amount toward the "
                  "timbre of the program in CC 17), the first 1.5 s of each note.", ""]
    return lines


def _validation_text(tr: dict[str, Any]) -> list[str]:
    """What the validation curve shows and which of its steps the preset is."""
    v = tr.get("validation") or {}
    acc = "class accuracy" if "class_acc" in v else "pitch accuracy"
    out = [f"Every {v.get('every', '?')} steps the EMA generator was measured on the dataset's valid split "
           f"(every valid note at its pitch and velocity, with the same {v.get('latents', '?')} fixed latents each "
           f"time; `trainer/validation.py`): log-mel distance (dB, the mean over latents; the band: its spread "
           f"across them) and {acc}. The best evaluation is the lowest distance"
           + (" (the highest accuracy with `valid_metric` pitch_acc)" if v.get("metric") == "pitch_acc" else "")
           + "."]
    if v:
        a = v.get("pitch_acc", v.get("class_acc"))
        out.append(f"The preset is step {v.get('step')} ({tr.get('checkpoint', 'last.pt')}): "
                   f"{_fmt(v.get('logmel_db'))} dB" + (f", {acc} {_fmt(a)}" if a is not None else "") + ".")
    return out


def validation_plot(doc: dict[str, Any], path: str | os.PathLike, exported_step: int | None = None,
                    title: str = "") -> Path:
    """Write a PNG of a run's validation curve (`validation.json`: history of {step, logmel_db,
    logmel_db_std, pitch_acc | class_acc}): log-mel distance with its spread across latents, and the
    accuracy, against the step; the best evaluation and the exported step marked. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synth.fsutil import atomic_path

    hist = [h for h in doc.get("history") or [] if isinstance(h, dict) and "step" in h and "logmel_db" in h]
    steps = np.array([h["step"] for h in hist], float)
    lmd = np.array([h["logmel_db"] for h in hist], float)
    sd = np.array([h.get("logmel_db_std", 0.0) for h in hist], float)
    acc_key = "class_acc" if any("class_acc" in h for h in hist) else "pitch_acc"
    acc = np.array([h.get(acc_key, np.nan) for h in hist], float)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.0, 4.2), sharex=True)
    a1.plot(steps, lmd, "o-", ms=3, color="C0")
    a1.fill_between(steps, lmd - sd, lmd + sd, color="C0", alpha=0.25, lw=0)
    a1.set_ylabel("log-mel distance (dB)", fontsize=8)
    a2.plot(steps, acc, "o-", ms=3, color="C1")
    a2.set_ylabel(acc_key.replace("_acc", " accuracy"), fontsize=8)
    a2.set_xlabel("step", fontsize=8)
    best = doc.get("best") or {}
    for ax in (a1, a2):
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if "step" in best:
            ax.axvline(best["step"], color="C2", lw=1, ls="--", label=f"best (step {best['step']})")
        if exported_step is not None and exported_step != best.get("step"):
            ax.axvline(exported_step, color="C3", lw=1, ls=":", label=f"exported (step {exported_step})")
    if "step" in best or exported_step is not None:
        a1.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def write_card(folder: str | os.PathLike) -> Path:
    """Render `folder/card.md` from `folder/preset.json` (atomically); returns its path."""
    from synth.fsutil import atomic_write_text
    from synth.preset import load_preset_dir, manifest_dict

    folder = Path(folder)
    m = manifest_dict(load_preset_dir(folder))
    path = folder / CARD_FILE
    atomic_write_text(path, render_card(json.loads(json.dumps(m)), folder))
    return path


def spectrogram_grid(examples: list[tuple[str, np.ndarray, np.ndarray | None]], sr: int,
                     path: str | os.PathLike, title: str = "") -> Path:
    """Write a PNG grid of log-mel spectrograms: one row per example, columns (real, generated).

    examples: (row title, real float32[N] or None, generated float32[N] or None) at `sr` Hz. Each
    panel shows the loudness-normalised log-mel dB (the representation `trainer eval` compares),
    on a shared colour scale from -80 dB to the grid's maximum. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synth.fsutil import atomic_path
    from trainer.evaluate import log_mel, stft_params

    rows = max(1, len(examples))
    cols = 2
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 1.9 * rows + 0.6), squeeze=False, sharex=True)
    hop = stft_params(sr)[1]
    specs = [[None if a is None else log_mel(np.asarray(a, np.float32), sr) for a in (r, g)]
             for _, r, g in examples]
    vmax = max([float(s.max()) for row in specs for s in row if s is not None] or [0.0])
    im = None
    for i, ((label, _, _), row) in enumerate(zip(examples, specs, strict=True)):
        for j, s in enumerate(row):
            ax = axes[i][j]
            if s is None:
                ax.text(0.5, 0.5, "no real note" if j == 0 else "not generated", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8)
                ax.set_yticks([])
                continue
            im = ax.imshow(s.T, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=vmax,
                           extent=(0, s.shape[0] * hop / sr, 0, s.shape[1]))
            ax.set_yticks([0, s.shape[1]])
            ax.set_yticklabels(["30 Hz", f"{sr // 2000} kHz"], fontsize=6)
            ax.tick_params(axis="x", labelsize=6)
            if i == 0:
                ax.set_title("real" if j == 0 else "generated", fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="dB")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _projection(m: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(mean float64[Z], axes float64[2, Z]): the first two principal axes of the timbres' points."""
    codes = np.asarray([t["latent"] for t in m["timbres"]], np.float64)
    mean = codes.mean(axis=0)
    _, _, vt = np.linalg.svd(codes - mean, full_matrices=False)
    axes = np.zeros((2, codes.shape[1]))
    axes[:min(2, len(vt))] = vt[:2]
    return mean, axes


def timbre_map(m: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a PNG map of family preset `m`'s timbres (manifest dict): their latent points projected on
    the first two principal axes of the points, labelled and coloured by kind; each latent knob as an
    arrow from the default timbre to its CC 127 end (dashed to CC 0); random N(0, I) latents in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synth.fsutil import atomic_path
    from trainer.family_eval import instrument_kind

    mean, axes = _projection(m)
    ts = m["timbres"]
    codes = np.asarray([t["latent"] for t in ts], np.float64)
    xy = (codes - mean) @ axes.T
    z0 = np.asarray(m["latent"]["default"], np.float64)
    d0 = int(np.argmin(np.linalg.norm(codes - z0, axis=1)))
    fig, ax = plt.subplots(figsize=(7.0, 5.6))
    cloud = (np.random.default_rng(0).standard_normal((300, codes.shape[1])) - mean) @ axes.T
    ax.scatter(cloud[:, 0], cloud[:, 1], s=4, color="0.8", zorder=0)
    from matplotlib.lines import Line2D

    kinds = [instrument_kind(t.get("program"), t.get("gm_kind")) for t in ts]
    sources = list(dict.fromkeys(t.get("source") or "" for t in ts))
    colours = {k: f"C{i}" for i, k in enumerate(dict.fromkeys(kinds))}
    for i, t in enumerate(ts):
        mk = "os^Dv"[sources.index(t.get("source") or "") % 5]
        ax.scatter(*xy[i], s=70 if i == d0 else 36, marker=mk, color=colours[kinds[i]],
                   edgecolor="k" if i == d0 else "none", zorder=3)
        ax.annotate(f"{t['name']}" + (" (default)" if i == d0 else ""), xy[i], fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    off_plane = _knob_arrows(ax, m, axes, xy[d0], float(np.ptp(xy, axis=0).max()))
    handles = [Line2D([], [], ls="", marker="o", color=c, label=k) for k, c in colours.items()]
    handles += [Line2D([], [], ls="", marker="os^Dv"[i % 5], color="0.4", label=Path(s).stem)
                for i, s in enumerate(sources)]
    handles.append(Line2D([], [], ls="", marker=".", color="0.8", label="random z ~ N(0, I)"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    if off_plane:
        ax.text(0.01, 0.01, f"{', '.join(off_plane)}: (nearly) across this plane", transform=ax.transAxes,
                fontsize=7)
    ax.set_xlabel("timbre axis 1 (latent units)", fontsize=8)
    ax.set_ylabel("timbre axis 2 (latent units)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"{m['name']}: {len(ts)} timbres, the knobs from the default timbre", fontsize=9)
    ax.grid(alpha=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _knob_arrows(ax, m: dict[str, Any], axes: np.ndarray, origin: np.ndarray, scale: float) -> list[str]:
    """Draw each latent knob from `origin` (the default timbre): an arrow to its CC 127 end, dashed to
    CC 0, projected on `axes`. Returns the knobs whose projection is under 5% of `scale`."""
    short = []
    for k in m.get("knobs") or []:
        if k.get("kind", "latent") != "latent" or not k.get("direction"):
            continue
        lo, hi = k["range"]
        off0 = lo + (hi - lo) * k["default"] / 127.0
        d = np.asarray(k["direction"], np.float64) @ axes.T
        a, b = (lo - off0) * d, (hi - off0) * d
        if max(np.linalg.norm(a), np.linalg.norm(b)) < 0.05 * max(scale, 1e-9):
            short.append(f"CC{k['cc']}")
            continue
        ax.annotate("", origin + b, origin, arrowprops={"arrowstyle": "->", "color": "k", "lw": 1.0})
        ax.plot(*np.stack([origin, origin + a]).T, "k--", lw=0.7)
        ax.annotate(f"CC{k['cc']} {k['name']}", origin + b, fontsize=7, fontweight="bold")
    return short


def morph_strip(notes: list[tuple[str, np.ndarray]], sr: int, path: str | os.PathLike, title: str = "",
                seconds: float = 1.5) -> Path:
    """Write a PNG strip of log-mel spectrograms side by side: (label, float32[N]) notes, the first
    `seconds` of each (loudness-normalised, as `trainer eval` compares them), one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synth.fsutil import atomic_path
    from trainer.evaluate import log_mel, stft_params

    hop = stft_params(sr)[1]
    frames = max(1, int(seconds * sr / hop))
    specs = [log_mel(np.asarray(a, np.float32), sr)[:frames] for _, a in notes]
    strip = np.concatenate(specs, axis=0)
    fig, ax = plt.subplots(figsize=(1.3 * len(specs) + 1.5, 3.0))
    im = ax.imshow(strip.T, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=float(strip.max()))
    edges = np.cumsum([len(s) for s in specs])
    for e in edges[:-1]:
        ax.axvline(e - 0.5, color="w", lw=0.8)
    ax.set_xticks(edges - np.asarray([len(s) for s in specs]) / 2)
    ax.set_xticklabels([lab.rsplit(": ", 1)[-1] for lab, _ in notes], fontsize=7)
    ax.set_yticks([0, strip.shape[1] - 1])
    ax.set_yticklabels(["30 Hz", f"{sr // 2000} kHz"], fontsize=7)
    pair = notes[0][0].rsplit(": ", 1)[0] if notes else ""
    ax.set_title((title + "\n" if title else "") + pair, fontsize=9)
    fig.colorbar(im, ax=ax, label="dB")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
