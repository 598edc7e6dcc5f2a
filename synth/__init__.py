"""neural-synth: a real-time synthesizer whose notes come from GAN generators exported to ONNX.

Importing this package is cheap and never imports torch, sounddevice or rtmidi.
"""

__version__ = "0.1.0"
