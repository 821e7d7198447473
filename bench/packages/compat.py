"""``torchaudio.load`` for packages written against older torchaudio releases.

torchaudio 2.9+ decodes only through TorchCodec, which the harness does not install, so ``torchaudio.load`` raises.
Official packages call it to read their WAVs; while package code runs, :func:`soundfile_torchaudio` puts a
soundfile-backed function with the documented signature and return value (``[channels, frames]`` tensor, sample
rate) in its place.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio

# torchaudio's un-normalized integer dtypes per WAV subtype (24-bit PCM came back as int32)
_RAW_DTYPES = {"PCM_16": "int16", "PCM_24": "int32", "PCM_32": "int32"}


def load(uri, frame_offset: int = 0, num_frames: int = -1, normalize: bool = True, channels_first: bool = True,
         format: str | None = None, buffer_size: int = 4096, backend: str | None = None) -> tuple[torch.Tensor, int]:
    """Decode with libsndfile; ``format``, ``buffer_size`` and ``backend`` are accepted and ignored."""
    with sf.SoundFile(uri) as f:
        dtype = "float32" if normalize else _RAW_DTYPES.get(f.subtype, "float32")
        f.seek(frame_offset)
        data = f.read(frames=num_frames, dtype=dtype, always_2d=True)
        rate = f.samplerate
    return torch.from_numpy(np.ascontiguousarray(data.T if channels_first else data)), rate


@contextlib.contextmanager
def soundfile_torchaudio() -> Iterator[None]:
    """Replace ``torchaudio.load`` while the block runs (packages that did ``from torchaudio import load`` after
    entering the block get the replacement too)."""
    saved = torchaudio.load
    torchaudio.load = load
    try:
        yield
    finally:
        torchaudio.load = saved
