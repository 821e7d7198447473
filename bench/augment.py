"""Composable augmentations on waveforms ``[B, T]`` or log-mels ``[B, 1, F, T]``, active in training mode only.

Randomness comes from the global torch RNG, which the harness seeds per run (and per DDP rank) with
``lightning.seed_everything``: the same seed gives the same augmented batches. Draws are made on the CPU generator and
moved to the batch's device, so a seed gives the same choices on CPU and GPU (torchaudio's masking, reused below, is
the exception: it draws on the batch's device).

Waveform augmentations that need the recording device set ``needs_device = True`` and are called
``aug(wave, device_idx)`` with ``device_idx`` a LongTensor of indices into the dataset's device list.
See docs/distillation.md for the recipes each module reproduces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torchaudio
from torch import nn

SAMPLE_RATE = 32_000
ADIR_THRESHOLD = 323.0  # DS-FlexiNet's published threshold, in the units of ``clip_energy``


class TimeRoll(nn.Module):
    """Circular shift of each waveform by a uniform random offset in ``[-max_shift, max_shift]`` samples."""

    def __init__(self, max_shift: int):
        super().__init__()
        self.max_shift = int(max_shift)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if not self.training or self.max_shift <= 0:
            return wave
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (wave.shape[0],)).to(wave.device)
        idx = (torch.arange(wave.shape[-1], device=wave.device)[None, :] - shifts[:, None]) % wave.shape[-1]
        return torch.gather(wave, -1, idx)


class FreqMixStyle(nn.Module):
    """Freq-MixStyle (Schmid et al.): with probability ``p`` per batch, normalise each sample per frequency bin
    (statistics over channel and time), then de-normalise with statistics mixed with a random partner's by
    ``lam ~ Beta(alpha, alpha)``, one ``lam`` per sample (baseline, CP-JKU) or per batch (EASY)."""

    def __init__(self, p: float = 0.4, alpha: float = 0.3, per_sample: bool = True, eps: float = 1e-6):
        super().__init__()
        self.p, self.alpha, self.per_sample, self.eps = p, alpha, per_sample, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0 or torch.rand(()).item() >= self.p:
            return x
        b = x.shape[0]
        mu = x.mean(dim=(1, 3), keepdim=True).detach()
        sig = (x.var(dim=(1, 3), keepdim=True) + self.eps).sqrt().detach()
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((b if self.per_sample else 1,))
        lam = lam.to(x.device, x.dtype).view(-1, 1, 1, 1)
        perm = torch.randperm(b).to(x.device)
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        return (x - mu) / sig * sig_mix + mu_mix


class _AxisMasking(nn.Module):
    """SpecAugment-style masking with iid masks per sample (torchaudio's ``mask_along_axis_iid``): a band of width
    ``~U[0, max_width)`` at a uniform position is set to ``fill``. The fill is explicit because it depends on where
    the features come from: masking a power mel before ``log(x + 1e-5)`` (baseline) equals ``fill = log(1e-5)`` on
    its log-mels; CP-JKU masks the log-mel with 0 before ``(x + 4.5) / 5``, i.e. ``fill = 0.9`` on its output."""

    axis: int  # -2 frequency, -1 time

    def __init__(self, max_width: int, fill: float = 0.0):
        super().__init__()
        self.max_width, self.fill = int(max_width), float(fill)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.max_width <= 0:
            return x
        return torchaudio.functional.mask_along_axis_iid(x, self.max_width, self.fill, x.dim() + self.axis)


class FrequencyMasking(_AxisMasking):
    axis = -2


class TimeMasking(_AxisMasking):
    axis = -1


def clip_energy(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """ADIR energy of each clip: ``sample_rate * mean(x**2)`` of the float waveform in [-1, 1], i.e. the sum of squared
    samples of one second at 32 kHz (``sum(x**2)`` for the 1-s clips); float64 ``[B]``."""
    return wave.detach().double().pow(2).mean(dim=-1) * sample_rate


def mean_energy(batches: Iterable[np.ndarray | torch.Tensor], sample_rate: int = SAMPLE_RATE) -> float:
    """Mean ``clip_energy`` over clips given in batches ``[B, T]`` (e.g. chunks of ``store.waveforms(rows)``)."""
    total, count = 0.0, 0
    for batch in batches:
        batch = torch.as_tensor(batch)
        e = clip_energy(batch.reshape(-1, batch.shape[-1]), sample_rate)
        total, count = total + float(e.sum()), count + e.numel()
    if count == 0:
        raise ValueError("mean_energy needs at least one clip")
    return total / count


class DeviceImpulseResponse(nn.Module):
    """DIR (Morocutti et al., CP-JKU/EASY): each clip recorded on ``device_index`` (device a) is, with probability
    ``p``, convolved with a random impulse response: full linear convolution truncated to the clip length, no
    renormalisation. Other devices pass through unchanged.

    Only the first ``T`` taps of an IR reach the first ``T`` output samples, so IRs are cut to the clip length and the
    convolution runs as one batched FFT of size ``>= 2T - 1``. IRs are a non-persistent buffer: they follow the
    module's device but stay out of checkpoints.
    """

    needs_device = True

    def __init__(self, irs: Sequence[torch.Tensor], device_index: int | None, p: float = 0.6):
        """``device_index`` None: every clip is eligible (a pre-training corpus without device labels, as AudioSet)."""
        super().__init__()
        if len(irs) == 0:
            raise ValueError("DeviceImpulseResponse needs at least one impulse response")
        length = max(len(h) for h in irs)
        bank = torch.zeros(len(irs), length)
        for i, h in enumerate(irs):
            bank[i, :len(h)] = torch.as_tensor(h, dtype=torch.float32).reshape(-1)
        self.register_buffer("irs", bank, persistent=False)
        self.device_index, self.p = (None if device_index is None else int(device_index)), float(p)

    def eligible(self, wave: torch.Tensor, device_idx: torch.Tensor) -> torch.Tensor:
        """Clips the augmentation may touch: those of the target device (all of them without one)."""
        if self.device_index is None:
            return torch.ones(len(wave), dtype=torch.bool, device=wave.device)
        return device_idx.to(wave.device) == self.device_index

    def forward(self, wave: torch.Tensor, device_idx: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return wave
        b, t = wave.shape
        # One coin and one IR draw per clip whatever its device, so a clip's fate does not depend on its batch-mates.
        coin = torch.rand(b).to(wave.device)
        pick = torch.randint(len(self.irs), (b,)).to(wave.device)
        rows = torch.nonzero(self.eligible(wave, device_idx) & (coin < self.p)).squeeze(1)
        if rows.numel() == 0:
            return wave
        h = self.irs[pick[rows], :t]
        n_fft = 1 << (t + h.shape[-1] - 2).bit_length()  # next power of two >= t + len(h) - 1
        spec = torch.fft.rfft(wave[rows].float(), n_fft) * torch.fft.rfft(h, n_fft)
        out = wave.clone()
        out[rows] = torch.fft.irfft(spec, n_fft)[:, :t].to(wave.dtype)
        return out


class AutoDeviceImpulseResponse(DeviceImpulseResponse):
    """ADIR (DS-FlexiNet, eq. 3): DIR restricted to device-a clips whose ``clip_energy`` exceeds ``threshold``;
    quieter clips are left alone. ``threshold`` is a number (default: the paper's 323) or ``"mean"``: the mean energy
    of the training clips, set once by ``calibrate`` before training (our reading of "set to an average value")."""

    def __init__(self, irs: Sequence[torch.Tensor], device_index: int, p: float = 0.6,
                 threshold: float | str = ADIR_THRESHOLD, sample_rate: int = SAMPLE_RATE):
        super().__init__(irs, device_index, p)
        if threshold != "mean" and not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold must be a number or 'mean', got {threshold!r}")
        self.threshold = None if threshold == "mean" else float(threshold)
        self.sample_rate = sample_rate

    def calibrate(self, batches: Iterable[np.ndarray | torch.Tensor]) -> float:
        """Set the threshold to the mean energy of the clips given (the training split, all devices)."""
        self.threshold = mean_energy(batches, self.sample_rate)
        return self.threshold

    def eligible(self, wave: torch.Tensor, device_idx: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise RuntimeError("AutoDeviceImpulseResponse(threshold='mean') needs calibrate(training clips) first")
        return super().eligible(wave, device_idx) & (clip_energy(wave, self.sample_rate) > self.threshold)
