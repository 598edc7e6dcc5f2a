"""Reusable layers, export-safe DSP blocks and losses for the trainer's models."""
