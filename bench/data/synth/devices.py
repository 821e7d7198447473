"""Recording-device chains for the synthetic benchmark.

As in TAU Urban Acoustic Scenes 2022 Mobile: device ``a`` is the high-quality reference; ``b`` and ``c`` are
phone-like (band limits, capsule resonances, automatic gain control / compression, a noise floor); ``s1``-``s6``
are simulated from random device impulse responses plus dynamic-range compression. ``s4``-``s6`` appear only in
the test split. The MicIRP-like impulse responses for DIR augmentation come from a *different* family (capsule
resonances) so augmentation never sees the test devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.data.synth import dsp
from bench.data.synth.dsp import N, SR

FREQS2 = np.fft.rfftfreq(2 * N, 1.0 / SR)


NOISE_BANK_SECONDS = 8


@dataclass(frozen=True)
class DeviceChain:
    name: str
    response: np.ndarray        # complex, on the rfft grid of 2N (linear filtering of one clip)
    comp_threshold_db: float    # compressor threshold (dBFS RMS)
    comp_ratio: float           # 1 = no compression
    agc_target_db: float | None  # automatic gain control target RMS, None = keep the input level
    noise: np.ndarray           # the device's self-noise at its floor level; clips take random excerpts

    def record(self, clean_spectrum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Record a clean clip given as ``rfft(clean, 2N)`` (shared by all devices of a parallel recording)."""
        x = np.fft.irfft(clean_spectrum * self.response, 2 * N)[:N]
        if self.agc_target_db is not None:
            x = x * dsp.db(self.agc_target_db + rng.normal(0, 1.0)) / dsp.rms(x)
        if self.comp_ratio > 1:
            x = dsp.compress(x, self.comp_threshold_db, self.comp_ratio)
        start = int(rng.integers(0, len(self.noise) - N))
        return np.clip(x + self.noise[start:start + N], -0.999, 0.999)


def _chain(name, mag_db, thr=0.0, ratio=1.0, agc=None, noise_db=-90.0, noise_tilt=0.0, strength=1.0):
    n = NOISE_BANK_SECONDS * SR
    noise_rng = np.random.default_rng([ord(ch) for ch in name])
    noise = dsp.shaped_noise(noise_rng, dsp.band_db(np.fft.rfftfreq(n, 1 / SR), noise_tilt, hp=30.0), n)
    noise *= dsp.db(noise_db) / dsp.rms(noise)
    return DeviceChain(name, dsp.minimum_phase(strength * mag_db, 2 * N), thr, ratio, agc, noise)


def real_devices(strength: float = 1.0) -> dict[str, DeviceChain]:
    """Fixed chains for the real devices: the reference and two phone-like recorders."""
    return {
        "a": _chain("a", dsp.band_db(FREQS2, hp=20.0, lp=20000.0, lp_order=8)),
        "b": _chain("b", dsp.band_db(FREQS2, 0.0, ((2800, 7, 0.4), (900, -4, 0.5), (5500, -5, 0.4)), hp=250.0,
                                     lp=7500.0, hp_order=2, lp_order=8), thr=-32, ratio=3.0, agc=-22,
                    noise_db=-58, noise_tilt=-1.0, strength=strength),
        "c": _chain("c", dsp.band_db(FREQS2, 1.0, ((4500, 8, 0.5), (250, 4, 0.7), (1500, -5, 0.4)), hp=130.0,
                                     lp=11000.0, hp_order=3, lp_order=6), thr=-36, ratio=4.0, agc=-24,
                    noise_db=-62, noise_tilt=-3.0, strength=strength),
    }


def simulated_device(name: str, rng: np.random.Generator, strength: float = 1.0) -> DeviceChain:
    """A random device impulse response (peaks and notches, tilt, band limits) plus compression."""
    n_bells = int(rng.integers(6, 11))
    bells = tuple((float(np.exp(rng.uniform(np.log(120), np.log(12000)))), float(rng.normal(0, 7)),
                   float(rng.uniform(0.25, 1.2))) for _ in range(n_bells))
    mag = dsp.band_db(FREQS2, float(rng.normal(0, 1.5)), bells, hp=float(rng.uniform(60, 400)),
                      lp=float(rng.uniform(5000, 16000)), hp_order=2, lp_order=int(rng.integers(3, 8)))
    return _chain(name, mag, thr=float(rng.uniform(-40, -28)), ratio=float(rng.uniform(1.5, 5.0)),
                  agc=float(rng.uniform(-30, -20)) if rng.random() < 0.5 else None,
                  noise_db=float(rng.uniform(-72, -56)), noise_tilt=float(rng.normal(-1.5, 1.5)), strength=strength)


def all_devices(seed: int | list[int], names: list[str], strength: float = 1.0) -> dict[str, DeviceChain]:
    """The chains for ``names``: real ones are fixed; each simulated one is drawn from (seed, its name); ``seed``
    may be a stream prefix (a list of integers)."""
    prefix = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    real = real_devices(strength)
    out = {}
    for name in names:
        if name in real:
            out[name] = real[name]
        else:
            tag = [ord(ch) for ch in name]
            out[name] = simulated_device(name, np.random.default_rng([*prefix, 7, *tag]), strength)
    return out


def micirp_like(rng: np.random.Generator, n: int = 4096) -> np.ndarray:
    """A microphone impulse response from capsule resonances (for DIR augmentation), unit energy."""
    bells = [(float(rng.uniform(2000, 10000)), float(rng.uniform(3, 12)), float(rng.uniform(0.15, 0.5)))]
    bells += [(float(np.exp(rng.uniform(np.log(100), np.log(15000)))), float(rng.normal(0, 4)), 0.5)
              for _ in range(int(rng.integers(2, 6)))]
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    mag = dsp.band_db(freqs, float(rng.normal(0, 1.0)), bells, hp=float(rng.uniform(40, 250)),
                      lp=float(rng.uniform(9000, 20000)))
    h = np.fft.irfft(dsp.minimum_phase(mag, n), n)
    return h / np.sqrt(np.sum(h * h))
