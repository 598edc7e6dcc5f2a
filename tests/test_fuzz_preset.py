"""Hostile presets: `preset.json` fields of the wrong type, huge arrays, NaN/Inf, paths in names and in
the generator field, broken JSON, special files, missing or mismatching `generator.onnx`; and the rule
that a preset is only data (nothing in it is executed or unpickled).

Each case ends in a validated `Preset` or a one-line `PresetError` naming the file; through the CLI,
exit 2 with one stderr line and no output file.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from synth.errors import PresetError
from synth.preset import MANIFEST, find_preset, load_preset_dir
from synth.testing.tinymodel import build_graph, make_tiny_preset

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(folder of a valid tiny preset, its manifest dict)."""
    parent = tmp_path_factory.mktemp("base")
    p = make_tiny_preset(parent, sample_rate=8000, note_seconds=0.25, latent_size=4)
    return p.path, json.loads((p.path / MANIFEST).read_text())


def _alarm(seconds):
    def on_alarm(signum, frame):
        raise TimeoutError(f"hang: no result within {seconds} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)


def load_or_error(folder: Path):
    """load_preset_dir(folder) → Preset, or the PresetError message (checked to be one line naming a file)."""
    _alarm(10)
    try:
        return load_preset_dir(folder)
    except PresetError as e:
        msg = str(e)
        assert "\n" not in msg and str(folder) in msg and len(msg) < 600, msg
        return msg
    finally:
        signal.alarm(0)


def write_preset(tmp, base_folder: Path, manifest, raw: bytes | None = None) -> Path:
    folder = tmp / "p"
    folder.mkdir(exist_ok=True)
    shutil.copy(base_folder / "generator.onnx", folder / "generator.onnx")
    (folder / MANIFEST).write_bytes(raw if raw is not None else json.dumps(manifest).encode())
    return folder


# Values that are wrong somewhere: other types, extremes, non-finite, paths, containers.
hostile = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, -1, 127, 128, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    st.text(max_size=20), st.sampled_from(["../../etc/passwd", "/etc/passwd", "..", ".", "", "a/b", "a\\b",
                                           "generator.onnx\x00.txt", "~/x", "piano/../x"]),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6),
    st.lists(st.integers(-5, 200), max_size=6),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)

PATHS = [("format",), ("version",), ("name",), ("kind",), ("sample_rate",), ("note_samples",), ("pitch_range",),
         ("pitch_range", 0), ("velocity",), ("velocity", "conditioned"), ("velocity", "layers"),
         ("velocity", "layers", 0), ("velocity", "curve"), ("latent",), ("latent", "size"), ("latent", "default"),
         ("latent", "default", 1), ("knobs",), ("knobs", 0), ("knobs", 0, "cc"), ("knobs", 0, "direction"),
         ("knobs", 0, "direction", 0), ("knobs", 0, "range"), ("knobs", 0, "default"), ("knobs", 0, "name"),
         ("knobs", 0, "kind"),
         ("release_seconds",), ("sustain",), ("sustain", "mode"), ("sustain", "loop_end_seconds"), ("gain_db",),
         ("generator",), ("training",), ("metrics",), ("description",), ("drum_classes",)]


def _set(m, path, value, delete=False):
    cur = m
    for k in path[:-1]:
        cur = cur[k]
    if delete:
        if isinstance(cur, dict):
            cur.pop(path[-1], None)
        elif path[-1] < len(cur):
            del cur[path[-1]]
    elif isinstance(cur, dict) or path[-1] < len(cur):
        cur[path[-1]] = value


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), hostile, st.booleans()), min_size=1, max_size=4))
def test_fields_of_wrong_type_and_range(base, tmp_path_factory, edits):
    folder0, m0 = base
    m = copy.deepcopy(m0)
    for path, value, delete in edits:
        try:
            _set(m, path, value, delete)
        except (TypeError, KeyError, IndexError):
            pass  # the parent was already replaced by a scalar
    folder = write_preset(tmp_path_factory.mktemp("f"), folder0, m)
    res = load_or_error(folder)
    if not isinstance(res, str):
        # Accepted: then every field the engine uses is sane.
        assert 8000 <= res.sample_rate <= 192000 and res.note_samples >= 64
        assert len(res.default_latent) == res.latent_size
        for k in res.knobs:   # latent knobs have a full direction; engine knobs none and a sane range
            assert (len(k.direction) == res.latent_size) if k.kind == "latent" else (
                not k.direction and k.range[0] < k.range[1])
        assert res.generator_path.parent == folder and res.generator_path.is_file()


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_as_manifest(base, tmp_path_factory, data):
    folder = write_preset(tmp_path_factory.mktemp("b"), base[0], None, raw=data)
    assert isinstance(load_or_error(folder), str)


@pytest.mark.parametrize("case", ["huge-latent", "huge-array-over-limit", "deep-nesting", "nan-token",
                                  "inf-token", "not-utf8", "bom", "empty", "array-root", "big-int"])
def test_pathological_json(base, tmp_path, case):
    folder0, m0 = base
    m = copy.deepcopy(m0)
    raw = None
    if case == "huge-latent":
        # 4096 is the cap: 5000 is refused without building a 5000-long tuple per knob.
        m["latent"]["size"] = 5000
        m["latent"]["default"] = [0.0] * 5000
    elif case == "huge-array-over-limit":
        m["training"] = {"junk": [0.5] * 1_200_000}          # ~5 MB of JSON: over the manifest size cap
    elif case == "deep-nesting":
        raw = b'{"format": "neural-synth-preset", "training": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    elif case == "nan-token":
        raw = json.dumps(m).replace('"gain_db": 0.0', '"gain_db": NaN').encode()
    elif case == "inf-token":
        raw = json.dumps(m).replace('"release_seconds": 0.05', '"release_seconds": Infinity').encode()
    elif case == "not-utf8":
        raw = json.dumps(m).encode("utf-16")
    elif case == "bom":
        raw = b"\xef\xbb\xbf" + json.dumps(m).encode()
    elif case == "empty":
        raw = b""
    elif case == "array-root":
        raw = b"[1, 2, 3]"
    elif case == "big-int":
        raw = json.dumps(m).replace('"sample_rate": 8000', '"sample_rate": ' + "9" * 5000).encode()
    folder = write_preset(tmp_path, folder0, m, raw)
    res = load_or_error(folder)
    assert isinstance(res, str), case


@pytest.mark.parametrize("gen", ["../generator.onnx", "/etc/passwd", "sub/generator.onnx", "..", ".", "",
                                 "..\\generator.onnx", "missing.onnx"])
def test_generator_field_is_a_file_name_inside_the_folder(base, tmp_path, gen):
    folder0, m0 = base
    m = dict(m0, generator=gen)
    folder = write_preset(tmp_path, folder0, m)
    (tmp_path / "generator.onnx").write_bytes((folder0 / "generator.onnx").read_bytes())  # bait outside
    msg = load_or_error(folder)
    assert isinstance(msg, str) and ("file name inside" in msg or "missing" in msg), msg


def test_names_are_never_paths(base, tmp_path, monkeypatch):
    folder0, m0 = base
    root = tmp_path / "presets"
    shutil.copytree(folder0, root / "piano")
    monkeypatch.setenv("SYNTH_PRESET_PATH", "")
    for bad in ["../presets/piano", str(root / "piano"), "piano/", "~piano", "..", "", "pi ano", "a" * 65]:
        with pytest.raises(PresetError, match="not a preset name"):
            find_preset(bad, [root])
    m = dict(m0, name="../../evil")
    (root / "piano" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(PresetError, match="invalid preset name"):
        find_preset("piano", [root])


def test_special_manifest_files_do_not_hang(base, tmp_path):
    """A FIFO or a device as preset.json is refused at once (reading it would block or never end)."""
    folder0, _ = base
    for i, kind in enumerate(["fifo", "zero", "dir"]):
        folder = tmp_path / f"s{i}"
        folder.mkdir()
        shutil.copy(folder0 / "generator.onnx", folder / "generator.onnx")
        if kind == "fifo":
            os.mkfifo(folder / MANIFEST)
        elif kind == "zero":
            (folder / MANIFEST).symlink_to("/dev/zero")
        else:
            (folder / MANIFEST).mkdir()
        assert isinstance(load_or_error(folder), str), kind


def _onnx_variant(path: Path, kind: str) -> None:
    """Write a generator that breaks the contract in one way."""
    if kind == "garbage":
        path.write_bytes(os.urandom(2048))
        return
    if kind == "empty":
        path.write_bytes(b"")
        return
    if kind == "latent-mismatch":
        onnx.save(build_graph(8000, 2000, 7, True, "oneshot"), str(path))
        return
    m = build_graph(8000, 2000, 4, True, "oneshot")
    g = m.graph
    if kind == "renamed-input":
        for node in g.node:
            node.input[:] = ["latent" if i == "z" else i for i in node.input]
        g.input[0].name = "latent"
    elif kind == "pitch-float":
        g.input[1].CopyFrom(helper.make_tensor_value_info("pitch", TensorProto.FLOAT, ["B"]))
    elif kind == "z-rank3":
        g.input[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 4, 1]))
    elif kind == "output-len":
        # A symbolic length: only running the graph shows it is not the manifest's note_samples.
        g.output[0].CopyFrom(helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["B", "N"]))
    elif kind == "two-outputs":
        g.output.append(helper.make_tensor_value_info("pf", TensorProto.FLOAT, ["B"]))
    onnx.save(m, str(path))


ONNX_CASES = ["garbage", "empty", "latent-mismatch", "renamed-input", "pitch-float", "z-rank3", "output-len",
              "two-outputs", "missing"]


@pytest.mark.parametrize("kind", ONNX_CASES)
def test_bad_generator_through_the_engine(base, tmp_path, kind):
    from synth.engine import Engine

    folder0, m0 = base
    folder = write_preset(tmp_path, folder0, dict(m0, note_samples=2400) if kind == "output-len" else m0)
    if kind == "missing":
        (folder / "generator.onnx").unlink()
    else:
        _onnx_variant(folder / "generator.onnx", kind)
    try:
        p = load_preset_dir(folder)
    except PresetError as e:
        assert kind == "missing" and "generator file is missing" in str(e)
        return
    with pytest.raises(PresetError) as ei:
        Engine(sample_rate=16000, blocksize=128, presets=[p], providers="cpu")
    msg = str(ei.value)
    assert "\n" not in msg and str(folder / "generator.onnx") in msg and "re-export" in msg, msg


@pytest.mark.parametrize("kind", ["garbage", "renamed-input", "output-len", "missing"])
def test_bad_generator_through_the_render_cli(base, tmp_path, capfd, kind):
    from synth.cli import main

    folder0, m0 = base
    parent = tmp_path / "presets"
    parent.mkdir()
    folder = write_preset(parent, folder0, dict(m0, name="p", note_samples=2400 if kind == "output-len" else m0["note_samples"]))
    if kind == "missing":
        (folder / "generator.onnx").unlink()
    else:
        _onnx_variant(folder / "generator.onnx", kind)
    mid = tmp_path / "in.mid"
    import mido

    mf = mido.MidiFile()
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr += [mido.Message("note_on", note=60, velocity=100), mido.Message("note_off", note=60, time=240)]
    mf.save(str(mid))
    out = tmp_path / "o.wav"
    rc = main(["render", str(mid), "-o", str(out), "--preset", "p", "--preset-dir", str(parent)])
    cap = capfd.readouterr()
    lines = cap.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "generator" in lines[0] and "Traceback" not in cap.err, cap.err
    assert not out.exists()


class _Boom:
    """Unpickling this object would create MARKER: proof that something was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_preset_is_only_data(base, tmp_path):
    """Pickle payloads next to and inside a preset have no effect: nothing is unpickled or executed."""
    from synth.engine import Engine

    folder0, m0 = base
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Boom(str(marker)))
    m = copy.deepcopy(m0)
    # jsonpickle / __reduce__-style payloads in free-form fields, and as a whole field value.
    m["training"] = {"py/reduce": [{"py/function": "os.mkdir"}, {"py/tuple": [str(marker)]}],
                     "__reduce__": ["os.mkdir", [str(marker)]], "pickle": payload.hex()}
    m["metrics"] = {"py/object": "os.system", "cmd": f"mkdir {marker}"}
    m["description"] = f"__import__('os').mkdir({str(marker)!r})"
    folder = write_preset(tmp_path, folder0, m)
    for name in ("generator.pkl", "generator.pt", "preset.pkl", "__init__.py", "card.py"):
        (folder / name).write_bytes(payload if not name.endswith(".py") else
                                    f"import os; os.mkdir({str(marker)!r})\n".encode())
    p = load_preset_dir(folder)
    assert p.training["__reduce__"] == ["os.mkdir", [str(marker)]]   # kept as plain data
    with Engine(sample_rate=16000, blocksize=128, presets=[p], providers="cpu") as eng:
        eng.note_on(0, 60, 100)
        eng.render(512)
    assert not marker.exists()
    # A pickle named as the generator is refused as not ONNX, and still not unpickled.
    for gen in ("generator.pkl", "generator.pt"):
        (tmp_path / gen).mkdir()
        folder2 = write_preset(tmp_path / gen, folder0, dict(m, generator=gen))
        (folder2 / gen).write_bytes(payload)
        q = load_preset_dir(folder2)
        with pytest.raises(PresetError, match="cannot load the ONNX generator"):
            Engine(sample_rate=16000, blocksize=128, presets=[q], providers="cpu")
    assert not marker.exists()


def test_only_data_in_a_fresh_process(base, tmp_path):
    """The same through `python -m synth presets` and `render` in a real process."""
    folder0, m0 = base
    marker = tmp_path / "PWNED2"
    parent = tmp_path / "presets"
    parent.mkdir()
    folder = write_preset(parent, folder0, dict(m0, name="p", generator="generator.pkl"))
    (folder / "generator.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    env = dict(os.environ, PYO_GUI_WX="0", SYNTH_PRESET_PATH=str(parent))
    r = subprocess.run([sys.executable, "-m", "synth", "presets"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert "Traceback" not in r.stderr
    assert not marker.exists()
