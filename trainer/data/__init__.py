"""One-shot datasets: the folder format, the loader and `python -m trainer dataset`.

`OneShotDataset(root, split=None)` reads a folder written by `python -m trainer dataset`
(manifest.json + notes.f32, or notes.i16 for a 16-bit set); see `trainer.data.format` for the
format and `trainer.data.family` for multi-instrument SoundFont sets. No torch import here.
"""

from trainer.data.format import FORMAT, GM_DRUMS, VERSION, content_hash, split_of
from trainer.data.loader import OneShotDataset, load_manifest

__all__ = ["FORMAT", "GM_DRUMS", "VERSION", "OneShotDataset", "content_hash", "load_manifest", "split_of"]
