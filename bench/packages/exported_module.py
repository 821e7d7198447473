"""A DCASE 2025 Task 1 inference module exported by ascbench (``bench export``); copied verbatim into packages.

The model is an ascbench submission (``ckpts/<this module's name>/submission.json`` + ``models.pt``), rebuilt by
``bench.submission.load_submission``, so ascbench must be installed. Audio is read as ascbench's packed store holds
it — soundfile, mono, resampled to 32 kHz, cut or padded to 1 s, rounded to int16 — and in batches of 64 clips, so
this module reproduces the logits of ``bench score --submission`` exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from bench.data.audio import read_clip
from bench.data.store import to_int16
from bench.submission import ModelSubmission, load_submission

CHECKPOINT = Path(__file__).resolve().parent / "ckpts" / Path(__file__).stem
BATCH_SIZE = 64  # ascbench's scoring batch: the same clips share a batch, so the same arithmetic runs
SOURCE_RATE = 44_100  # TAU's rate; read_clip only uses it to describe conversions, samples do not depend on it


def load_model(model_file_path: Optional[str] = None) -> ModelSubmission:
    """The packaged submission, or the one in ``model_file_path`` (its folder or a file inside it)."""
    path = Path(model_file_path) if model_file_path else CHECKPOINT
    model = load_submission(path if path.is_dir() else path.parent, allow_foreign_code=True)  # a package runs its code
    # the official evaluate_submission.py saves ``model.model.state_dict()``: every distinct device model
    model.model = nn.ModuleDict({device: dep.net for device, dep in model.unique().items()})
    return model


def _waveforms(file_paths: Sequence[str]) -> torch.Tensor:
    waves = np.stack([read_clip(Path(p), SOURCE_RATE)[0] for p in file_paths])
    return torch.from_numpy(to_int16(waves).astype(np.float32) * (1.0 / 32768.0))


def load_inputs(file_paths: List[str], device_ids: List[str], model: ModelSubmission) -> List[torch.Tensor]:
    """One ``[1, ...]`` feature tensor per file (e.g. ``[1, 1, n_mels, frames]``): the input of its device model."""
    if not file_paths:
        return []
    inputs = model.load_inputs(_waveforms(file_paths), list(device_ids))
    return [x.unsqueeze(0) for x in inputs] if isinstance(inputs, list) else list(torch.split(inputs, 1))


def get_model_for_device(model: ModelSubmission, device_id: str) -> nn.Module:
    """The device's own deployed model, or the general one for devices without one (``unknown`` included)."""
    return model.get_model_for_device(device_id)


def get_counted_model_for_device(model: ModelSubmission, device_id: str) -> nn.Module:
    """The float twin the official check counts for an INT8 device model (the organisers: count before
    conversion); ascbench calls it when present, so the package scores the complexity of its submission."""
    return model.counted_model_for_device(device_id)


def predict(file_paths: List[str], device_ids: List[str], model_file_path: Optional[str] = None,
            use_cuda: bool = False, batch_size: int = BATCH_SIZE, **kwargs) -> Tuple[List[torch.Tensor], List[str]]:
    """Logits ``[n_classes]`` per file and the class order; runs on the CPU (``use_cuda`` is accepted, unused)."""
    model = load_model(model_file_path)
    logits: List[torch.Tensor] = []
    for i in range(0, len(file_paths), batch_size):
        logits.extend(model.predict(_waveforms(file_paths[i:i + batch_size]), list(device_ids[i:i + batch_size])))
    return logits, list(model.class_order)
