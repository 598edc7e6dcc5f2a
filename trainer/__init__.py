"""neural-synth trainer: one-shot datasets, GAN training, ONNX export and evaluation.

Importing this package is cheap; torch is imported only by the subcommands that need it.
"""
