"""An embedded multi-label sound-event corpus for pre-training teachers: an offline stand-in for AudioSet.

Each 1-s clip is a varied bed (coloured noise, sometimes hum or a babble-like murmur; never a label) with 1-3
events from a few dozen classes mixed over it at a random SNR, each in its own random room, then recorded through
one of a pool of random device chains (or none). Classes are the scene generator's ten event families plus the
families below; the label space is disjoint from the scene classes, so pre-training never sees a scene label.

The device pool is drawn from its own rng stream (``[seed, 20, i, attempt]``; the benchmark draws s1-s6 from
``[seed, 7, ...]``), and any candidate whose response is close to one of the benchmark's chains of the same seed
(a, b, c, s1-s6) is redrawn, so pre-training cannot leak the test devices. Every clip draws from its own seed, so
the output is byte-identical for a seed however the work is spread over processes. Clips are rendered at the
synthesizers' 44.1 kHz and written as 32 kHz 16-bit PCM, the store's format, so preparing needs no resampling.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bench.data.manifest import Manifest, ManifestError, load_manifest
from bench.data.synth import devices as devmod
from bench.data.synth import dsp, scenes
from bench.data.synth import generate as scene_generator
from bench.data.synth.dsp import N, SR
from bench.data.tau import MARKER

GENERATOR_VERSION = 1
OUT_SR = 32_000
CLEAN = "clean"  # the chain name of clips recorded through no device


# ----------------------------------------------------------------------------------------------------------------
# Small helpers for the synthesizers (all at the dsp rate, 44.1 kHz; each synthesizer returns unit peak).

def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.abs(x).max() + 1e-9)


def _t(n: int) -> np.ndarray:
    return np.arange(n) / SR


def _smooth(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFT sizes with small factors only (a prime length is many times slower)."""
    best = 1 << max(n - 1, 1).bit_length()
    p3 = 1
    while p3 < best:
        p35 = p3
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 5
        p3 *= 3
    return best


def _len(rng, lo: float, hi: float) -> int:
    """A random duration in samples, rounded up to an FFT-friendly length."""
    return _smooth(max(16, int(rng.uniform(lo, hi) * SR)))


def _logu(rng, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _fade(n: int, attack_s: float, release_s: float) -> np.ndarray:
    a, r = max(1, min(n // 2, int(attack_s * SR))), max(1, min(n // 2, int(release_s * SR)))
    env = np.ones(n)
    env[:a] = np.linspace(0, 1, a)
    env[n - r:] = np.minimum(env[n - r:], np.linspace(1, 0, r))
    return env


def _tone(f: np.ndarray | float, n: int, amps, phase: float = 0.0) -> np.ndarray:
    return dsp.oscillate(dsp.wavetable(np.asarray(amps, dtype=float)), f, n, phase)


def _band_noise(rng, n: int, fc: float, width_oct: float, depth_db: float = 40.0) -> np.ndarray:
    """Noise with a log-Gaussian band around ``fc`` (``depth_db`` above the floor)."""
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / SR), 1.0)
    return dsp.shaped_noise(rng, depth_db * (np.exp(-0.5 * (np.log2(f / fc) / width_oct) ** 2) - 1.0), n)


def _coloured(rng, n: int, tilt: float, hp: float | None = None, lp: float | None = None, lp_order: int = 4):
    return dsp.shaped_noise(rng, dsp.band_db(np.fft.rfftfreq(n, 1.0 / SR), tilt, hp=hp, lp=lp, lp_order=lp_order), n)


def _onsets(rng, k: int, gap: float, jitter: float = 0.15) -> np.ndarray:
    """Sample positions of ``k`` repetitions ``gap`` seconds apart, each interval jittered."""
    steps = gap * rng.uniform(1 - jitter, 1 + jitter, max(k - 1, 0))
    return (np.concatenate([[0.0], np.cumsum(steps)]) * SR).astype(int)


def _sequence(onsets: np.ndarray, pieces: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(int(max(o + len(p) for o, p in zip(onsets, pieces))))
    for o, p in zip(onsets, pieces):
        out[o:o + len(p)] += p
    return out


def _damped(f: float, tau: float, n: int, phase: float = 0.0) -> np.ndarray:
    t = _t(n)
    return np.sin(2 * np.pi * f * t + phase) * np.exp(-t / tau)


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    m = _smooth(len(x) + len(kernel))
    return np.fft.irfft(np.fft.rfft(x, m) * np.fft.rfft(kernel, m), m)[:len(x)]


# ----------------------------------------------------------------------------------------------------------------
# The scene generator's event families, reused as they are, with repetition where one instance is short.

REPEATS = {"step": (1, 4, 0.35, 0.6), "clack": (1, 2, 0.15, 0.4), "chirp": (1, 5, 0.08, 0.25),
           "beep": (1, 3, 0.2, 0.45), "voice": (1, 3, 0.15, 0.35), "rustle": (1, 2, 0.25, 0.5)}


def _scene_event(name: str):
    def synth(rng):
        lo, hi, gap_lo, gap_hi = REPEATS.get(name, (1, 1, 0.0, 0.0))
        k = int(rng.integers(lo, hi + 1))
        pieces = [scenes.EVENT_SYNTH[name](rng, {}) * rng.uniform(0.6, 1.0) for _ in range(k)]
        return _unit(_sequence(_onsets(rng, k, rng.uniform(gap_lo, gap_hi) if k > 1 else 0.0), pieces))
    synth.__doc__ = f"The scene generator's {name!r} event, repeated {REPEATS.get(name, (1, 1))[:2]} times."
    return synth


# ----------------------------------------------------------------------------------------------------------------
# New event families. Each draws its pitch, rate or repetition, envelope and duration.

def ev_siren(rng):
    """Wail (slow sweep) or yelp (fast saw sweep) between two pitches."""
    n = _len(rng, 0.6, 1.4)
    lo = rng.uniform(450, 900)
    hi = lo * rng.uniform(1.4, 2.2)
    yelp = rng.random() < 0.5
    cyc = (rng.uniform(2.5, 7.0) if yelp else rng.uniform(0.4, 1.2)) * _t(n) + rng.random()
    shape = cyc % 1.0 if yelp else 0.5 - 0.5 * np.cos(2 * np.pi * cyc)
    amps = [1.0, 0.5, 0.3, 0.15, 0.1][: int(rng.integers(2, 6))]
    return _unit(_tone(lo + (hi - lo) * shape, n, amps) * _fade(n, 0.02, 0.05))


BELL_PARTIALS = np.array([0.5, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.2])


def ev_bell(rng):
    """Inharmonic bell partials with a long decay, struck one to three times."""
    f0 = _logu(rng, 300, 1800)
    tau = rng.uniform(0.2, 0.9)
    n = int(min(3 * tau, 1.0) * SR)
    t = _t(n)
    strike = np.zeros(n)
    for r in BELL_PARTIALS[BELL_PARTIALS * f0 < 14_000]:
        f = r * f0 * (1 + rng.normal(0, 0.004))
        strike += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * \
            np.exp(-t / (tau / r ** 0.6))
    strike *= _fade(n, 0.002, 0.02)
    k = int(rng.integers(1, 4))
    return _unit(_sequence(_onsets(rng, k, rng.uniform(0.2, 0.45)), [strike * rng.uniform(0.6, 1) for _ in range(k)]))


def ev_knock(rng):
    """Two to five knocks on a door or table: a damped low resonance plus a click."""
    k = int(rng.integers(2, 6))
    f, tau = rng.uniform(110, 400), rng.uniform(0.008, 0.03)
    n = int(0.08 * SR)
    t = _t(n)

    def hit():
        click = dsp.moving_average(rng.standard_normal(n), int(rng.integers(2, 8))) * np.exp(-t / 0.002)
        return rng.uniform(0.6, 1.0) * (_damped(f * rng.uniform(0.97, 1.03), tau, n) + 0.4 * _unit(click))
    return _unit(_sequence(_onsets(rng, k, rng.uniform(0.08, 0.22)), [hit() for _ in range(k)]))


def ev_whistle(rng):
    """A whistled tone that rises, falls or arcs, with vibrato and some breath."""
    n = _len(rng, 0.25, 0.9)
    x = np.linspace(0, 1, n)
    f0 = _logu(rng, 900, 3000)
    glide = (x, 1 - x, np.sin(np.pi * x))[int(rng.integers(3))]
    f = f0 * (1 + rng.uniform(0.1, 0.5) * glide) * (1 + rng.uniform(0.005, 0.03) *
                                                    np.sin(2 * np.pi * rng.uniform(4, 8) * _t(n)))
    breath = _unit(_band_noise(rng, n, f0 * 1.2, 0.5))
    return _unit((_tone(f, n, [1.0, 0.08, 0.03]) + rng.uniform(0.02, 0.15) * breath) * _fade(n, 0.03, 0.06))


def ev_bark(rng):
    """One to three barks: a rough, falling harmonic burst with a formant."""
    f0 = _logu(rng, 250, 900)
    table = dsp.wavetable(dsp.harmonic_amps(f0, 30, 0.6, 8000, ((rng.uniform(700, 1800), 10, 0.6),)))

    def one():
        n = _len(rng, 0.07, 0.18)
        x = np.linspace(0, 1, n)
        voiced = dsp.oscillate(table, f0 * rng.uniform(0.9, 1.1) * (1.15 - 0.45 * x), n, rng.random())
        env = np.minimum(1.0, x * n / (0.006 * SR)) * np.exp(-3 * x)
        return (voiced + 0.3 * rng.standard_normal(n)) * env
    k = int(rng.integers(1, 4))
    return _unit(_sequence(_onsets(rng, k, rng.uniform(0.18, 0.35)), [one() for _ in range(k)]))


def ev_door_slam(rng):
    """A low thump, a crack and a short rattle, sometimes after the latch clicks."""
    n = _len(rng, 0.3, 0.6)
    t = _t(n)
    thump = _damped(rng.uniform(45, 110), rng.uniform(0.04, 0.12), n)
    crack = _unit(rng.standard_normal(n)) * np.exp(-t / 0.004)
    rattle = _unit(_band_noise(rng, n, rng.uniform(300, 1200), 0.7)) * np.exp(-t / rng.uniform(0.05, 0.15)) * \
        (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(25, 60) * t)))
    x = thump + rng.uniform(0.3, 0.8) * crack + rng.uniform(0.1, 0.5) * rattle
    if rng.random() < 0.5:
        m = int(0.02 * SR)
        latch = 0.3 * _unit(_band_noise(rng, m, rng.uniform(2000, 5000), 0.5)) * np.exp(-_t(m) / 0.003)
        x = _sequence(np.array([0, int(rng.uniform(0.04, 0.15) * SR)]), [latch, x])
    return _unit(x)


def ev_glass_clink(rng):
    """High inharmonic partials with a short ring, one to three clinks."""
    f0 = _logu(rng, 2200, 6000)
    ratios = np.concatenate([[1.0], np.sort(rng.uniform(1.4, 2.9, int(rng.integers(2, 5))))])
    ratios = ratios[ratios * f0 < 14_500]
    tau = rng.uniform(0.05, 0.3)
    n = int(min(5 * tau, 0.9) * SR)

    def clink():
        return sum(rng.uniform(0.2, 1.0) * _damped(r * f0 * rng.uniform(0.995, 1.005), tau / r, n,
                                                   rng.uniform(0, 2 * np.pi)) for r in ratios)
    k = int(rng.integers(1, 4))
    return _unit(_sequence(_onsets(rng, k, rng.uniform(0.08, 0.3)), [clink() * rng.uniform(0.5, 1) for _ in range(k)]))


def ev_typing(rng):
    """Key presses at 5-13 per second, each a click and a softer release, now and then a space bar."""
    n = _len(rng, 0.5, 1.3)
    rate, fc = rng.uniform(5, 13), rng.uniform(1500, 4500)
    m = int(0.02 * SR)
    t = _t(m)
    times, at = [], 0.0
    while at < n / SR:
        times.append(int(at * SR))
        at += max(0.035, rng.exponential(1.0 / rate))
    pieces, onsets = [], []
    for on in times:
        space = rng.random() < 0.1
        f = fc * (0.5 if space else rng.uniform(0.8, 1.25))
        tau = rng.uniform(0.002, 0.006) * (2 if space else 1)
        pieces.append(rng.uniform(0.5, 1.0) * _unit(_band_noise(rng, m, f, 0.8)) * np.exp(-t / tau))
        onsets.append(on)
        pieces.append(0.3 * pieces[-1])
        onsets.append(on + int(rng.uniform(0.03, 0.07) * SR))
    return _unit(_sequence(np.array(onsets), pieces))


def ev_phone_ring(rng):
    """A classic two-tone ring under a ~20 Hz warble, in bursts; or a short ringtone melody."""
    if rng.random() < 0.65:
        f1 = _logu(rng, 400, 1300)
        f2 = f1 * rng.uniform(1.08, 1.45)
        on, off = rng.uniform(0.25, 0.5), rng.uniform(0.1, 0.3)
        n = int(on * SR)
        t = _t(n)
        warble = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(12, 25) * t))
        burst = (np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t)) * warble * _fade(n, 0.005, 0.01)
        k = int(rng.integers(1, 4))
        return _unit(_sequence(_onsets(rng, k, on + off, 0.02), [burst] * k))
    root = _logu(rng, 500, 1500)
    note = rng.uniform(0.06, 0.14)
    n = int(note * SR)
    steps = rng.choice([0, 2, 4, 5, 7, 9, 12], size=int(rng.integers(4, 9)))
    notes = [_tone(root * 2 ** (s / 12), n, [1.0, 0.3, 0.1]) * _fade(n, 0.005, 0.03) for s in steps]
    return _unit(_sequence(_onsets(rng, len(notes), note * rng.uniform(1.0, 1.4), 0.0), notes))


def ev_drill(rng):
    """A motor buzz that spins up, with the grinding of the bit modulated by the motor."""
    n = _len(rng, 0.5, 1.4)
    t = _t(n)
    f0 = _logu(rng, 80, 350)
    spin = 1 - np.exp(-t / rng.uniform(0.03, 0.2))
    f = f0 * (0.3 + 0.7 * spin) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    buzz = _tone(f, n, dsp.harmonic_amps(f0, 40, rng.uniform(0.5, 0.9), 9000))
    grind = _unit(_band_noise(rng, n, rng.uniform(2000, 5000), 0.6)) * (0.6 + 0.4 * buzz)
    return _unit((buzz + rng.uniform(0.2, 0.7) * grind) * _fade(n, 0.01, 0.05))


def ev_hammer(rng):
    """Regular blows, two to five per second: a metallic ring over a thump and a click."""
    f = _logu(rng, 1200, 4000)
    ring_ratio, tau = rng.uniform(1.3, 2.7), rng.uniform(0.03, 0.12)
    n = int(0.25 * SR)
    t = _t(n)

    def blow():
        ring = _damped(f, tau, n, rng.uniform(0, 6.3)) + 0.5 * _damped(f * ring_ratio, tau / 2, n)
        thump = _damped(rng.uniform(80, 200), 0.02, n)
        click = _unit(rng.standard_normal(n)) * np.exp(-t / 0.0015)
        return rng.uniform(0.7, 1.0) * (ring + thump + 0.5 * click)
    k = int(rng.integers(2, 6))
    return _unit(_sequence(_onsets(rng, k, 1.0 / rng.uniform(2.0, 5.0), 0.08), [blow() for _ in range(k)]))


def ev_drip(rng):
    """Water drops: short sine plops whose pitch rises, at irregular intervals."""
    k = int(rng.integers(1, 6))
    f0 = _logu(rng, 400, 1500)

    def drop():
        n = _len(rng, 0.02, 0.06)
        t = _t(n)
        f = f0 * rng.uniform(0.8, 1.25) * np.exp(np.linspace(0, np.log(rng.uniform(1.5, 3.0)), n))
        return _tone(f, n, [1.0]) * np.exp(-t / rng.uniform(0.008, 0.025)) * _fade(n, 0.001, 0.002)
    return _unit(_sequence(_onsets(rng, k, rng.uniform(0.08, 0.3), 0.5), [drop() for _ in range(k)]))


def ev_wind_gust(rng):
    """Low-passed noise swelling and dying away with flutter, sometimes whistling through a gap."""
    n = _len(rng, 0.6, 1.5)
    x = np.linspace(0, 1, n)
    noise = _unit(_coloured(rng, n, -2.0, hp=30.0, lp=_logu(rng, 250, 1500), lp_order=2))
    peak = rng.uniform(0.3, 0.7)
    swell = np.sin(0.5 * np.pi * np.where(x < peak, x / peak, (1 - x) / (1 - peak))) ** rng.uniform(1.0, 2.5)
    flutter = dsp.moving_average(rng.standard_normal(n), int(0.05 * SR))
    flutter = 1 + rng.uniform(0.1, 0.4) * flutter / (np.abs(flutter).max() + 1e-9)
    out = noise * swell * flutter
    if rng.random() < 0.4:
        out += rng.uniform(0.1, 0.4) * _unit(_band_noise(rng, n, rng.uniform(300, 1200), 0.05, 50.0)) * swell
    return _unit(out)


def ev_bird_trill(rng):
    """A rapid series (8-25 per second) of short frequency-swept syllables."""
    n = _len(rng, 0.3, 1.0)
    t, x = _t(n), np.linspace(0, 1, n)
    cyc = (rng.uniform(8, 25) * t) % 1.0
    depth = rng.uniform(0.1, 0.4) * rng.choice([-1.0, 1.0])
    f = _logu(rng, 2000, 6000) * (1 + depth * (cyc - 0.5)) * (1 + rng.uniform(-0.2, 0.2) * x)
    duty = rng.uniform(0.4, 0.9)
    gate = np.where(cyc < duty, np.sin(np.pi * np.minimum(cyc / duty, 1.0)) ** 2, 0.0)
    return _unit(_tone(f, n, [1.0, 0.15]) * gate * _fade(n, 0.01, 0.05))


def ev_cough(rng):
    """One or two coughs: a formant-shaped noise burst with a short voiced tail."""
    f1, f2 = rng.uniform(400, 900), rng.uniform(1200, 2500)
    f0 = rng.uniform(100, 250)

    def one():
        n = _len(rng, 0.18, 0.4)
        t = _t(n)
        mag = dsp.band_db(np.fft.rfftfreq(n, 1.0 / SR), -2.0, ((f1, 12, 0.5), (f2, 9, 0.4)), hp=100.0,
                          lp=rng.uniform(4000, 7000))
        burst = _unit(dsp.shaped_noise(rng, mag, n)) * np.exp(-t / rng.uniform(0.03, 0.06))
        tail = _tone(f0, n, dsp.harmonic_amps(f0, 20, 1.0, 3000)) * np.exp(-t / 0.1) * np.clip((t - 0.03) / 0.02, 0, 1)
        return (burst + rng.uniform(0.1, 0.4) * tail) * _fade(n, 0.005, 0.02)
    k = int(rng.integers(1, 3))
    return _unit(_sequence(_onsets(rng, k, rng.uniform(0.3, 0.5)), [one() for _ in range(k)]))


def ev_alarm(rng):
    """A square-wave alarm: pulsed on one pitch, or alternating between two, 2-8 times a second."""
    n = _len(rng, 0.5, 1.3)
    f1 = _logu(rng, 900, 4000)
    cyc = (rng.uniform(2, 8) * _t(n) + rng.random()) % 1.0
    if rng.random() < 0.5:
        f, gate = f1, (cyc < rng.uniform(0.3, 0.7)).astype(float)
    else:
        f, gate = np.where(cyc < 0.5, f1, f1 * rng.uniform(0.7, 0.85)), np.ones(n)
    odd = [1.0 / h if h % 2 else 0.0 for h in range(1, 8)]
    return _unit(_tone(f, n, odd) * dsp.moving_average(gate, int(0.001 * SR)) * _fade(n, 0.005, 0.01))


def ev_motorcycle(rng):
    """A twin-cylinder engine revving: low firing frequency, uneven firing, exhaust noise; passing or steady."""
    n = _len(rng, 0.7, 1.5)
    x = np.linspace(0, 1, n)
    f0 = _logu(rng, 30, 70)
    f = f0 * (1 + rng.uniform(0.3, 1.5) * np.exp(-0.5 * ((x - rng.uniform(0.2, 0.8)) / rng.uniform(0.15, 0.35)) ** 2))
    engine = _tone(f, n, dsp.harmonic_amps(f0, 60, 0.55, 5000))
    firing = 1 + 0.6 * np.sin(np.pi * np.cumsum(f) / SR)
    exhaust = _unit(_band_noise(rng, n, rng.uniform(200, 800), 1.0)) * (0.5 + 0.5 * np.abs(engine))
    env = np.exp(-0.5 * ((x - rng.uniform(0.3, 0.7)) / 0.3) ** 2) if rng.random() < 0.5 else _fade(n, 0.05, 0.1)
    return _unit((engine * firing + rng.uniform(0.2, 0.6) * exhaust) * env)


def ev_helicopter(rng):
    """Blade slap: low-passed noise pulsed 8-22 times a second, a tail-rotor whine, a slow swell."""
    n = _len(rng, 0.8, 1.5)
    t = _t(n)
    rate = rng.uniform(8, 22)
    slap = (0.5 + 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 6.3))) ** rng.uniform(4, 12)
    body = _unit(_coloured(rng, n, -3.0, hp=30.0, lp=_logu(rng, 400, 1500)))
    whine = np.sin(2 * np.pi * rng.uniform(400, 1200) * t)
    swell = 0.7 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t + rng.uniform(0, 6.3))
    return _unit((body * (0.15 + slap) + rng.uniform(0.05, 0.2) * whine) * swell * _fade(n, 0.1, 0.1))


def ev_applause(rng):
    """A crowd clapping: many random claps (40-250 per second) shaping band-limited noise."""
    n = _len(rng, 0.6, 1.5)
    count = rng.poisson(rng.uniform(40, 250) * n / SR)
    impulses = np.zeros(n)
    np.add.at(impulses, rng.integers(0, n, count), rng.uniform(0.3, 1.0, count))
    kernel = np.exp(-_t(int(0.05 * SR)) / rng.uniform(0.004, 0.012))
    env = _convolve(impulses, kernel)
    noise = _unit(_band_noise(rng, n, rng.uniform(1000, 3000), 1.2, 30.0))
    return _unit(noise * env * _fade(n, rng.uniform(0.02, 0.15), rng.uniform(0.05, 0.3)))


def ev_engine_idle(rng):
    """A steady low engine idle with cycle-to-cycle jitter and an engine-bay resonance."""
    n = _len(rng, 0.8, 1.5)
    f0 = _logu(rng, 18, 45)
    jitter = dsp.moving_average(rng.standard_normal(n), int(0.05 * SR))
    f = f0 * (1 + rng.uniform(0.01, 0.05) * jitter / (jitter.std() + 1e-9))
    amps = dsp.harmonic_amps(f0, 80, rng.uniform(0.6, 1.1), rng.uniform(800, 2500),
                             ((rng.uniform(150, 600), rng.uniform(4, 10), 0.7),))
    rumble = _unit(_coloured(rng, n, -4.0, hp=20.0, lp=400.0))
    return _unit((_tone(f, n, amps) + 0.15 * rumble) * _fade(n, 0.05, 0.1))


TRAIN_CHORDS = ((1.0, 1.19, 1.5), (1.0, 1.26, 1.5, 1.78), (1.0, 1.2, 1.5, 2.0))


def ev_train_horn(rng):
    """A sustained, brassy chord of three or four tones, in one or two blasts."""
    base = _logu(rng, 180, 360)
    chord = TRAIN_CHORDS[int(rng.integers(len(TRAIN_CHORDS)))]
    rolloff = rng.uniform(0.4, 0.8)

    def blast(seconds):
        n = int(seconds * SR)
        x = sum(_tone(base * r * (1 + rng.normal(0, 0.003)), n, dsp.harmonic_amps(base * r, 20, rolloff, 6000),
                      rng.random()) for r in chord)
        return x * _fade(n, rng.uniform(0.04, 0.1), rng.uniform(0.08, 0.2))
    if rng.random() < 0.6:
        return _unit(blast(rng.uniform(0.4, 1.2)))
    short = rng.uniform(0.15, 0.3)
    return _unit(_sequence(np.array([0, int((short + rng.uniform(0.08, 0.2)) * SR)]),
                           [blast(short), blast(rng.uniform(0.3, 0.8))]))


def ev_clock_tick(rng):
    """Regular ticks, one to five per second, alternating tick and tock."""
    rate = rng.uniform(1.0, 5.0)
    k = int(np.ceil(rate * 1.2)) + 1
    fc = _logu(rng, 1800, 5000)
    pitches = (fc, fc * rng.uniform(0.65, 0.9))
    m = int(0.015 * SR)
    tau = rng.uniform(0.001, 0.004)
    ticks = [_damped(pitches[i % 2], tau, m) + 0.3 * _unit(rng.standard_normal(m)) * np.exp(-_t(m) / 0.0008)
             for i in range(k)]
    return _unit(_sequence(_onsets(rng, k, 1.0 / rate, 0.005), ticks))


def ev_thunder(rng):
    """A deep rumble of several overlapping swells, sometimes opened by a crack."""
    n = _len(rng, 0.9, 1.6)
    t = _t(n)
    rumble = _unit(_coloured(rng, n, -1.0, hp=20.0, lp=_logu(rng, 80, 300), lp_order=2))
    env = np.zeros(n)
    for _ in range(int(rng.integers(2, 6))):
        at, rise, decay = rng.uniform(0, 0.6), rng.uniform(0.05, 0.2), rng.uniform(0.2, 0.8)
        d = t - at
        env += rng.uniform(0.4, 1.0) * np.where(d < 0, 0.0, np.minimum(d / rise, 1.0) * np.exp(-np.maximum(d - rise, 0)
                                                                                               / decay))
    out = rumble * env
    if rng.random() < 0.5:
        out += rng.uniform(0.2, 0.6) * _unit(_coloured(rng, n, 0.0, hp=500.0)) * np.exp(-t / 0.03)
    return _unit(out)


def ev_zipper(rng):
    """A click train whose rate speeds up or slows down (80-600 clicks per second)."""
    n = _len(rng, 0.2, 0.6)
    r0, r1 = rng.uniform(80, 200), rng.uniform(200, 600)
    if rng.random() < 0.5:
        r0, r1 = r1, r0
    phase = np.cumsum(np.linspace(r0, r1, n)) / SR
    impulses = np.zeros(n)
    hits = np.flatnonzero(np.diff(np.floor(phase)) > 0)
    impulses[hits] = rng.uniform(0.5, 1.0, len(hits))
    m = int(0.003 * SR)
    kernel = _unit(_band_noise(rng, m, rng.uniform(2000, 5000), 0.6)) * np.exp(-_t(m) / 0.0008)
    return _unit(_convolve(impulses, kernel) * _fade(n, 0.01, 0.02))


def ev_buzzer(rng):
    """A harsh square or sawtooth buzz, one or two of them, switched hard on and off."""
    f0 = _logu(rng, 90, 400)
    limit = int(8000 // f0)
    saw = rng.random() < 0.4
    amps = [1.0 / h if (saw or h % 2) else 0.0 for h in range(1, limit + 1)]
    n = _len(rng, 0.25, 0.8)
    buzz = _tone(f0, n, amps) * _fade(n, 0.003, 0.003)
    k = int(rng.integers(1, 3))
    return _unit(_sequence(_onsets(rng, k, n / SR + rng.uniform(0.1, 0.3), 0.0), [buzz] * k))


def ev_clap(rng):
    """One to four hand claps: a few micro-bursts of band-limited noise within ~10 ms."""
    fc = _logu(rng, 800, 2500)
    m = int(0.06 * SR)
    t = _t(m)

    def clap():
        env = sum(np.exp(-np.maximum(t - d, 0) / 0.002) * (t >= d) for d in rng.uniform(0, 0.01, int(rng.integers(2, 4))))
        env = env + np.exp(-t / rng.uniform(0.006, 0.015))
        return _unit(_band_noise(rng, m, fc * rng.uniform(0.85, 1.2), 0.8)) * env * rng.uniform(0.6, 1.0)
    k = int(rng.integers(1, 5))
    return _unit(_sequence(_onsets(rng, k, rng.uniform(0.2, 0.5), 0.08), [clap() for _ in range(k)]))


NEW_EVENTS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "siren": ev_siren, "bell": ev_bell, "knock": ev_knock, "whistle": ev_whistle, "bark": ev_bark,
    "door_slam": ev_door_slam, "glass_clink": ev_glass_clink, "typing": ev_typing, "phone_ring": ev_phone_ring,
    "drill": ev_drill, "hammer": ev_hammer, "drip": ev_drip, "wind_gust": ev_wind_gust, "bird_trill": ev_bird_trill,
    "cough": ev_cough, "alarm": ev_alarm, "motorcycle": ev_motorcycle, "helicopter": ev_helicopter,
    "applause": ev_applause, "engine_idle": ev_engine_idle, "train_horn": ev_train_horn, "clock_tick": ev_clock_tick,
    "thunder": ev_thunder, "zipper": ev_zipper, "buzzer": ev_buzzer, "clap": ev_clap,
}
EVENT_SYNTH: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    **{name: _scene_event(name) for name in scenes.EVENTS}, **NEW_EVENTS}
EVENT_CLASSES = tuple(EVENT_SYNTH)  # the order the shipped manifests list them in


def synthesize(name: str, rng: np.random.Generator) -> np.ndarray:
    """One instance of event class ``name`` at 44.1 kHz, unit peak."""
    return EVENT_SYNTH[name](rng)


# ----------------------------------------------------------------------------------------------------------------
# The bed under the events (never a label).

def _hum(rng) -> np.ndarray:
    """Mains hum or a machine's drone."""
    f0 = float(rng.choice([50.0, 60.0, 100.0, 120.0])) if rng.random() < 0.5 else _logu(rng, 40, 400)
    f = f0 * (1 + 0.002 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * _t(N)))
    x = _tone(f, N, dsp.harmonic_amps(f0, 40, rng.uniform(0.5, 1.5), 3000), rng.random())
    return x / dsp.rms(x)


def _babble(rng) -> np.ndarray:
    """A murmur: speech-shaped noise under the syllabic modulation of a few talkers (no intelligible voice)."""
    mag = dsp.band_db(scenes.FREQS, -4.0, ((rng.uniform(400, 700), 10, 0.6), (rng.uniform(1200, 2200), 6, 0.5)),
                      hp=120.0, lp=5000.0)
    coarse = np.linspace(0, 1, 201)  # the syllabic gates are smooth: drawn on a 5-ms grid, then interpolated
    talkers = int(rng.integers(3, 9))
    gates = sum(np.maximum(np.sin(2 * np.pi * rng.uniform(3, 6) * coarse + rng.uniform(0, 6.3)), 0) ** 2
                for _ in range(talkers)) / talkers
    x = dsp.shaped_noise(rng, mag) * (0.3 + np.interp(np.linspace(0, 1, N), coarse, gates))
    return x / dsp.rms(x)


def bed(rng: np.random.Generator, g: dict) -> np.ndarray:
    """A 1-s, unit-RMS bed: coloured noise with a random tilt and bumps, slow modulation, maybe hum or babble."""
    bells = tuple((_logu(rng, 60, 8000), float(rng.normal(0, 6)), float(rng.uniform(0.3, 1.5)))
                  for _ in range(int(rng.integers(0, 4))))
    x = dsp.shaped_noise(rng, dsp.band_db(scenes.FREQS, float(rng.uniform(-6, 0)), bells, hp=_logu(rng, 20, 200)))
    x *= 1 + rng.uniform(0, 0.5) * np.sin(2 * np.pi * _logu(rng, 0.1, 3.0) * _t(N) + rng.uniform(0, 6.3))
    x /= dsp.rms(x)
    if rng.random() < g["hum_fraction"]:
        x = x + dsp.db(rng.uniform(-20, -3)) * _hum(rng)
    if rng.random() < g["babble_fraction"]:
        x = x + dsp.db(rng.uniform(-12, 0)) * _babble(rng)
    return x / dsp.rms(x)


# ----------------------------------------------------------------------------------------------------------------
# Device chains: a random pool kept away from the benchmark's chains.

_GRID = np.searchsorted(devmod.FREQS2, np.geomspace(50.0, 15_000.0, 256))


def log_response(chain: devmod.DeviceChain) -> np.ndarray:
    """A chain's magnitude response in dB on a log-frequency grid (50 Hz-15 kHz), mean removed: the shape that
    decides whether two chains sound alike (a linear grid would be dominated by the band edge above 5 kHz)."""
    v = 20.0 * np.log10(np.abs(chain.response[_GRID]) + 1e-12)
    return v - v.mean()


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    return float(x @ y / np.sqrt((x @ x) * (y @ y) + 1e-20))


def response_similarity(a: devmod.DeviceChain, b: devmod.DeviceChain) -> float:
    """Correlation of two chains' log-magnitude responses (1 = the same shape)."""
    return _correlation(log_response(a), log_response(b))


def benchmark_chains(manifest: Manifest, seed: int) -> dict[str, devmod.DeviceChain]:
    """The scene benchmark's chains for ``seed`` (a, b, c, s1-s6), only to keep the pool away from them: taken from
    the scene generator itself, so its streams (a re-drawn test split included) are the ones avoided."""
    return scene_generator._chains(load_manifest(manifest.generator["avoid_devices_of"]), seed)


_POOL_CACHE: dict[tuple[str, int], dict[str, devmod.DeviceChain]] = {}


def chain_pool(manifest_name: str, seed: int) -> dict[str, devmod.DeviceChain]:
    """The corpus' device chains ``r00``, ``r01``, ...: chain ``i`` is the first draw from ``[seed, 20, i,
    attempt]`` whose response correlates below ``max_similarity`` with every benchmark chain of that seed."""
    key = (manifest_name, seed)
    if key not in _POOL_CACHE:
        manifest = load_manifest(manifest_name)
        g = manifest.generator
        refs = [log_response(c) for c in benchmark_chains(manifest, seed).values()]
        pool = {}
        for i in range(g["chain_pool"]):
            attempt = 0
            while True:
                name = f"r{i:02d}"
                chain = devmod.simulated_device(name, np.random.default_rng([seed, 20, i, attempt]),
                                                g["device_strength"])
                x = log_response(chain)
                if max(_correlation(x, r) for r in refs) < g["max_similarity"]:
                    break
                attempt += 1
            pool[name] = chain
        _POOL_CACHE[key] = pool
    return _POOL_CACHE[key]


# ----------------------------------------------------------------------------------------------------------------
# One clip.

# 44.1 kHz -> 32 kHz in the frequency domain: an FFT of 441*k input samples has the same bin spacing as one of
# 320*k output samples, so the 32 kHz spectrum is the first 16 kHz of the 44.1 kHz one. k = 105 pads the clip
# with 50 ms of zeros (no wrap-around); a raised-cosine edge from 14.5 kHz keeps the kernel far shorter than that.
_RS_IN, _RS_OUT = 441 * 105, 320 * 105
_F_OUT = np.fft.rfftfreq(_RS_OUT, 1.0 / OUT_SR)
_TAPER = np.where(_F_OUT < 14_500, 1.0, 0.5 + 0.5 * np.cos(np.pi * np.clip((_F_OUT - 14_500) / 1_500, 0, 1)))


def _to_out_rate(x: np.ndarray) -> np.ndarray:
    """A clip at 44.1 kHz (``N`` samples) resampled to 32 kHz (windowed-sinc low-pass in all but name)."""
    spec = np.fft.rfft(x, _RS_IN)[:len(_TAPER)] * _TAPER
    return np.fft.irfft(spec, _RS_OUT)[:OUT_SR] * (_RS_OUT / _RS_IN)


def _onset(rng, ev: np.ndarray, n: int) -> int:
    """Where an event starts in the clip: random, its centre inside, keeping at least 70 % of the energy that fits
    (so the label is heard); the best-fitting position after ten misses."""
    c = np.concatenate([[0.0], np.cumsum(ev * ev)])
    length = len(ev)

    def inside(onset: int) -> float:
        return c[min(length, n - onset)] - c[max(0, -onset)]
    best = c[-1] if length <= n else float(np.max(c[n:] - c[:-n]))
    for _ in range(10):
        onset = int(rng.integers(-(length // 2), n - length // 2))
        if inside(onset) >= 0.7 * best:
            return onset
    return 0 if length <= n else -int(np.argmax(c[n:] - c[:-n]))


def render_clip(manifest: Manifest, seed: int, index: int) -> tuple[np.ndarray, list[str], str]:
    """Clip ``index`` of the corpus: (32 kHz waveform, its labels in class order, its chain name)."""
    g = manifest.generator
    rng = np.random.default_rng([seed, 21, index])
    lo, hi = g["events_per_clip"]
    k = int(rng.choice(np.arange(lo, hi + 1), p=g["events_weights"]))
    picked = sorted(int(i) for i in rng.choice(len(manifest.classes), size=k, replace=False))
    labels = [manifest.classes[i] for i in picked]
    spectrum = np.fft.rfft(bed(rng, g), 2 * N)
    for name in labels:
        ev = synthesize(name, rng)
        ev = ev * dsp.db(rng.uniform(*g["snr_db"])) / dsp.rms(ev)  # the bed has unit RMS
        onset = _onset(rng, ev, N)
        placed = np.zeros(N)
        a, b = max(onset, 0), min(onset + len(ev), N)
        placed[a:b] = ev[a - onset:b - onset]
        room = np.fft.rfft(scenes.room_ir(rng, _logu(rng, *g["rt60"])), 2 * N)
        spectrum += np.fft.rfft(placed, 2 * N) * (1.0 + dsp.db(rng.uniform(*g["wet_db"])) * room)
    clean = np.fft.irfft(spectrum, 2 * N)[:N]
    # a random loudness, but impulsive clips (claps, ticks at high SNR) are held below a peak so they do not clip
    gain = min(dsp.db(rng.uniform(*g["level_db"])) / dsp.rms(clean),
               dsp.db(g["peak_db"]) / (np.abs(clean).max() + 1e-12))
    spectrum *= gain
    pool = chain_pool(manifest.name, seed)
    if rng.random() < g["clean_fraction"]:
        chain, x = CLEAN, np.clip(clean * gain, -0.999, 0.999)
    else:
        chain = list(pool)[int(rng.integers(len(pool)))]
        device = pool[chain]
        x = device.record(spectrum, rng)
        # a resonant chain can still push a transient into clipping: record it quieter (an AGC chain sets its own
        # level, so its clipped transients stay, as a phone's do)
        for _ in range(3):
            if device.agc_target_db is not None or np.abs(x).max() < 0.999:
                break
            spectrum *= 0.5
            x = device.record(spectrum, rng)
    return _to_out_rate(x), labels, chain


def write_wav_pcm16(path: str, x: np.ndarray, sr: int = OUT_SR) -> None:
    """Mono 16-bit PCM WAV: the store's own resolution, so preparing it loses nothing and copies no more bytes."""
    data = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * 2, 2, 16)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data"
                + struct.pack("<I", len(data)) + data)


# ----------------------------------------------------------------------------------------------------------------
# The corpus.

def clip_splits(manifest: Manifest) -> list[str]:
    """The split of every clip index: ``train_clips`` training clips, then ``validation_clips`` validation ones."""
    g = manifest.generator
    return [manifest.train_split] * g["train_clips"] + [manifest.validation_split] * g["validation_clips"]


def filename(index: int, split: str) -> str:
    return f"audio/{split}-{index:05d}.wav"


def _render_chunk(args) -> list[tuple[str, str, str, str]]:
    """Render and write clips ``start:stop``; returns meta rows (filename, labels, split, chain)."""
    manifest_name, seed, out, start, stop = args
    manifest = load_manifest(manifest_name)
    splits = clip_splits(manifest)
    rows = []
    for i in range(start, stop):
        wave, labels, chain = render_clip(manifest, seed, i)
        name = filename(i, splits[i])
        write_wav_pcm16(str(Path(out) / name), wave)
        rows.append((name, ";".join(labels), splits[i], chain))
    return rows


def _check(manifest: Manifest) -> None:
    unknown = sorted(set(manifest.classes) - set(EVENT_SYNTH))
    if unknown:
        raise ManifestError(f"{manifest.path}: classes without an event synthesizer: {unknown}; known: "
                            f"{', '.join(EVENT_CLASSES)}")
    if manifest.layout != "clips" or not manifest.multilabel:
        raise ManifestError(f"{manifest.path}: an events corpus is a multi-label 'clips' layout")


def _identity(manifest_name: str, seed: int) -> dict:
    """What determines the generated bytes: manifest, its generator settings and classes (labels are drawn by
    index), the benchmark devices the pool avoids, seed, generator version."""
    manifest = load_manifest(manifest_name)
    avoided = load_manifest(manifest.generator["avoid_devices_of"]).generator
    settings = json.dumps({"generator": manifest.generator, "classes": manifest.classes, "avoided": avoided},
                          sort_keys=True)
    return {"manifest": manifest_name, "corpus": "events", "seed": seed, "generator_version": GENERATOR_VERSION,
            "generator_settings": hashlib.sha256(settings.encode()).hexdigest()}


def is_complete(out: Path, manifest_name: str, seed: int) -> bool:
    marker = Path(out) / MARKER
    return marker.exists() and json.loads(marker.read_text()) == _identity(manifest_name, seed)


def generate_events(manifest_name: str, seed: int, out: Path, workers: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the corpus to ``out`` (via a ``.partial`` folder renamed at the end, so no half corpus is left).
    ``progress(clips done, clips)``."""
    manifest = load_manifest(manifest_name)
    _check(manifest)
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "audio").mkdir(parents=True)
    n = len(clip_splits(manifest))
    chunk = int(manifest.generator["chunk"])
    tasks = [(manifest_name, seed, str(tmp), s, min(s + chunk, n)) for s in range(0, n, chunk)]
    chain_pool(manifest_name, seed)  # built once here; forked workers inherit it
    workers = min(workers or min(len(os.sched_getaffinity(0)), 4), len(tasks))
    rows: list[tuple] = []

    def collect(result):
        rows.extend(result)
        if progress:
            progress(len(rows), n)
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for r in pool.imap_unordered(_render_chunk, tasks):
                collect(r)
    else:
        for t in tasks:
            collect(_render_chunk(t))
    meta = pd.DataFrame(rows, columns=["filename", "labels", "split", "chain"])
    meta.sort_values("filename", kind="stable").to_csv(tmp / (manifest.meta_file or "meta.csv"), sep="\t",
                                                        index=False)
    (tmp / MARKER).write_text(json.dumps(_identity(manifest_name, seed), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
