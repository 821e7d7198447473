"""Mel front-ends. Each architecture names the one its published recipe uses (see architectures.md §2.1, §7, §8)."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class TorchaudioLogMel(nn.Module):
    """The DCASE 2025 baseline front-end: torchaudio MelSpectrogram -> (train only) frequency masking on the power
    mel -> ``log(x + 1e-5)``. 1 s at 32 kHz with hop 500 gives 256 x 65."""

    def __init__(self, sample_rate: int = 32_000, n_fft: int = 4096, win_length: int = 3072, hop_length: int = 500,
                 n_mels: int = 256, freqm: int = 0):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, n_mels=n_mels)
        self.freq_mask = torchaudio.transforms.FrequencyMasking(freqm, iid_masks=True) if freqm > 0 else None

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.mel(wave).unsqueeze(1)  # [B, 1, F, T]
        if self.training and self.freq_mask is not None:
            x = self.freq_mask(x)
        return torch.log(x + 1e-5)
