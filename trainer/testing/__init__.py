"""Helpers shared by the trainer's tests and benchmarks: `trainer.testing.fitdata` (tiny synthetic
one-shot data sets) and `trainer.testing.tinytorch` (a tiny torch generator with the export interface)."""
