"""ONNX Runtime session for one preset's generator, tuned for low latency beside an audio thread.

Providers are tried in order TensorRT → CUDA → CPU (whichever this onnxruntime build offers); the
one actually used is logged to the "synth" logger. ONNX Runtime's worker threads spin by default,
which would steal the audio thread's core, so spinning is off, intra-op threads are few and the
graph runs sequentially. The graph is checked against the preset contract on load
(`docs/architecture.md`), and a corrupt or mismatching file raises `PresetError` naming the file.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from synth.errors import PresetError
from synth.preset import Preset

log = logging.getLogger("synth")

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# Bound the model's output memory per run: a full keyboard of long notes is chunked.
CHUNK_BYTES = 64 * 1024 * 1024

_EXPECTED_INPUTS = {"z": ("tensor(float)", 2), "pitch": ("tensor(int64)", 1), "velocity": ("tensor(float)", 1)}


# TensorRT builds one engine per input-shape profile; a dynamic batch without a profile would
# rebuild (seconds) for every new batch size, so one profile covers 1..TRT_MAX_BATCH.
TRT_MAX_BATCH = 256


def _provider_options(name: str, latent_size: int) -> dict:
    if name == "CUDAExecutionProvider":
        # HEURISTIC avoids the exhaustive cuDNN search on every new batch shape (a miss is one note,
        # a prefill a whole keyboard); the default stream keeps copies ordered without extra syncs.
        return {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1",
                "arena_extend_strategy": "kSameAsRequested"}
    if name == "TensorrtExecutionProvider":
        cache = os.path.join(os.path.expanduser("~"), ".cache", "neural-synth", "trt")
        def shapes(b):
            return f"z:{b}x{latent_size},pitch:{b},velocity:{b}"

        return {"trt_fp16_enable": "1", "trt_engine_cache_enable": "1", "trt_engine_cache_path": cache,
                "trt_profile_min_shapes": shapes(1), "trt_profile_opt_shapes": shapes(16),
                "trt_profile_max_shapes": shapes(TRT_MAX_BATCH)}
    return {}


def choose_providers(providers: str | list[str] = "auto") -> list[str]:
    """The provider list to try: "auto" → TensorRT, CUDA, CPU as available; "cpu"/"cuda"/"tensorrt" or a list."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if isinstance(providers, str):
        key = providers.lower()
        if key == "auto":
            wanted = list(PROVIDER_ORDER)
        elif key in ("cpu", "cuda", "tensorrt"):
            wanted = [{"cpu": PROVIDER_ORDER[2], "cuda": PROVIDER_ORDER[1], "tensorrt": PROVIDER_ORDER[0]}[key]]
        else:
            wanted = [providers]
    else:
        wanted = list(providers)
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _dim(d):
    return d if isinstance(d, int) else None


class GeneratorSession:
    """One preset's generator: `generate(z, pitch, velocity) -> audio float32[B, N]` at preset.sample_rate.

    `providers`: "auto" (TensorRT → CUDA → CPU), "cpu", "cuda", "tensorrt" or an explicit list.
    `threads`: intra-op threads (1 keeps a core free for the audio thread; offline may use more).
    `lazy`: load the graph on first use, not here (`provider` is the expected one until then).
    """

    def __init__(self, preset: Preset, providers: str | list[str] = "auto", threads: int = 1,
                 warmup: bool = True, lazy: bool = False):
        self.preset = preset
        self.path = preset.generator_path
        if not self.path.is_file():
            raise PresetError(f"{self.path}: generator file is missing; re-export the preset with "
                              "`python -m trainer export`")
        self._providers, self._threads = providers, max(1, int(threads))
        self._session = None
        self._load_lock = threading.Lock()
        self.output_name = "audio"
        # Until the graph loads (`lazy`), the provider ONNX Runtime is expected to give it.
        self.provider = choose_providers(providers)[0]
        self.note_samples = int(preset.note_samples)
        self.seconds_per_note = None
        self._set_chunk()
        if not lazy:
            self._load()
        if warmup:
            self.warmup()

    @property
    def session(self):
        """The ONNX Runtime session, loaded on first use when `lazy` (a start whose notes are all in
        the disk cache never pays the 30-170 ms a graph takes to load)."""
        return self._session if self._session is not None else self._load()

    def _set_chunk(self) -> None:
        self.chunk = max(1, CHUNK_BYTES // (4 * self.note_samples))
        if self.provider == "TensorrtExecutionProvider":
            self.chunk = min(self.chunk, TRT_MAX_BATCH)

    def _load(self):
        """Create the session on the first provider that loads, and check the graph's contract."""
        import onnxruntime as ort

        with self._load_lock:
            if self._session is not None:
                return self._session
            where = str(self.path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = self._threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
            so.log_severity_level = 3
            wanted = choose_providers(self._providers)
            session, errors = None, []
            # Try the accelerated providers one at a time: a TensorRT build without its libraries
            # fails at session creation, and that must fall back rather than stop the synth.
            for i in range(len(wanted)):
                plist = wanted[i:]
                try:
                    session = ort.InferenceSession(where, sess_options=so, providers=plist,
                                                   provider_options=[_provider_options(p, self.preset.latent_size)
                                                                     for p in plist])
                    break
                except Exception as e:  # noqa: BLE001 - ORT raises many types (InvalidProtobuf, Fail, ...)
                    errors.append(f"{plist[0]}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                    if plist[0] == "CPUExecutionProvider":
                        break
            if session is None:
                raise PresetError(f"{where}: cannot load the ONNX generator ({errors[-1][:200]}); the file is "
                                  "corrupt or not ONNX: re-export the preset with `python -m trainer export`")
            self._check_contract(session)
            self.provider = session.get_providers()[0]
            self._set_chunk()
            log.info("preset %s: ONNX Runtime %s on %s (intra-op threads %d, no spinning)", self.preset.name,
                     ort.__version__, self.provider, so.intra_op_num_threads)
            self._session = session
            return session

    def _check_contract(self, session) -> None:
        where = str(self.path)
        p = self.preset
        ins = {i.name: i for i in session.get_inputs()}
        if set(ins) != set(_EXPECTED_INPUTS):
            raise PresetError(f"{where}: generator inputs are {sorted(ins)}, the preset contract needs exactly "
                              f"['pitch', 'velocity', 'z']; re-export the preset with `python -m trainer export`")
        for name, (dtype, rank) in _EXPECTED_INPUTS.items():
            i = ins[name]
            if i.type != dtype or len(i.shape) != rank:
                raise PresetError(f"{where}: input {name!r} is {i.type}{list(i.shape)}, the contract needs "
                                  f"{dtype} of rank {rank}; re-export the preset")
        z_dim = _dim(ins["z"].shape[1])
        if z_dim is not None and z_dim != p.latent_size:
            raise PresetError(f"{where}: input 'z' has {z_dim} latent dimensions but preset.json says "
                              f"latent.size = {p.latent_size}; the manifest and the graph disagree, re-export")
        outs = session.get_outputs()
        if len(outs) != 1 or outs[0].name != "audio" or outs[0].type != "tensor(float)" or len(outs[0].shape) != 2:
            desc = ", ".join(f"{o.name}: {o.type}{list(o.shape)}" for o in outs)
            raise PresetError(f"{where}: generator outputs are [{desc}], the contract needs one float32[B, N] "
                              "'audio'; re-export the preset")
        n_dim = _dim(outs[0].shape[1])
        if n_dim is not None and n_dim != p.note_samples:
            raise PresetError(f"{where}: output has {n_dim} samples per note but preset.json says note_samples = "
                              f"{p.note_samples}; re-export the preset")
        self.output_name = outs[0].name
        meta = session.get_modelmeta().custom_metadata_map or {}
        for key, want in (("sample_rate", p.sample_rate), ("note_samples", p.note_samples),
                          ("latent_size", p.latent_size)):
            if key in meta:
                try:
                    got = int(meta[key])
                except ValueError:
                    raise PresetError(f"{where}: metadata {key}={meta[key]!r} is not an integer; re-export") from None
                if got != want:
                    raise PresetError(f"{where}: metadata {key}={got} disagrees with preset.json ({want}); the "
                                      "manifest belongs to another export, re-export the preset")

    def warmup(self) -> float:
        """Run one note and one small batch so the first real request does not pay for allocation; seconds/note."""
        p = self.preset
        key = p.playable_keys()[len(p.playable_keys()) // 2]
        self.generate(np.zeros((1, p.latent_size), np.float32), np.array([key], np.int64), np.ones(1, np.float32))
        b = min(8, self.chunk)
        t0 = time.perf_counter()
        self.generate(np.zeros((b, p.latent_size), np.float32), np.full(b, key, np.int64), np.ones(b, np.float32))
        self.seconds_per_note = (time.perf_counter() - t0) / b
        return self.seconds_per_note

    def generate(self, z: np.ndarray, pitch: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        """Generate notes. z float32[B, Z], pitch int64[B] (MIDI), velocity float32[B] in 0..1
        → audio float32[B, N] at preset.sample_rate. Batches larger than `self.chunk` run in chunks."""
        z = np.ascontiguousarray(z, np.float32)
        pitch = np.ascontiguousarray(pitch, np.int64)
        velocity = np.ascontiguousarray(velocity, np.float32)
        b = z.shape[0]
        if z.ndim != 2 or z.shape[1] != self.preset.latent_size or pitch.shape != (b,) or velocity.shape != (b,):
            raise ValueError(f"generate: need z[B, {self.preset.latent_size}], pitch[B], velocity[B]; got "
                             f"{z.shape}, {pitch.shape}, {velocity.shape}")
        if b <= self.chunk:
            # One run: hand back ONNX Runtime's own array. Copying it into `out` would hold the GIL
            # for milliseconds (numpy copies do not release it) while the audio thread may wait.
            res = self.session.run([self.output_name], {"z": z, "pitch": pitch, "velocity": velocity})[0]
            if res.shape != (b, self.note_samples) or res.dtype != np.float32:
                raise PresetError(f"{self.path}: generator returned shape {list(res.shape)}, expected "
                                  f"[{b}, {self.note_samples}]; re-export the preset")
            return res
        out = np.empty((b, self.note_samples), np.float32)
        for s in range(0, b, self.chunk):
            e = min(b, s + self.chunk)
            res = self.session.run([self.output_name], {"z": z[s:e], "pitch": pitch[s:e], "velocity": velocity[s:e]})[0]
            if res.shape != (e - s, self.note_samples):
                raise PresetError(f"{self.path}: generator returned shape {list(res.shape)}, expected "
                                  f"[{e - s}, {self.note_samples}]; re-export the preset")
            out[s:e] = res
        return out
