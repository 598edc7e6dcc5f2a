"""Models: every arch builds from a config, honours the generator contract and exports to ONNX
with onnxruntime parity <= 1e-4; the export-safe DSP blocks match direct references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synth.errors import UserError
from trainer import config as C
from trainer.models import ARCHS, build_discriminator, build_encoder, build_generator
from trainer.nn.dsp import InverseSTFT, harmonic_bank, make_noise_bank, noise_bank_synth
from trainer.nn.layers import PhaseShuffle
from trainer.testing.fitdata import TINY_MODELS

TINY = TINY_MODELS
DATA = {"sample_rate": 8000, "note_samples": 4096, "kind": "pitched", "pitch_range": [40, 80],
        "hold_seconds": 0.4}


def tiny_cfg(arch: str, **data) -> dict:
    return C.resolve([TINY, {"arch": arch}], {**DATA, **data})


@pytest.mark.parametrize("arch", ARCHS)
def test_generator_contract_and_discriminator(arch):
    torch.manual_seed(0)
    cfg = tiny_cfg(arch)
    G, D = build_generator(cfg), build_discriminator(cfg)
    assert (G.sample_rate, G.note_samples) == (8000, 4096)
    B = 3
    z = torch.randn(B, G.latent_size)
    y = G(z, torch.tensor([40, 60, 80]), torch.tensor([0.2, 0.6, 1.0]))
    assert y.shape == (B, 4096) and y.dtype == torch.float32
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0 and y.abs().max() > 0
    logit, aux = D(y, torch.tensor([40, 60, 80]), torch.tensor([0.2, 0.6, 1.0]))
    assert logit.shape == (B,) and aux.shape == (B, 128)
    (logit.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad)


def test_drum_conditioning_uses_the_key():
    torch.manual_seed(0)
    G = build_generator(tiny_cfg("ddsp", kind="drums"))
    z = torch.zeros(2, G.latent_size)
    y = G(z, torch.tensor([36, 38]), torch.tensor([1.0, 1.0]))
    assert not torch.allclose(y[0], y[1])


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_export_parity(arch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    G = build_generator(tiny_cfg(arch)).eval()
    z = torch.randn(2, G.latent_size)
    args = (z, torch.tensor([45, 70]), torch.tensor([0.5, 0.9]))
    path = tmp_path / "g.onnx"
    dyn = {n: {0: "batch"} for n in ("z", "pitch", "velocity", "audio")}
    torch.onnx.export(G, args, str(path), input_names=["z", "pitch", "velocity"], output_names=["audio"],
                      opset_version=17, dynamic_axes=dyn, dynamo=False)
    import onnx
    model = onnx.load(str(path))
    assert not any(n.op_type in ("DFT", "STFT") for n in model.graph.node)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for B in (1, 5):   # the batch axis is dynamic
        zz = torch.randn(B, G.latent_size)
        p = torch.randint(40, 81, (B,))
        v = torch.rand(B)
        with torch.no_grad():
            ref = G(zz, p, v).numpy()
        out = sess.run(None, {"z": zz.numpy(), "pitch": p.numpy(), "velocity": v.numpy()})[0]
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= 1e-4


def test_encoder_shapes():
    cfg = tiny_cfg("ddsp")
    cfg["train"]["encoder"] = True
    E = build_encoder(cfg)
    mu, logvar = E(torch.randn(2, 4096))
    assert mu.shape == logvar.shape == (2, cfg["model"]["ddsp"]["latent_size"])


def test_harmonic_bank_matches_direct_oscillators():
    sr, hop, M = 8000, 40, 12
    torch.manual_seed(0)
    amps = torch.rand(2, M + 1, 3, dtype=torch.float64)
    freqs = torch.tensor([[110.0, 220.0, 1234.5], [50.0, 3000.0, 3999.0]], dtype=torch.float64)
    y = harmonic_bank(amps, freqs, sr, hop)
    t = torch.arange(M * hop, dtype=torch.float64)
    pos = t / hop
    lo = pos.floor().long()
    fr = (pos - lo).view(1, -1, 1)
    a = amps[:, lo] * (1 - fr) + amps[:, lo + 1] * fr                   # linear interpolation
    ref = (a * torch.sin(2 * math.pi * freqs.unsqueeze(1) * (t / sr).view(1, -1, 1))).sum(-1)
    assert torch.allclose(y, ref, atol=1e-9)


def test_noise_bank_loops_and_interpolates():
    sr, hop = 8000, 32
    bank = torch.from_numpy(make_noise_bank(sr, 10 * hop, 3)).double()
    assert torch.allclose(bank.pow(2).mean(1), torch.ones(3, dtype=torch.float64), atol=1e-6)
    amps = torch.rand(1, 26, 3, dtype=torch.float64)                  # 25 frames: 2.5 loops of the bank
    y = noise_bank_synth(amps, bank, hop)
    n = torch.arange(25 * hop)
    pos = n.double() / hop
    lo = pos.floor().long()
    fr = (pos - lo).view(-1, 1)
    a = amps[0, lo] * (1 - fr) + amps[0, lo + 1] * fr
    ref = (a * bank[:, n % bank.shape[1]].t()).sum(-1)
    assert torch.allclose(y[0], ref, atol=1e-9)


def test_inverse_stft_inverts_torch_stft():
    n_fft, hop, T = 256, 64, 30
    x = torch.randn(2, T * hop)
    S = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=True,
                   return_complex=True)[:, :, :T].transpose(1, 2)
    inv = InverseSTFT(n_fft, hop, T)
    assert (inv(S.real, S.imag) - x).abs().max() < 1e-5      # edges included


def test_phase_shuffle_shifts_in_train_only():
    ps = PhaseShuffle(2)
    x = torch.arange(20.0).view(1, 1, 20).repeat(4, 3, 1)
    torch.manual_seed(0)
    y = ps.train()(x)
    assert y.shape == x.shape
    shifts = {int(y[b, 0, 10] - x[b, 0, 10]) for b in range(4)}
    assert shifts <= {-2, -1, 0, 1, 2}
    assert torch.equal(y[:, 0], y[:, 2])                  # one shift per example, all channels
    assert torch.equal(ps.eval()(x), x)


def test_config_rejects_unknown_keys_and_hash_ignores_run():
    from synth.errors import UserError
    with pytest.raises(UserError, match="unknown key"):
        C.resolve([{"train": {"stepz": 3}}], DATA)
    a = C.resolve([{"run": {"device": "cpu"}}], DATA)
    b = C.resolve([{"run": {"device": "cuda"}}], DATA)
    c = C.resolve([{"train": {"batch": 3}}], DATA)
    assert C.config_hash(a) == C.config_hash(b) != C.config_hash(c)
    assert a["train"]["lr_g"] == C.ARCH_TRAIN["ddsp"]["lr_g"]


def test_drum_kits_get_the_fine_noise_head_and_overlays_still_win():
    drums = C.resolve([], {**DATA, "kind": "drums"})["model"]["ddsp"]
    for k, v in C.KIND_MODEL["drums"]["ddsp"].items():
        assert drums[k] == v
    pitched = C.resolve([], DATA)["model"]["ddsp"]
    assert (pitched["n_noise_bands"], pitched["noise_ctrl_bands"], pitched["noise_decay_stages"]) == (16, 0, 1)
    assert C.resolve([], {**DATA, "kind": "drums"})["train"]["spec_floor_db"] == -80.0
    assert C.resolve([], DATA)["train"]["spec_floor_db"] is None     # pitched: the absolute floor
    assert C.resolve([], {**DATA, "kind": "drums"})["train"]["adv_weight"] == 0.3
    assert C.resolve([], DATA)["train"]["adv_weight"] == 0.3       # pitched too: the GM piano drifted at 1.0
    over = C.resolve([{"model": {"ddsp": {"noise_decay_stages": 1}}}], {**DATA, "kind": "drums"})["model"]["ddsp"]
    assert over["noise_decay_stages"] == 1 and over["n_noise_bands"] == 64


def test_coarse_noise_grid_interpolates_across_bands_and_exports(tmp_path):
    """noise_ctrl_bands < n_noise_bands: the correction grid lives on a coarse band axis (end bands map
    to end control bands, the rest interpolate); two-stage noise decays; ONNX parity as for every arch."""
    ort = pytest.importorskip("onnxruntime")
    from trainer.models.ddsp import DDSPGenerator

    torch.manual_seed(2)
    kw = dict(sample_rate=8000, note_samples=4096, kind="drums", n_harmonics=8, hop=64, hidden=32, ctrl_frames=8,
              ctrl_bands=4, noise_seconds=0.064, n_noise_bands=12, noise_ctrl_bands=4, noise_decay_stages=2)
    G = DDSPGenerator(**kw).eval()
    assert G.Wq.shape == (12, 4)
    assert torch.allclose(G.Wq.sum(1), torch.ones(12))
    assert G.Wq[0, 0] == 1 and G.Wq[-1, -1] == 1
    assert {"n_fast", "n_slow", "n_mix"} <= set(G.sizes) and "n_decay" not in G.sizes
    assert G.sizes["n_grid"] == 8 * 4
    per_band = DDSPGenerator(**{**kw, "noise_ctrl_bands": 0})
    assert torch.equal(per_band.Wq, torch.eye(12)) and per_band.sizes["n_grid"] == 8 * 12
    z = torch.randn(3, G.latent_size)
    p, v = torch.tensor([36, 42, 81]), torch.tensor([0.2, 0.6, 1.0])
    with torch.no_grad():
        y = G(z, p, v)
    assert torch.isfinite(y).all() and 0 < y.abs().max() <= 1.0
    path = tmp_path / "g.onnx"
    dyn = {n: {0: "batch"} for n in ("z", "pitch", "velocity", "audio")}
    torch.onnx.export(G, (z, p, v), str(path), input_names=["z", "pitch", "velocity"], output_names=["audio"],
                      opset_version=17, dynamic_axes=dyn, dynamo=False)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"z": z.numpy(), "pitch": p.numpy(), "velocity": v.numpy()})[0]
    assert np.abs(out - y.numpy()).max() <= 1e-4
    from synth.errors import UserError
    with pytest.raises(UserError, match="noise_decay_stages"):
        DDSPGenerator(**{**kw, "noise_decay_stages": 3})


def test_drum_keys_put_their_partials_at_the_measured_peak():
    """key_hz (from the data: trainer.fit.drum_key_hz) replaces a kit key's note frequency as the
    partials' f0; keys without a measurement keep the note frequency; the config carries it to export."""
    from trainer.nn.dsp import midi_note_hz

    cfg = tiny_cfg("ddsp", kind="drums", key_hz={"38": 196.5, "56": 471.0})
    G = build_generator(cfg)
    z = torch.zeros(3, G.latent_size)
    with torch.no_grad():
        c = G.controls(z, torch.tensor([38, 56, 42]), torch.full((3,), 0.5))
    f0 = c["freqs"][:, 0] / torch.sqrt(1.0 + c["inharmonicity"][:, 0])   # undo the learned stretch of partial 1
    cents = 1200 * torch.log2(f0 / torch.tensor([196.5, 471.0, float(midi_note_hz(torch.tensor(42)))]))
    assert cents.abs().max() <= 10.0 + 1e-3   # the generator's detune is at most +-10 cents


def test_dominant_peak_finds_a_drums_tuning():
    from trainer.data.pitch import dominant_peak_hz

    sr = 24000
    t = np.arange(sr // 2) / sr
    rng = np.random.default_rng(0)
    hits = [np.exp(-t * d) * (np.sin(2 * np.pi * 147.3 * t) + 0.3 * rng.standard_normal(len(t))) * g
            for d, g in ((8.0, 1.0), (12.0, 0.05))]
    assert abs(dominant_peak_hz(np.stack(hits), sr) - 147.3) < 1.0
    assert np.isnan(dominant_peak_hz(np.zeros((1, 4800)), sr))


def _ddsp_with_bias(**over):
    """A tiny DDSP generator whose head ignores the input (weights zeroed) so its controls are the biases."""
    from trainer.models.ddsp import DDSPGenerator

    kw = dict(sample_rate=8000, note_samples=4096, kind="drums", n_harmonics=8, n_noise_bands=4, hop=64, hidden=32,
              ctrl_frames=8, ctrl_bands=4, noise_seconds=0.064)
    kw.update(over)
    G = DDSPGenerator(**kw).eval()
    with torch.no_grad():
        G.head.weight.zero_()
        b = G._split(G.head.bias.unsqueeze(0))
        b["attack"][:] = -20.0             # the shortest attack: 0.5 ms = 4 samples at 8 kHz
        b["h_fast"][:] = -20.0             # slow decays, so the level is flat over the first hops
        b["h_slow"][:] = -20.0
        b["n_fast"][:] = -20.0
        b["n_slow"][:] = -20.0
    return G


def _hit(G):
    with torch.no_grad():
        return G(torch.zeros(1, G.latent_size), torch.tensor([40]), torch.tensor([1.0]))[0].numpy()


def test_attack_at_audio_rate_is_not_one_hop_long():
    """On the control grid frame 0 is silent and amplitudes ramp linearly to frame 1, so any attack
    lasts a hop (64 samples here, 10 ms at 24 kHz in the presets); at audio rate a 0.5-ms attack is
    4 samples. Old runs (no key in their config) keep the grid ramp, so they export unchanged."""
    common = dict(noise_decay_stages=2)
    grid = _hit(_ddsp_with_bias(attack_audio_rate=False, **common))
    audio = _hit(_ddsp_with_bias(attack_audio_rate=True, **common))
    rms = lambda x: float(np.sqrt(np.mean(x ** 2)))   # noqa: E731
    # the first quarter hop against the third hop, where both have reached the note's level
    assert rms(grid[:16]) < 0.3 * rms(grid[128:192])
    assert rms(audio[:16]) > 0.6 * rms(audio[128:192])
    assert np.allclose(audio[128:1024], grid[128:1024], atol=1e-6)   # same note once the attack is over
    assert C.KIND_MODEL["drums"]["ddsp"]["attack_audio_rate"] is True
    assert build_generator(tiny_cfg("ddsp", kind="drums")).attack_audio_rate
    assert not build_generator(tiny_cfg("ddsp")).attack_audio_rate   # pitched: one GM piano run was worse
    old = tiny_cfg("ddsp", kind="drums")
    del old["model"]["ddsp"]["attack_audio_rate"]
    assert not build_generator(old).attack_audio_rate


def test_end_stage_stops_the_note_where_it_learns_to_and_exports(tmp_path):
    """end_stage (drum kits): after the learned end time the note falls at 1500 dB/s, to silence a
    log-mel floor of -80 dB cannot see, as a sampler voice stops where its sample ends; before it
    the note is untouched. The gradient reaches the end time, and ONNX parity holds."""
    ort = pytest.importorskip("onnxruntime")
    G = _ddsp_with_bias(end_stage=True, noise_decay_stages=2)
    with torch.no_grad():
        G._split(G.head.bias.unsqueeze(0))["end"][:] = 0.0   # t_end = half the note = 2048 samples
    y = _hit(G)
    ref = _ddsp_with_bias(end_stage=True, noise_decay_stages=2)
    with torch.no_grad():
        ref._split(ref.head.bias.unsqueeze(0))["end"][:] = 30.0   # t_end at the note's end
    y_long = _hit(ref)
    assert np.allclose(y[:2048], y_long[:2048], atol=1e-6)
    peak = np.abs(y).max()
    assert np.abs(y[2048 + 800:]).max() < 1e-6 * peak            # 100 ms after the end: under -120 dB
    assert np.abs(y_long[2048 + 800:]).max() > 1e-2 * peak
    assert C.KIND_MODEL["drums"]["ddsp"]["end_stage"] is True
    assert C.DEFAULTS["model"]["ddsp"]["end_stage"] is False
    # a velocity the kit never had may drive the end time to 0; end_min keeps the hit (a run's
    # held-out velocity-127 cuica was silent without it)
    floor = _ddsp_with_bias(end_stage=True, end_min_seconds=0.05, noise_decay_stages=2)
    with torch.no_grad():
        floor._split(floor.head.bias.unsqueeze(0))["end"][:] = -30.0
    y_min = _hit(floor)
    assert np.allclose(y_min[:384], y_long[:384], atol=1e-6)        # untouched up to the control frame before 50 ms
    assert np.abs(y_min[400 + 800:]).max() < 1e-6 * peak
    # the end time learns from a loss on the tail
    Gt = _ddsp_with_bias(end_stage=True, noise_decay_stages=2)
    Gt.train()
    out = Gt(torch.zeros(1, Gt.latent_size), torch.tensor([40]), torch.tensor([1.0]))
    out[0, 2048:].pow(2).sum().backward()
    g_end = Gt._split(Gt.head.bias.grad.unsqueeze(0))["end"]
    assert torch.isfinite(Gt.head.bias.grad).all() and float(g_end) > 0    # a later end costs more here
    z, p, v = torch.zeros(2, G.latent_size), torch.tensor([40, 50]), torch.tensor([0.5, 1.0])
    path = tmp_path / "g.onnx"
    dyn = {n: {0: "batch"} for n in ("z", "pitch", "velocity", "audio")}
    torch.onnx.export(G, (z, p, v), str(path), input_names=["z", "pitch", "velocity"], output_names=["audio"],
                      opset_version=17, dynamic_axes=dyn, dynamo=False)
    with torch.no_grad():
        want = G(z, p, v).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"z": z.numpy(), "pitch": p.numpy(), "velocity": v.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-4


def test_stft_magnitude_has_a_finite_gradient_in_silence():
    """A note ending in digital silence has STFT bins that are exactly zero; their magnitude's
    gradient is 0 (not NaN), and elsewhere it is |z|'s."""
    from trainer.nn.layers import stft_magnitude

    x = torch.randn(2, 4096, dtype=torch.float64)
    x[:, 1500:] = 0.0
    x.requires_grad_(True)
    w = torch.hann_window(512, dtype=torch.float64)
    m = stft_magnitude(x, 512, 128, w)
    assert torch.allclose(m, torch.stft(x.detach(), 512, 128, window=w, return_complex=True).abs())
    assert (m[..., -4:] == 0).all()
    m.sum().backward()
    assert torch.isfinite(x.grad).all()
    x2 = torch.randn(1, 1024, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: stft_magnitude(a, 256, 64, torch.hann_window(256, dtype=torch.float64)),
                                    (x2,))


def test_noise_release_is_tied_to_the_partials_release(tmp_path):
    """noise_release_tied (the default): after the note-off the noise falls at the mean of the
    partials' release rates (one damper), and there is no free noise release to learn. Before the
    note-off nothing changes. Old run configs (no key) keep the free rate and their head size, and
    ONNX parity holds."""
    ort = pytest.importorskip("onnxruntime")
    kw = dict(kind="pitched", hold_seconds=0.25, noise_decay_stages=2)
    tied = _ddsp_with_bias(noise_release_tied=True, **kw)
    free = _ddsp_with_bias(noise_release_tied=False, **kw)
    assert "n_release" not in tied.sizes and "n_release" in free.sizes
    with torch.no_grad():
        for G in (tied, free):
            b = G._split(G.head.bias.unsqueeze(0))
            b["h_release"][:] = torch.linspace(-2.0, 2.0, G.Kc)        # partial release 55-285 dB/s
        fb = free._split(free.head.bias.unsqueeze(0))
        fb["n_release"][:] = -20.0                                      # the free rate at its 20 dB/s floor
        z, p, v = torch.zeros(1, tied.latent_size), torch.tensor([40]), torch.tensor([1.0])
        ct, cf = tied.controls(z, p, v), free.controls(z, p, v)
    t = tied.t.numpy()
    i0, i1 = int(np.searchsorted(t, 0.25)), int(np.searchsorted(t, 0.4))
    want = float((20.0 + 300.0 * torch.sigmoid(torch.linspace(-2.0, 2.0, tied.Kc))).mean())   # dB/s
    drop = lambda c: 20 * np.log10(c["amps_n"][0, i0, 0].item() / c["amps_n"][0, i1, 0].item()) / (t[i1] - t[i0])  # noqa: E731
    # the same slow decay underlies both; the release differs by the tied rate minus the free 20 dB/s
    assert abs((drop(ct) - drop(cf)) - (want - 20.0)) < 0.02 * want, (drop(ct), drop(cf), want)
    assert torch.allclose(ct["amps_n"][:, :i0 - 1], cf["amps_n"][:, :i0 - 1])
    assert torch.allclose(ct["amps_h"], cf["amps_h"])
    assert C.DEFAULTS["model"]["ddsp"]["noise_release_tied"] is True
    old = tiny_cfg("ddsp")
    del old["model"]["ddsp"]["noise_release_tied"]
    assert not build_generator(old).noise_release_tied
    assert build_generator(tiny_cfg("ddsp")).noise_release_tied
    path = str(tmp_path / "g.onnx")
    zz, pp, vv = torch.zeros(2, tied.latent_size), torch.tensor([40, 50]), torch.tensor([0.5, 1.0])
    dyn = {n: {0: "batch"} for n in ("z", "pitch", "velocity", "audio")}
    torch.onnx.export(tied, (zz, pp, vv), path, input_names=["z", "pitch", "velocity"], output_names=["audio"],
                      opset_version=17, dynamic_axes=dyn, dynamo=False)
    with torch.no_grad():
        ref = tied(zz, pp, vv).numpy()
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"z": zz.numpy(), "pitch": pp.numpy(), "velocity": vv.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("from_bin", [False, True])
def test_spectral_if_from_bin_makes_zero_if_a_bin_centred_sinusoid(from_bin, tmp_path):
    """With `if_from_bin`, IF is the deviation from each bin's centre: a spectrogram with one loud bin
    and zero IF is a sinusoid at that bin's frequency (GANSynth's raw IF gives a DC-like smear), and
    the graph still exports with parity."""
    ort = pytest.importorskip("onnxruntime")
    cfg = C.resolve([TINY, {"arch": "spectral", "model": {"spectral": {"n_mels": None, "if_from_bin": from_bin}}}],
                    DATA)
    G = build_generator(cfg).eval()
    k = 37
    logmag = torch.full((1, G.T, G.F), -12.0)
    logmag[:, :, k] = 0.0

    def spectrogram(z, pitch, velocity):
        return logmag.expand(z.shape[0], -1, -1), torch.zeros(z.shape[0], G.T, G.F)

    G.spectrogram = spectrogram
    y = G(torch.zeros(1, G.latent_size), torch.tensor([60]), torch.tensor([1.0]))[0].detach().numpy()
    n_fft = 2 * (G.F - 1)
    mid = y[len(y) // 4: 3 * len(y) // 4]
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    want = k * len(mid) / n_fft            # the bin's centre, in the FFT bins of `mid`
    near = (spec[int(want) - 3:int(want) + 5] ** 2).sum() / (spec ** 2).sum()
    assert (near > 0.95) if from_bin else (near < 0.8)
    del G.spectrogram
    path = tmp_path / "g.onnx"
    args = (torch.randn(2, G.latent_size), torch.tensor([45, 70]), torch.tensor([0.5, 0.9]))
    torch.onnx.export(G, args, str(path), input_names=["z", "pitch", "velocity"], output_names=["audio"],
                      opset_version=17, dynamo=False)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"z": args[0].numpy(), "pitch": args[1].numpy(), "velocity": args[2].numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - G(*args).numpy()).max() <= 1e-4


def _assert_onnx_parity(ort, G, tmp_path, keys=(45, 70)):
    """G exported with a dynamic batch runs in ONNX Runtime within 1e-4 of torch, on two notes."""
    path = tmp_path / "g.onnx"
    args = (torch.randn(2, G.latent_size), torch.tensor(keys), torch.tensor([0.5, 0.9]))
    torch.onnx.export(G, args, str(path), input_names=["z", "pitch", "velocity"], output_names=["audio"],
                      opset_version=17, dynamic_axes={n: {0: "batch"} for n in ("z", "pitch", "velocity", "audio")},
                      dynamo=False)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"z": args[0].numpy(), "pitch": args[1].numpy(), "velocity": args[2].numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - G(*args).numpy()).max() <= 1e-4


def test_spectral_harmonic_prior_puts_zero_if_on_the_keys_harmonic(tmp_path):
    """With `harmonic_prior`, IF is the deviation from the key's nearest harmonic: a loud band around
    the 3rd harmonic with zero IF sounds at exactly 3 f0 (between bin centres), the comb reaches every
    conv block, an untrained generator already sounds on the key's harmonics and not under f0, the
    graph exports with parity, and a drum kit is refused."""
    ort = pytest.importorskip("onnxruntime")
    cfg = C.resolve([TINY, {"arch": "spectral", "model": {"spectral": {"n_mels": 32, "harmonic_prior": True}}}], DATA)
    G = build_generator(cfg).eval()
    convs = list(G.blocks) + [G.out]
    assert all(convs[i].in_channels == convs[i - 1].out_channels + 1 for i in range(1, len(convs)))
    key = 58                                         # A#3, 233 Hz: its 3rd harmonic is 699 Hz
    f0 = 440 * 2 ** ((key - 69) / 12)
    hz_per_bin = DATA["sample_rate"] / (2 * (G.F - 1))
    k = int(round(3 * f0 / hz_per_bin))
    assert abs(3 * f0 / hz_per_bin - k) > 0.2       # the harmonic is well off the bin's centre
    logmag = torch.full((1, G.T, G.F), -12.0)
    logmag[:, :, k - 1:k + 2] = 0.0
    G.spectrogram = lambda z, pitch, velocity: (logmag, torch.zeros(1, G.T, G.F))
    y = G(torch.zeros(1, G.latent_size), torch.tensor([key]), torch.tensor([1.0]))[0].detach().numpy()
    mid = y[len(y) // 4: 3 * len(y) // 4]
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid)), 1 << 17))
    assert abs(spec.argmax() * DATA["sample_rate"] / (1 << 17) - 3 * f0) < 2.0
    del G.spectrogram
    torch.manual_seed(0)                             # untrained: the prior alone puts energy on harmonics
    with torch.no_grad():
        y = G(torch.randn(1, G.latent_size), torch.tensor([key]), torch.tensor([0.8]))[0].numpy()
    p = np.abs(np.fft.rfft(y[len(y) // 4: 3 * len(y) // 4] * np.hanning(len(y) // 2))) ** 2
    hz = np.fft.rfftfreq(len(y) // 2, 1 / DATA["sample_rate"])
    near = np.abs(hz / f0 - np.round(hz / f0)) < 0.25
    assert p[hz < f0 / 2].sum() < 1e-3 * p.sum() and p[near & (hz > f0 / 2)].sum() > 0.8 * p.sum()
    _assert_onnx_parity(ort, G, tmp_path, keys=(45, 70))
    with pytest.raises(UserError, match="harmonic_prior"):
        build_generator(C.resolve([TINY, {"arch": "spectral", "model": {"spectral": {"harmonic_prior": True}}}],
                                  {**DATA, "kind": "drums"}))


def test_spectral_noise_phase_sounds_off_harmonic_bins_as_noise(tmp_path):
    """With `noise_phase`, a loud band under the key's f0 sounds as noise (a flat spectrum over the
    band) where without it sounds as steady tones at bin centres; bins on a harmonic keep its exact
    advance; the graph exports with parity; and the option needs the harmonic prior."""
    ort = pytest.importorskip("onnxruntime")
    base = {"n_mels": None, "harmonic_prior": True}
    key, sr = 96, DATA["sample_rate"]                # C7: f0 2093 Hz, many bins under it
    f0 = 440 * 2 ** ((key - 69) / 12)

    def share_at_bin_centres(noise):
        cfg = C.resolve([TINY, {"arch": "spectral", "model": {"spectral": {**base, "noise_phase": noise}}}], DATA)
        G = build_generator(cfg).eval()
        hz_per_bin = sr / (2 * (G.F - 1))
        lo, hi = int(0.1 * f0 / hz_per_bin), int(0.3 * f0 / hz_per_bin)
        logmag = torch.full((1, G.T, G.F), -12.0)
        logmag[:, :, lo:hi] = 0.0
        G.spectrogram = lambda z, pitch, velocity: (logmag, torch.zeros(1, G.T, G.F))
        with torch.no_grad():
            y = G(torch.zeros(1, G.latent_size), torch.tensor([key]), torch.tensor([1.0]))[0].numpy()
        mid = y[len(y) // 4: 3 * len(y) // 4]
        p = np.abs(np.fft.rfft(mid * np.hanning(len(mid)))) ** 2
        hz = np.fft.rfftfreq(len(mid), 1 / sr)
        inband = (hz > (lo + 1) * hz_per_bin) & (hz < (hi - 2) * hz_per_bin)
        off = np.abs(hz / hz_per_bin - np.round(hz / hz_per_bin)) * hz_per_bin   # Hz from a bin's centre
        return p[inband & (off < 0.2 * hz_per_bin)].sum() / p[inband].sum(), G

    tonal, _ = share_at_bin_centres(False)
    noisy, G = share_at_bin_centres(True)
    assert tonal > 0.9 and noisy < 0.6, (tonal, noisy)   # share of the band's energy at bin centres
    del G.spectrogram
    adv = G.harmonic_advance(torch.tensor([key]))[0]                  # [T, F]
    k = int(round(f0 / (sr / (2 * (G.F - 1)))))
    assert torch.allclose(adv[:, k], adv[0, k].expand(G.T))          # a harmonic's bin: one steady advance
    assert adv[:, 3].std() > 0.3                                      # a bin under f0: random advances
    _assert_onnx_parity(ort, G, tmp_path, keys=(45, 90))
    with pytest.raises(UserError, match="noise_phase"):
        build_generator(C.resolve([TINY, {"arch": "spectral", "model": {"spectral": {"noise_phase": True}}}], DATA))
