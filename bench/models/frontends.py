"""Mel front-ends. Each architecture names the one its published recipe uses (see CPJKU/dcase2025_task1_baseline,
train_base.py; fschmid56/cpjku_dcase23, run_passt_training.py and run_cp-resnet_training.py)."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class TorchaudioLogMel(nn.Module):
    """The DCASE 2025 baseline front-end: torchaudio MelSpectrogram -> (train only) frequency masking on the power
    mel -> ``log(x + 1e-5)``. 1 s at 32 kHz with hop 500 gives 256 x 65.

    The power spectrum is computed as ``re**2 + im**2`` and the mel as one matrix product with the torchaudio
    module's own window and filterbank: a quarter faster than ``MelSpectrogram.forward`` (which takes ``|X|`` and
    squares it again), equal to it up to float rounding (tested)."""

    def __init__(self, sample_rate: int = 32_000, n_fft: int = 4096, win_length: int = 3072, hop_length: int = 500,
                 n_mels: int = 256, freqm: int = 0):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, n_mels=n_mels)
        self.freq_mask = torchaudio.transforms.FrequencyMasking(freqm, iid_masks=True) if freqm > 0 else None

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        stft = self.mel.spectrogram
        spec = torch.stft(wave, stft.n_fft, stft.hop_length, stft.win_length, stft.window, center=stft.center,
                          pad_mode=stft.pad_mode, normalized=False, onesided=stft.onesided, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2
        x = (power.transpose(-1, -2) @ self.mel.mel_scale.fb).transpose(-1, -2).contiguous().unsqueeze(1)  # [B,1,F,T]
        if self.training and self.freq_mask is not None:
            x = self.freq_mask(x)
        return torch.log(x + 1e-5)


def preemphasis(wave: torch.Tensor) -> torch.Tensor:
    """The CPJKU FIR [-0.97, 1] along time (one sample shorter), written as a slice: bit-identical to the recipe's
    ``conv1d`` (tested) and 25x faster on CPU, where the conv took as long as the STFT."""
    return wave[..., 1:] - 0.97 * wave[..., :-1]


class CpMel(nn.Module):
    """The CPJKU ``AugmentMelSTFT`` recipe (kkoutini/PaSST, models/preprocess.py; fschmid56/cpjku_dcase23,
    models/mel.py), used by CP-Mobile, CP-ResNet and PaSST.

    Pre-emphasis FIR [-0.97, 1] (drops one sample, hence 64 rather than 65 frames at hop 500) -> STFT with a
    symmetric Hann window, ``center=True`` -> power -> Kaldi mel banks -> ``log(x + 1e-5)`` -> (train only)
    frequency/time masking -> ``(x + 4.5) / 5``. Masking after the log fills masked bins with 0.9 after the
    normalisation. In training, ``fmin``/``fmax`` jitter by up to ``f*_aug_range`` Hz (a range of 1 = no jitter);
    evaluation uses ``fmax = sr/2 - fmax_aug_range // 2`` when ``fmax`` is None.
    """

    def __init__(self, sample_rate: int = 32_000, n_fft: int = 4096, win_length: int = 3072, hop_length: int = 500,
                 n_mels: int = 256, fmin: float = 0.0, fmax: float | None = None, freqm: int = 0, timem: int = 0,
                 fmin_aug_range: int = 1, fmax_aug_range: int = 1):
        super().__init__()
        if fmin_aug_range < 1 or fmax_aug_range < 1:
            raise ValueError("fmin_aug_range and fmax_aug_range must be >= 1 (1 means no jitter)")
        self.sample_rate, self.n_fft, self.win_length, self.hop_length, self.n_mels = (
            sample_rate, n_fft, win_length, hop_length, n_mels)
        self.fmin = float(fmin)
        self.fmax = float(fmax) if fmax is not None else float(sample_rate // 2 - fmax_aug_range // 2)
        self.fmin_aug_range, self.fmax_aug_range = fmin_aug_range, fmax_aug_range
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        self.register_buffer("mel_basis", self._mel_basis(self.fmin, self.fmax), persistent=False)
        self.freq_mask = torchaudio.transforms.FrequencyMasking(freqm, iid_masks=True) if freqm > 0 else None
        self.time_mask = torchaudio.transforms.TimeMasking(timem, iid_masks=True) if timem > 0 else None

    def _mel_basis(self, fmin: float, fmax: float) -> torch.Tensor:
        """Kaldi banks cover the first ``n_fft // 2`` bins; a zero column for the Nyquist bin matches the STFT."""
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
            self.n_mels, self.n_fft, float(self.sample_rate), fmin, fmax, 100.0, -500.0, 1.0)
        return nn.functional.pad(banks, (0, 1))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            x = preemphasis(wave.float())
            spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                              window=self.window, center=True, normalized=False, return_complex=True)
            power = spec.real ** 2 + spec.imag ** 2
            basis = self.mel_basis
            if self.training and (self.fmin_aug_range > 1 or self.fmax_aug_range > 1):
                fmin = self.fmin + torch.randint(self.fmin_aug_range, (1,)).item()
                fmax = self.fmax + self.fmax_aug_range // 2 - torch.randint(self.fmax_aug_range, (1,)).item()
                basis = self._mel_basis(fmin, fmax).to(power.device)
            x = torch.log(basis @ power + 1e-5).unsqueeze(1)  # [B, 1, F, T]
        if self.training:
            if self.freq_mask is not None:
                x = self.freq_mask(x)
            if self.time_mask is not None:
                x = self.time_mask(x)
        return (x + 4.5) / 5.0
