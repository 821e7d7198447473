"""Impulse-response folders for DIR/ADIR augmentation (MicIRP, or the synthetic dataset's ``micirp/``).

Read as CP-JKU's ``load_dirs`` does: every ``.wav`` below the folder in sorted path order (so an IR index means the same
response on every machine), channels averaged to mono, resampled to the model rate, no trimming or renormalisation.
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
import torch
import torchaudio


class ImpulseResponseError(RuntimeError):
    pass


def load_irs(folder: str | Path, sample_rate: int = 32_000) -> list[torch.Tensor]:
    """Every WAV under ``folder`` as a mono float32 tensor ``[L]`` at ``sample_rate``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImpulseResponseError(f"{folder}: impulse-response folder does not exist")
    paths = sorted((p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and p.is_file()),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not paths:
        raise ImpulseResponseError(f"{folder}: no WAV impulse responses found (expected e.g. the 66 MicIRP files)")
    irs = []
    for path in paths:
        try:
            data, sr = sf.read(path, dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises LibsndfileError, RuntimeError or TypeError depending on the damage
            raise ImpulseResponseError(f"{folder}: cannot read impulse response {path.name}: {err}") from err
        if data.shape[0] == 0:
            raise ImpulseResponseError(f"{folder}: impulse response {path.name} is empty")
        ir = torch.from_numpy(data.mean(axis=1))
        if sr != sample_rate:
            ir = torchaudio.functional.resample(ir, sr, sample_rate)
        irs.append(ir.contiguous())
    return irs
