"""`trainer export`: a tiny torch generator → a preset the synth loads and plays; the parity check
refuses a graph that differs from torch; a failing export leaves the previous preset intact."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import onnx
import pytest
import torch

from synth.errors import UserError
from synth.inference import GeneratorSession
from synth.latent import LatentMapper
from synth.preset import load_preset_dir
from trainer import export as ex
from trainer.evaluate import descriptors
from trainer.testing.tinytorch import TinyTorchGenerator

CFG = {"dataset": {"sample_rate": 16000, "note_samples": 8000, "kind": "pitched", "pitch_range": [40, 84],
                   "velocities": [40, 80, 120], "source": {"type": "test", "command": ["make", "tones"]}},
       "arch": {"name": "tiny", "channels": 1}, "steps": 2, "minutes": 0.01, "hardware": "test CPU"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    G = TinyTorchGenerator().eval()
    dest = tmp_path_factory.mktemp("presets") / "tiny"
    old_mask = os.umask(0o022)
    try:
        preset = ex.export_preset(G, CFG, dest, description="tiny test tone", quiet=True,
                                  commands=["python", "-m", "trainer", "export", "RUN", "--preset", str(dest)])
    finally:
        os.umask(old_mask)
    return G, preset


def test_export_writes_a_preset_the_synth_plays(exported):
    G, preset = exported
    folder = preset.path
    assert sorted(p.name for p in folder.iterdir()) == ["card.md", "generator.onnx", "preset.json", "spectrograms.png"]
    # Readable by everyone under umask 022, like any other file (not the 0700/0600 of temp files).
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
    p = load_preset_dir(folder)
    assert (p.name, p.sample_rate, p.note_samples, p.pitch_range, p.latent_size) == ("tiny", 16000, 8000, (40, 84), 8)
    assert p.velocity_layers == (40, 80, 120) and p.velocity_conditioned
    assert p.sustain_mode == "oneshot"          # the tone decays to silence
    assert p.training["params"] == sum(x.numel() for x in G.parameters())
    assert p.training["parity_max_abs"] <= 1e-4
    assert any("--preset" in c for c in p.training["commands"]) and "make tones" in p.training["commands"]
    model = onnx.load(str(folder / "generator.onnx"), load_external_data=False)
    meta = {m.key: m.value for m in model.metadata_props}
    assert {k: meta[k] for k in ("name", "sample_rate", "note_samples", "pitch_lo", "pitch_hi", "latent_size",
                                 "arch")} == {"name": "tiny", "sample_rate": "16000", "note_samples": "8000",
                                              "pitch_lo": "40", "pitch_hi": "84", "latent_size": "8", "arch": "tiny"}
    assert model.opset_import[0].version >= 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    # Dynamic batch, and the same notes as torch.
    s = GeneratorSession(p, providers="cpu", threads=1)
    z = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    k = np.array([40, 50, 60, 70, 84])
    v = np.linspace(0.1, 1, 5).astype(np.float32)
    with torch.no_grad():
        ref = G(torch.from_numpy(z), torch.from_numpy(k), torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(s.generate(z, k, v), ref, atol=1e-4)
    card = (folder / "card.md").read_text()
    for part in ("## Data", "## Architecture and training", "## Metrics", "## Knobs", "spectrograms.png",
                 "tiny test tone", "test CPU"):
        assert part in card


def test_knobs_are_found_named_and_oriented(exported):
    G, preset = exported
    knobs = {k.name: k for k in preset.knobs}
    assert "brightness" in knobs and "decay" in knobs, [k.name for k in preset.knobs]
    assert knobs["brightness"].cc == 74
    assert {k.cc for k in preset.knobs} <= {74, 70, 71, 76}
    w_b = G.bright.weight.detach().numpy()[0]
    w_d = G.decay.weight.detach().numpy()[0]
    # The tiny generator's true controls: the knob directions line up with them.
    assert abs(np.dot(knobs["brightness"].direction, w_b / np.linalg.norm(w_b))) > 0.9
    assert abs(np.dot(knobs["decay"].direction, w_d / np.linalg.norm(w_d))) > 0.9
    # CC 64 is the default latent exactly; turning a knob up increases its named quantity.
    mapper = LatentMapper(preset)
    s = GeneratorSession(preset, providers="cpu", threads=1, warmup=False)
    for name, quantity in (("brightness", "brightness"), ("decay", "decay")):
        i = [k.name for k in preset.knobs].index(name)
        state = list(mapper.default_key)
        np.testing.assert_allclose(mapper.latent(tuple(state)), preset.default_latent, atol=1e-6)
        notes = []
        for cc in (0, 127):
            state[i] = cc
            notes.append(s.generate(mapper.latent(tuple(state))[None].astype(np.float32), np.array([60]),
                                    np.array([0.8], np.float32))[0])
        d = descriptors(np.stack(notes), preset.sample_rate)[quantity]
        assert d[1] > d[0], (name, d)


def test_parity_check_refuses_a_graph_that_differs(tmp_path):
    G = TinyTorchGenerator().eval()
    data, _ = ex.onnx_bytes(G, 8, "torchscript")
    path = tmp_path / "g.onnx"
    ex.write_onnx(data, path, {"name": "x"})
    assert ex.parity_check(G, path, [60, 61], 8) <= 1e-4
    # A torch model that differs from the graph by 1e-3 is refused; by 1e-6 it passes.
    for delta, refused in ((1e-3, True), (1e-6, False)):
        other = TinyTorchGenerator().eval()
        with torch.no_grad():
            other.decay.bias.fill_(delta)
        if refused:
            with pytest.raises(ex.ExportError, match=r"max \|Δ\|"):
                ex.parity_check(other, path, [60, 61], 8)
        else:
            ex.parity_check(other, path, [60, 61], 8)


class _Sine(torch.nn.Module):
    """A sustained sine at the key's pitch times `ratio`: 4 s at 24 kHz, like a strings note."""

    note_samples = 96000

    def __init__(self, ratio: float = 1.0):
        super().__init__()
        self.ratio = ratio

    def forward(self, z, pitch, velocity):
        t = torch.arange(self.note_samples, dtype=torch.float64) / 24000.0
        f = 440.0 * torch.pow(2.0, (pitch.double() - 69.0) / 12.0) * self.ratio
        ph = torch.remainder(f.unsqueeze(-1) * t, 1.0)
        return (0.5 * torch.sin(2 * torch.pi * ph)).float() + 0.0 * z[:, :1] * velocity.unsqueeze(-1)


def test_parity_accepts_a_phase_drift_but_not_a_wrong_pitch(tmp_path):
    """Frequencies that differ by 1e-8 (relative) make a 4-s sustained note drift by
    more than 1e-4 at its end while the attack and the spectra agree: accepted, with the figures. A
    pitch that is really off (1e-4 relative, 0.17 cents) is refused although its attack agrees."""
    path = tmp_path / "sine.onnx"
    data, _ = ex.onnx_bytes(_Sine().eval(), 8, "torchscript")
    ex.write_onnx(data, path, {"name": "sine"})
    details: dict = {}
    worst = ex.parity_check(_Sine(1 + 1e-8).eval(), path, [90, 96], 8, details=details)
    assert worst > 1e-4 >= details["max_abs_attack"], details
    assert details["spectral_rel"] <= 1e-3
    with pytest.raises(ex.ExportError, match="spectra"):
        ex.parity_check(_Sine(1 + 1e-4).eval(), path, [90, 96], 8)


def test_failing_export_leaves_the_old_preset_intact(tmp_path, monkeypatch):
    dest = tmp_path / "tiny"
    # The TorchScript exporter here: it is quicker, and this test is about the folder, not the exporter.
    ex.export_preset(TinyTorchGenerator(seed=3).eval(), CFG, dest, quiet=True, exporters=("torchscript",))
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with pytest.raises(UserError, match="already exists"):
        ex.export_preset(TinyTorchGenerator().eval(), CFG, dest, quiet=True)
    # The written graph is corrupted (its weights nudged by 1 %) on every attempt: parity refuses
    # each, nothing changes.
    real_write = ex.write_onnx

    def corrupting_write(data, path, meta):
        model = onnx.load_from_string(data)
        for init in model.graph.initializer:
            arr = onnx.numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.size >= 8:
                init.CopyFrom(onnx.numpy_helper.from_array(arr * np.float32(1.01), init.name))
        real_write(model.SerializeToString(), path, meta)

    monkeypatch.setattr(ex, "write_onnx", corrupting_write)
    with pytest.raises(ex.ExportError, match="nothing was written") as err:
        ex.export_preset(TinyTorchGenerator().eval(), CFG, dest, force=True, quiet=True,
                         exporters=("torchscript", "torchscript"))
    assert str(err.value).count("max |Δ|") == 2
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]      # no temporary folder left behind
    assert json.loads((dest / "preset.json").read_text())["name"] == "tiny"


def _enveloped(level_db_per_s: float, hold: float, release_tau: float, sr: int = 8000, seconds: float = 2.0):
    t = np.arange(int(seconds * sr)) / sr
    env = 10 ** (-level_db_per_s * np.minimum(t, hold) / 20) * np.exp(-np.maximum(0.0, t - hold) / release_tau)
    return (0.5 * env * np.sin(2 * np.pi * 220 * t) * np.minimum(1, t / 0.005)).astype(np.float32)


def test_envelope_facts_sustain_and_release():
    sr = 8000
    # Organ-like: level held until note-off at 1.5 s, then a release with tau 0.05 s (30 dB in
    # 0.05·ln(10^1.5) = 0.17 s).
    organ = np.stack([_enveloped(1.0, 1.5, 0.05) for _ in range(3)])
    mode, evidence, release, _ = ex.envelope_facts(organ, sr, hold_seconds=1.5, kind="pitched")
    assert mode == "loop" and "note-off" in evidence
    assert release == pytest.approx(0.05 * np.log(10 ** 1.5), abs=0.02)
    # Piano-like: 20 dB per second of decay is 30 dB down by note-off.
    piano = np.stack([_enveloped(20.0, 1.5, 0.05)])
    assert ex.envelope_facts(piano, sr, hold_seconds=1.5, kind="pitched")[0] == "oneshot"
    # Unknown note-off: judged over the note's last 10 %.
    assert ex.envelope_facts(organ[:, :int(1.4 * sr)], sr, None, "pitched")[0] == "loop"
    assert ex.envelope_facts(organ, sr, None, "drums")[0] == "oneshot"


def test_velocity_curve_recovers_the_exponent():
    sr, keys, vels = 8000, np.repeat([48, 60], 4), np.tile([32, 64, 96, 127], 2)
    t = np.arange(sr) / sr
    for c in (1.0, 2.0):
        audio = np.stack([(v / 127) ** c * 0.5 * np.sin(2 * np.pi * 220 * 2 ** ((k - 57) / 12) * t)
                          for k, v in zip(keys, vels, strict=True)]).astype(np.float32)
        assert ex.velocity_curve(audio, keys, vels, sr) == pytest.approx(c, abs=0.02)


def test_default_latent_is_chosen_by_sound_on_train_and_valid_notes_only(tmp_path):
    """The default latent is searched for the one that sounds most like the real notes; the test split
    never takes part, so `trainer eval` stays held out."""
    from trainer.data import OneShotDataset
    from trainer.testing.fitdata import make_dataset, tone

    sr, n = 8000, 4096
    root = make_dataset(tmp_path / "data", sample_rate=sr, note_samples=n, pitches=range(48, 73, 2))
    ds = OneShotDataset(root)
    test = {int(i) for i in np.nonzero(np.asarray([x["split"] for x in ds.notes]) == "test")[0]}
    seen = []

    def gen(z, pitch, velocity):
        # The real notes are tone(); the further z[:, 0] is from 1.5, the more a buzz covers them.
        seen.append(set(zip(pitch.tolist(), np.round(velocity, 4).tolist(), strict=True)))
        t = np.arange(n) / sr
        out = np.stack([tone(int(p), int(round(v * 127)), sr, n, 0.75 * n / sr) for p, v in
                        zip(pitch, velocity, strict=True)])
        buzz = 0.2 * np.sign(np.sin(2 * np.pi * 1234.0 * t))[None] * np.exp(-3 * t)[None]
        return (out + np.abs(z[:, :1] - 1.5) * buzz).astype(np.float32)

    z, doc = ex.choose_default_latent(gen, root, sr, list(range(40, 90)), np.zeros(4, np.float32), "zeros", seed=1,
                                      n_random=12, per_round=8)
    assert abs(z[0] - 1.5) < 0.5 and "test split is not used" in doc and "zeros" in doc
    test_pairs = {(int(ds.pitches[i]), round(float(ds.velocities[i]), 4)) for i in test}
    assert test_pairs and not any(test_pairs & s for s in seen)


def test_kits_get_engine_knobs_on_free_ccs_and_pitched_presets_none():
    """A kit's export adds `decay` and `tune` (engine knobs, no latent) on the CCs its latent knobs left
    free; the manifest validates, and CC 64 of tune / CC 127 of decay leave the kit as trained."""
    from synth.latent import LatentMapper
    from synth.preset import validate_manifest
    from trainer.export import engine_knobs

    assert engine_knobs("pitched", [], 4.0) == []
    ks = engine_knobs("drums", [], 2.0)
    assert [(k["name"], k["cc"]) for k in ks] == [("tune", 70), ("decay", 74)]
    latent = [{"cc": 74, "name": "timbre 1", "description": "", "direction": [1.0, 0.0], "range": [-2.0, 2.0],
               "default": 64}]
    ks2 = engine_knobs("drums", latent, 2.0)
    assert {k["cc"] for k in ks2}.isdisjoint({74}) and len({k["cc"] for k in ks2}) == 2
    assert all(k["description"] for k in ks2)
    tiny = {"format": "neural-synth-preset", "version": 1, "name": "k", "kind": "drums", "sample_rate": 16000,
            "note_samples": 32000, "pitch_range": [36, 38], "drum_classes": {"36": "kick", "38": "snare"},
            "velocity": {"conditioned": False, "layers": [127]}, "latent": {"size": 2, "default": [0.0, 0.0]},
            "knobs": latent + ks2, "release_seconds": 0.1}
    import pathlib
    import tempfile

    folder = pathlib.Path(tempfile.mkdtemp())
    (folder / "generator.onnx").write_bytes(b"x")
    p = validate_manifest(tiny, folder)
    m = LatentMapper(p)
    assert m.split(m.default_key) == (m.default_key, 1.0) and m.decay_seconds(m.default_key) is None
