"""A tiny pure-ONNX generator preset for tests (no torch, no training).

The graph honours the preset contract exactly: inputs `z float32[B, Z]`, `pitch int64[B]`,
`velocity float32[B]`; output `audio float32[B, N]` in [-1, 1] at `sample_rate`. It plays a
decaying (or, in loop mode, sustained) tone at the MIDI pitch's frequency whose timbre (the mix of
fundamental and 2nd harmonic) follows `sigmoid(z · w)`, so knobs that move z change the sound.
Pitches in `nan_pitches` produce NaN, to test the engine's guard against bad model output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from synth.preset import Preset, load_preset_dir, manifest_dict, validate_manifest

GM_DRUMS = {35: "kick", 36: "kick", 38: "snare", 40: "snare", 42: "closed-hat", 46: "open-hat", 49: "crash"}


def _const(name: str, arr) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name + "_v"))


def build_graph(sample_rate: int, note_samples: int, latent_size: int, velocity_conditioned: bool,
                sustain_mode: str, nan_pitches=(), seed: int = 0) -> onnx.ModelProto:
    """The tiny generator graph as an ONNX model (opset 17)."""
    rng = np.random.default_rng(seed)
    t = (np.arange(note_samples, dtype=np.float32) / sample_rate)[None, :]
    attack = np.minimum(1.0, t / 0.005)
    if sustain_mode == "loop":
        env = attack * (0.8 + 0.2 * np.exp(-t / 0.1))
    else:
        env = attack * np.exp(-t / (0.3 * note_samples / sample_rate))
    fade = np.minimum(1.0, (note_samples - 1 - np.arange(note_samples)) / (0.01 * sample_rate))[None, :]
    env = (env * fade).astype(np.float32)
    w = rng.standard_normal((latent_size, 1)).astype(np.float32)
    w /= np.linalg.norm(w)
    nodes = [
        _const("t", t), _const("env", env), _const("w", w),
        _const("c69", np.float32(69.0)), _const("c12", np.float32(12.0)), _const("two", np.float32(2.0)),
        _const("c440", np.float32(440.0)), _const("twopi", np.float32(2 * np.pi)),
        _const("half", np.float32(0.45)), _const("one", np.float32(1.0)), _const("ax1", np.array([1], np.int64)),
        _const("nanps", np.array(list(nan_pitches) or [-1], np.int64)), _const("nan", np.float32(np.nan)),
        _const("zero", np.float32(0.0)),
        helper.make_node("Cast", ["pitch"], ["pf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["pf", "c69"], ["p0"]),
        helper.make_node("Div", ["p0", "c12"], ["p1"]),
        helper.make_node("Pow", ["two", "p1"], ["ratio"]),
        helper.make_node("Mul", ["ratio", "c440"], ["f"]),
        helper.make_node("Unsqueeze", ["f", "ax1"], ["f2"]),
        helper.make_node("Mul", ["f2", "t"], ["ft"]),
        helper.make_node("Mul", ["ft", "twopi"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["s1"]),
        helper.make_node("Mul", ["phase", "two"], ["phase2"]),
        helper.make_node("Sin", ["phase2"], ["s2"]),
        helper.make_node("MatMul", ["z", "w"], ["zw"]),
        helper.make_node("Sigmoid", ["zw"], ["mix"]),
        helper.make_node("Sub", ["one", "mix"], ["mix1"]),
        helper.make_node("Mul", ["s1", "mix1"], ["a1"]),
        helper.make_node("Mul", ["s2", "mix"], ["a2"]),
        helper.make_node("Add", ["a1", "a2"], ["tone"]),
        helper.make_node("Mul", ["tone", "env"], ["shaped"]),
        helper.make_node("Mul", ["shaped", "half"], ["scaled"]),
    ]
    if velocity_conditioned:
        nodes += [helper.make_node("Unsqueeze", ["velocity", "ax1"], ["v2"]),
                  helper.make_node("Mul", ["scaled", "v2"], ["voiced"])]
    else:
        nodes += [helper.make_node("Identity", ["scaled"], ["voiced"])]
    # NaN for the chosen pitches: Where(pitch in nan_pitches, NaN, 0) added to the audio.
    nodes += [
        helper.make_node("Unsqueeze", ["pitch", "ax1"], ["pcol"]),
        helper.make_node("Equal", ["pcol", "nanps"], ["eq"]),
        helper.make_node("Cast", ["eq"], ["eqf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["eqf"], ["isbad"], axes=[1], keepdims=1),
        helper.make_node("Cast", ["isbad"], ["isbadb"], to=TensorProto.BOOL),
        helper.make_node("Where", ["isbadb", "nan", "zero"], ["poison"]),
        helper.make_node("Add", ["voiced", "poison"], ["audio"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_generator",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", latent_size]),
         helper.make_tensor_value_info("pitch", TensorProto.INT64, ["B"]),
         helper.make_tensor_value_info("velocity", TensorProto.FLOAT, ["B"])],
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["B", note_samples])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="neural-synth-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_tiny_preset(parent: Path, name: str = "piano", sample_rate: int = 16000, note_seconds: float = 1.0,
                     kind: str = "pitched", latent_size: int = 8, velocity_conditioned: bool = True,
                     layers=(32, 64, 96, 127), sustain_mode: str = "oneshot", pitch_range=(21, 108),
                     drum_classes: dict[int, str] | None = None, nan_pitches=(), release_seconds: float = 0.05,
                     seed: int = 0, extra_knobs: tuple[dict, ...] = (), timbres: tuple[dict, ...] = ()) -> Preset:
    """Write `parent/name/` (preset.json + generator.onnx) and return the loaded `Preset`.

    `timbres`: a family preset's timbres ({"name", "source", "bank", "program"}), each given a latent
    point 3 units out along its own random direction (the first at the default latent)."""
    folder = Path(parent) / name
    folder.mkdir(parents=True, exist_ok=True)
    n = int(round(note_seconds * sample_rate))
    model = build_graph(sample_rate, n, latent_size, velocity_conditioned, sustain_mode, nan_pitches, seed)
    for k, v in {"name": name, "sample_rate": sample_rate, "note_samples": n, "pitch_lo": pitch_range[0],
                 "pitch_hi": pitch_range[1], "latent_size": latent_size}.items():
        model.metadata_props.add(key=k, value=str(v))
    onnx.save(model, str(folder / "generator.onnx"))
    rng = np.random.default_rng(seed + 1)
    w = onnx.numpy_helper.to_array(next(nd for nd in model.graph.node if nd.output[0] == "w").attribute[0].t)
    other = rng.standard_normal(latent_size)
    other /= np.linalg.norm(other)
    if kind == "drums" and drum_classes is None:
        drum_classes = GM_DRUMS
    m = {
        "format": "neural-synth-preset", "version": 1, "name": name, "description": "tiny test generator",
        "kind": kind, "sample_rate": sample_rate, "note_samples": n,
        "pitch_range": [min(drum_classes), max(drum_classes)] if kind == "drums" else list(pitch_range),
        "velocity": {"conditioned": velocity_conditioned, "layers": list(layers), "curve": 1.0},
        "latent": {"size": latent_size, "default": [0.0] * latent_size},
        "knobs": [
            {"cc": 74, "name": "brightness", "description": "more 2nd harmonic", "direction": w[:, 0].tolist(),
             "range": [-4.0, 4.0], "default": 64},
            {"cc": 70, "name": "colour", "description": "a random direction", "direction": other.tolist(),
             "range": [-2.0, 2.0], "default": 64},
            *extra_knobs,
        ],
        "release_seconds": release_seconds, "sustain": {"mode": sustain_mode}, "gain_db": 0.0,
        "generator": "generator.onnx", "training": {"note": "not trained: a fixed test graph"}, "metrics": {},
    }
    if timbres:
        pts = rng.standard_normal((len(timbres), latent_size))
        pts *= 3.0 / np.linalg.norm(pts, axis=1, keepdims=True)
        pts[0] = 0.0
        m["timbres"] = [{**t, "latent": pts[i].tolist()} for i, t in enumerate(timbres)]
    if kind == "drums":
        m["drum_classes"] = {str(k): v for k, v in drum_classes.items()}
    validate_manifest(json.loads(json.dumps(m)), folder)
    (folder / "preset.json").write_text(json.dumps(manifest_dict(validate_manifest(m, folder)), indent=1))
    return load_preset_dir(folder)
