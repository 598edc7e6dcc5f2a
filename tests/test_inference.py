"""ONNX Runtime sessions: provider choice, the preset contract check, bad files, batching."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from synth.errors import PresetError
from synth.inference import GeneratorSession, choose_providers
from synth.latent import LatentMapper
from synth.testing.tinymodel import build_graph, make_tiny_preset


def test_provider_choice_and_log(tiny_preset, caplog):
    avail = set(ort.get_available_providers())
    chosen = choose_providers("auto")
    assert chosen[-1] == "CPUExecutionProvider"
    assert chosen == [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
                      if p in avail]
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in avail:
        # Asking for CUDA on a CPU-only build falls back instead of failing.
        assert choose_providers("cuda") == ["CPUExecutionProvider"]
    with caplog.at_level(logging.INFO, logger="synth"):
        sess = GeneratorSession(tiny_preset, providers="cpu")
    assert sess.provider == "CPUExecutionProvider"
    assert any("CPUExecutionProvider" in r.getMessage() for r in caplog.records)
    assert sess.seconds_per_note is not None and sess.seconds_per_note > 0


def test_cuda_matches_cpu(tiny_preset):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs a GPU (onnxruntime-gpu with CUDA)")
    cpu = GeneratorSession(tiny_preset, providers="cpu")
    gpu = GeneratorSession(tiny_preset, providers="cuda")
    assert gpu.provider == "CUDAExecutionProvider"
    z = np.zeros((4, 8), np.float32)
    args = (z, np.array([40, 50, 60, 70]), np.full(4, 0.8, np.float32))
    np.testing.assert_allclose(gpu.generate(*args), cpu.generate(*args), atol=1e-4)


def test_generate_shapes_and_chunking(tiny_preset):
    sess = GeneratorSession(tiny_preset, providers="cpu")
    m = LatentMapper(tiny_preset)
    z = np.stack([m.latent(m.default_key)] * 7)
    pitch = np.arange(50, 57)
    vel = np.linspace(0.2, 1.0, 7).astype(np.float32)
    whole = sess.generate(z, pitch, vel)
    assert whole.shape == (7, tiny_preset.note_samples) and whole.dtype == np.float32
    assert np.isfinite(whole).all() and np.abs(whole).max() <= 1.0
    sess.chunk = 3   # bound memory: 7 notes run as 3 + 3 + 1
    np.testing.assert_allclose(sess.generate(z, pitch, vel), whole, atol=1e-6)
    with pytest.raises(ValueError):
        sess.generate(z[:, :4], pitch, vel)


def _replace_graph(preset, model):
    onnx.save(model, str(preset.generator_path))


def test_wrong_input_names(tiny_preset):
    model = onnx.load(str(tiny_preset.generator_path))
    model.graph.input[0].name = "latent"
    for node in model.graph.node:
        node.input[:] = ["latent" if i == "z" else i for i in node.input]
    _replace_graph(tiny_preset, model)
    with pytest.raises(PresetError, match=r"generator\.onnx.*inputs are \['latent', 'pitch', 'velocity'\]"):
        GeneratorSession(tiny_preset)


def test_wrong_input_dtype(tiny_preset):
    # A valid graph whose `pitch` input is float32 instead of int64.
    model = onnx.load(str(tiny_preset.generator_path))
    for node in model.graph.node:
        node.input[:] = ["pitch_i" if i == "pitch" else i for i in node.input]
    model.graph.node.insert(0, helper.make_node("Cast", ["pitch"], ["pitch_i"], to=TensorProto.INT64))
    model.graph.input[1].type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(model)
    _replace_graph(tiny_preset, model)
    with pytest.raises(PresetError, match=r"generator\.onnx: input 'pitch' is tensor\(float\)"):
        GeneratorSession(tiny_preset)


def test_wrong_output(tiny_preset):
    model = onnx.load(str(tiny_preset.generator_path))
    model.graph.output[0].name = "wave"
    for node in model.graph.node:
        node.output[:] = ["wave" if o == "audio" else o for o in node.output]
    _replace_graph(tiny_preset, model)
    with pytest.raises(PresetError, match=r"generator\.onnx: generator outputs are \[wave: tensor\(float\)"):
        GeneratorSession(tiny_preset)


def test_latent_size_mismatch(tmp_path):
    preset = make_tiny_preset(tmp_path, latent_size=8)
    _replace_graph(preset, build_graph(16000, preset.note_samples, 4, True, "oneshot"))
    with pytest.raises(PresetError, match=r"generator\.onnx.*latent"):
        GeneratorSession(preset)


def test_metadata_mismatch(tmp_path):
    preset = make_tiny_preset(tmp_path)
    model = onnx.load(str(preset.generator_path))
    for prop in model.metadata_props:
        if prop.key == "sample_rate":
            prop.value = "22050"
    _replace_graph(preset, model)
    with pytest.raises(PresetError, match=r"generator\.onnx.*sample_rate=22050"):
        GeneratorSession(preset)


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 50, "truncate"])
def test_corrupt_file(tiny_preset, content):
    path = tiny_preset.generator_path
    if content == "truncate":
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(PresetError) as ei:
        GeneratorSession(tiny_preset)
    msg = str(ei.value)
    assert str(path) in msg and "re-export" in msg and "\n" not in msg


def test_missing_file(tiny_preset):
    tiny_preset.generator_path.unlink()
    with pytest.raises(PresetError, match="missing"):
        GeneratorSession(tiny_preset)
