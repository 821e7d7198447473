"""Each augmentation is tested on the property it promises, in training mode, and for identity in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from bench.augment import (AutoDeviceImpulseResponse, DeviceImpulseResponse, FreqMixStyle, FrequencyMasking,
                           TimeMasking, TimeRoll, clip_energy, mean_energy)
from bench.data.irs import ImpulseResponseError, load_irs

SR = 32_000


def _irs() -> list[torch.Tensor]:
    """Three IRs of different lengths, one longer than the test clips (exercises the truncation)."""
    g = torch.Generator().manual_seed(123)
    return [torch.randn(n, generator=g) * torch.exp(-torch.arange(n) / (n / 4)) for n in (7, 50, 700)]


def _scaled(energies: list[float], t: int = 400) -> torch.Tensor:
    """Noise clips with exactly the given ``clip_energy``."""
    x = torch.randn(len(energies), t)
    x = x / x.pow(2).mean(1, keepdim=True).sqrt()
    return x * torch.tensor(energies).div(SR).sqrt()[:, None]


def _reference_dir(x: torch.Tensor, h: torch.Tensor) -> np.ndarray:
    return np.convolve(x.double().numpy(), h.double().numpy())[:len(x)]


def _matching_ir(out_row: torch.Tensor, in_row: torch.Tensor, irs: list[torch.Tensor]) -> int | None:
    """Index of the IR whose truncated full convolution of ``in_row`` gives ``out_row``, if any."""
    for i, h in enumerate(irs):
        if np.allclose(out_row.double().numpy(), _reference_dir(in_row, h), atol=1e-4):
            return i
    return None


# --- impulse-response folders -----------------------------------------------------------------------------------

def test_load_irs_mono_resampled_sorted(tmp_path):
    left = np.linspace(-0.5, 0.5, 441, dtype=np.float32)
    sf.write(tmp_path / "b_stereo.wav", np.stack([left, -left / 2], 1), 44_100, subtype="PCM_24")
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "a_mono.wav", np.full(64, 0.25, dtype=np.float32), SR, subtype="FLOAT")
    (tmp_path / "notes.txt").write_text("not audio")
    irs = load_irs(tmp_path)
    assert [ir.ndim for ir in irs] == [1, 1]
    assert len(irs[0]) == 320 and len(irs[1]) == 64          # b_stereo: 441 samples at 44.1 kHz -> 320 at 32 kHz
    torch.testing.assert_close(irs[1], torch.full((64,), 0.25))
    native = load_irs(tmp_path, sample_rate=44_100)[0]        # no resampling: the channel average itself
    np.testing.assert_allclose(native.numpy(), left / 4, atol=1e-6)


def test_load_irs_errors_name_the_folder(tmp_path):
    with pytest.raises(ImpulseResponseError, match=str(tmp_path / "missing")):
        load_irs(tmp_path / "missing")
    with pytest.raises(ImpulseResponseError, match=f"{tmp_path}: no WAV"):
        load_irs(tmp_path)
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(ImpulseResponseError, match=f"{tmp_path}: cannot read impulse response broken.wav"):
        load_irs(tmp_path)


def test_load_irs_reads_the_synthetic_micirp_folder(smoke_dataset):
    irs = load_irs(smoke_dataset / "micirp")
    assert len(irs) >= 1 and all(ir.ndim == 1 and ir.dtype == torch.float32 for ir in irs)
    assert all(abs(len(ir) - 4096 * SR / 44_100) <= 1 for ir in irs)  # written as 4096 taps at 44.1 kHz


# --- time roll -----------------------------------------------------------------------------------------------------

def test_time_roll_is_a_circular_shift():
    torch.manual_seed(0)
    x = torch.randn(6, 100)
    out = TimeRoll(10).train()(x)
    for row_in, row_out in zip(x, out):
        assert torch.equal(row_in.sort().values, row_out.sort().values)
        assert torch.allclose(row_in.pow(2).sum(), row_out.pow(2).sum())
        assert any(torch.equal(torch.roll(row_in, s), row_out) for s in range(-10, 11))
    assert not torch.equal(out, x)
    assert torch.equal(TimeRoll(10).eval()(x), x)


# --- Freq-MixStyle ------------------------------------------------------------------------------------------------

def _mixing_coefficients(x: torch.Tensor, out: torch.Tensor) -> list[float]:
    """Recover each sample's lambda from per-bin means: ``mean_out_i = lam * mean_i + (1 - lam) * mean_j`` for its
    partner ``j``; samples paired with themselves carry no information and are skipped."""
    mu, mu_out = x.mean(dim=(1, 3)), out.mean(dim=(1, 3))
    lams = []
    for i in range(len(x)):
        if torch.allclose(out[i], x[i], atol=1e-5):
            continue
        for j in range(len(x)):
            d = mu[i] - mu[j]
            if j == i or d.norm() < 1e-6:
                continue
            lam = float(((mu_out[i] - mu[j]) @ d) / (d @ d))
            if torch.allclose(lam * mu[i] + (1 - lam) * mu[j], mu_out[i], atol=1e-4):
                lams.append(lam)
                break
    return lams


def test_freq_mixstyle_changes_per_bin_statistics():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 16, 20) * torch.rand(8, 1, 16, 1) * 3 + torch.randn(8, 1, 16, 1) * 2
    out = FreqMixStyle(p=1.0, alpha=0.3).train()(x)
    assert out.shape == x.shape
    assert not torch.allclose(out.mean(dim=(1, 3)), x.mean(dim=(1, 3)), atol=1e-3)
    assert torch.equal(FreqMixStyle(p=1.0).eval()(x), x)
    assert torch.equal(FreqMixStyle(p=0.0).train()(x), x)


@pytest.mark.parametrize("per_sample", [True, False])
def test_freq_mixstyle_lambda_granularity(per_sample):
    torch.manual_seed(1)
    x = torch.randn(8, 1, 16, 20) + torch.randn(8, 1, 16, 1) * 3
    lams = _mixing_coefficients(x, FreqMixStyle(p=1.0, alpha=0.3, per_sample=per_sample).train()(x))
    assert len(lams) >= 4 and all(0.0 <= lam <= 1.0 for lam in lams)
    assert (np.ptp(lams) > 1e-3) == per_sample


# --- masking ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,axis", [(FrequencyMasking, 2), (TimeMasking, 3)])
def test_masking_fills_one_contiguous_band_per_sample(cls, axis):
    torch.manual_seed(0)
    x = torch.randn(16, 1, 24, 30)
    out = cls(12, fill=-7.0).train()(x)
    masked = (out == -7.0).movedim(axis, -1).reshape(16, -1, x.shape[axis])  # [B, other, axis]
    assert torch.equal(out[out != -7.0], x[out != -7.0])
    bands = []
    for m in masked:
        assert (m == m[0]).all()                               # a band spans the whole other axis
        idx = torch.nonzero(m[0]).squeeze(1)
        assert len(idx) < 12 and (len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx))
        bands.append(tuple(idx.tolist()))
    assert len(set(bands)) > 1                                 # iid masks, not one mask for the batch
    assert torch.equal(cls(12).eval()(x), x)


# --- DIR ----------------------------------------------------------------------------------------------------------

def test_dir_convolves_only_device_a_and_matches_full_convolution():
    torch.manual_seed(0)
    irs = _irs()
    x = torch.randn(12, 400)
    device = torch.tensor([0, 1, 0, 2, 0, 3, 0, 0, 4, 0, 5, 0])
    out = DeviceImpulseResponse(irs, device_index=0, p=1.0).train()(x, device)
    for i in range(len(x)):
        if device[i] == 0:
            assert _matching_ir(out[i], x[i], irs) is not None
        else:
            assert torch.equal(out[i], x[i])
    assert len({_matching_ir(out[i], x[i], irs) for i in range(len(x)) if device[i] == 0}) > 1
    assert torch.equal(DeviceImpulseResponse(irs, 0, p=1.0).eval()(x, device), x)
    assert torch.equal(DeviceImpulseResponse(irs, 0, p=0.0).train()(x, device), x)


def test_dir_probability_per_clip():
    torch.manual_seed(0)
    x = torch.randn(400, 64)
    out = DeviceImpulseResponse(_irs(), device_index=2, p=0.3).train()(x, torch.full((400,), 2))
    changed = (out != x).any(1).float().mean()
    assert 0.2 < changed < 0.4


# --- ADIR ---------------------------------------------------------------------------------------------------------

def test_clip_energy_is_the_sum_of_squares_of_one_second():
    x = torch.randn(3, SR) * 0.1
    torch.testing.assert_close(clip_energy(x), x.double().pow(2).sum(1))
    assert abs(float(clip_energy(torch.full((1, SR), 0.1))) - 320.0) < 1e-3  # -20 dBFS RMS ~ the paper's 323


def test_adir_skips_quiet_clips_and_other_devices():
    torch.manual_seed(0)
    irs = _irs()
    energies = [50.0, 900.0, 300.0, 2000.0, 900.0, 10.0]
    device = torch.tensor([0, 0, 0, 0, 1, 1])
    x = _scaled(energies)
    out = AutoDeviceImpulseResponse(irs, device_index=0, p=1.0).train()(x, device)   # threshold 323
    for i, (energy, d) in enumerate(zip(energies, device.tolist())):
        if d == 0 and energy > 323:
            assert _matching_ir(out[i], x[i], irs) is not None
        else:
            assert torch.equal(out[i], x[i])


def test_adir_mean_threshold_is_calibrated_once():
    torch.manual_seed(0)
    adir = AutoDeviceImpulseResponse(_irs(), device_index=0, p=1.0, threshold="mean").train()
    x = _scaled([10.0, 30.0, 100.0, 400.0])
    with pytest.raises(RuntimeError, match="calibrate"):
        adir(x, torch.zeros(4, dtype=torch.long))
    chunks = [x[:3].numpy(), x[3:].numpy()]
    assert abs(adir.calibrate(chunks) - 135.0) < 1e-3 and abs(mean_energy(chunks) - 135.0) < 1e-3
    out = adir(x, torch.zeros(4, dtype=torch.long))
    assert torch.equal(out[:3], x[:3]) and not torch.equal(out[3], x[3])
    with pytest.raises(ValueError):
        AutoDeviceImpulseResponse(_irs(), 0, threshold="median")


# --- reproducibility ----------------------------------------------------------------------------------------------

def _pipeline(seed: int, device: str = "cpu") -> torch.Tensor:
    torch.manual_seed(seed)
    wave_augs = [TimeRoll(50).train(), DeviceImpulseResponse(_irs(), 0, p=0.5).train().to(device),
                 AutoDeviceImpulseResponse(_irs(), 0, p=0.5, threshold=1.0).train().to(device)]
    g = torch.Generator().manual_seed(99)
    wave = torch.randn(8, 400, generator=g).to(device)
    dev = torch.tensor([0, 1, 0, 0, 2, 0, 0, 3]).to(device)
    for aug in wave_augs:
        wave = aug(wave, dev) if getattr(aug, "needs_device", False) else aug(wave)
    spec = wave.reshape(8, 1, 20, 20)
    return FreqMixStyle(p=1.0).train()(spec).cpu()


def test_same_seed_same_output():
    assert torch.equal(_pipeline(3), _pipeline(3))
    assert not torch.allclose(_pipeline(3), _pipeline(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu_for_the_same_seed():
    torch.testing.assert_close(_pipeline(3, "cuda"), _pipeline(3), atol=1e-4, rtol=1e-4)
