"""Helpers shared by the tests and the benchmark scripts; the synth never imports them at run time.

- `synth.testing.jack`: a private `jackd -d dummy` server, a probe client that plays MIDI at exact
  frames and records audio, the synth as a subprocess, the flood and steal measurements.
- `synth.testing.tinymodel`: a tiny pure-ONNX generator preset that honours the preset contract
  (needs the `onnx` package, in the train extra).
- `synth.testing.drive`: drive an `Engine` through timed events, block by block.
"""
