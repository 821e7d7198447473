"""Scene renderer: every scene is one point in a shared parameter space (background spectrum, tonal machinery,
transient event rates, room), so locations can be drawn around a scene, nudged by their city, and pulled towards a
confusable scene. That overlap is what keeps a good model well below 100 %.
"""

from __future__ import annotations

import numpy as np

from bench.data.synth import dsp
from bench.data.synth.dsp import N, SR

FREQS = np.fft.rfftfreq(N, 1.0 / SR)

# Parameter kinds decide how they are jittered and interpolated: "log" (frequencies, rates, times: geometric),
# "lin" (dB levels, tilts, depths: arithmetic).
KIND = {
    "bg_tilt": "lin", "bg_low": "lin", "bump_f": "log", "bump_g": "lin", "bump2_f": "log", "bump2_g": "lin",
    "am_rate": "log", "am_depth": "lin",
    "engine_f0": "log", "engine_lvl": "lin", "engine_glide": "lin",
    "whine_f0": "log", "whine_lvl": "lin", "whine_glide": "lin", "music_lvl": "lin",
    "voice": "log", "step": "log", "chirp": "log", "car": "log", "beep": "log", "clack": "log", "rustle": "log",
    "roll": "log", "squeal": "log", "horn": "log", "ev_lvl": "lin",
    "rt60": "log", "wet": "lin", "loud": "lin",
}
EVENTS = ("voice", "step", "chirp", "car", "beep", "clack", "rustle", "roll", "squeal", "horn")
EVENT_LEVEL_DB = {"voice": -4, "step": -6, "chirp": -8, "car": 2, "beep": -7, "clack": -3, "rustle": -9,
                  "roll": -7, "squeal": -9, "horn": -4}
OFF = -60.0  # level of an absent tonal source
_Z = 0.02    # rate of an absent event type (keeps log-interpolation finite)

_DEFAULTS = dict(bg_tilt=-3.0, bg_low=0.0, bump_f=300.0, bump_g=0.0, bump2_f=1500.0, bump2_g=0.0, am_rate=0.3,
                 am_depth=0.1, engine_f0=60.0, engine_lvl=OFF, engine_glide=0.0, whine_f0=500.0, whine_lvl=OFF,
                 whine_glide=0.0, music_lvl=OFF, **{e: _Z for e in EVENTS}, ev_lvl=0.0, rt60=0.5, wet=-10.0,
                 loud=-30.0)


def _scene(**kw) -> dict[str, float]:
    unknown = set(kw) - set(_DEFAULTS)
    assert not unknown, unknown
    return {**_DEFAULTS, **kw}


# Scene prototypes (alphabetical = the TAU class order).
PROTOTYPES: dict[str, dict[str, float]] = {
    "airport": _scene(bg_tilt=-3.5, bg_low=3, bump_f=250, bump_g=6, bump2_f=2500, bump2_g=2, whine_f0=3200,
                      whine_lvl=-14, voice=6, step=2, beep=0.4, roll=1.5, rt60=2.0, wet=-3, loud=-30),
    "bus": _scene(bg_tilt=-5, bg_low=9, bump_f=110, bump_g=8, bump2_f=400, bump2_g=5, engine_f0=70, engine_lvl=-3,
                  engine_glide=-0.1, voice=1.5, beep=0.3, clack=0.2, squeal=0.1, car=0.3, horn=0.05, rt60=0.35,
                  wet=-9, loud=-23),
    "metro": _scene(bg_tilt=-5.5, bg_low=10, bump_f=90, bump_g=10, bump2_f=600, bump2_g=4, am_rate=0.5, am_depth=0.25,
                    engine_f0=45, engine_lvl=-6, whine_f0=450, whine_lvl=-6, whine_glide=0.15, voice=1.5, step=0.3,
                    beep=0.2, clack=1.5, squeal=0.5, rt60=0.5, wet=-8, loud=-22),
    "metro_station": _scene(bg_tilt=-4.5, bg_low=6, bump_f=120, bump_g=8, bump2_f=800, bump2_g=2, engine_f0=50,
                            engine_lvl=-10, whine_f0=600, whine_lvl=-14, voice=4, step=4, beep=0.3, clack=0.3,
                            squeal=0.3, rt60=2.2, wet=-2, loud=-28),
    "park": _scene(bg_tilt=-2.0, bg_low=-2, bump_f=3000, bump_g=4, bump2_f=200, bump2_g=-2, voice=0.8, step=0.5,
                   chirp=3, car=0.1, rustle=1.5, rt60=0.15, wet=-15, loud=-38),
    "public_square": _scene(bg_tilt=-3.0, bg_low=1, bump_f=1800, bump_g=3, bump2_f=300, bump2_g=2, voice=3, step=2.5,
                            chirp=0.8, car=0.4, rustle=0.3, roll=0.3, horn=0.05, rt60=0.5, wet=-10, loud=-32),
    "shopping_mall": _scene(bg_tilt=-3.0, bg_low=2, bump_f=300, bump_g=4, bump2_f=1500, bump2_g=3, music_lvl=-6,
                            voice=8, step=3, beep=0.6, roll=0.5, rt60=1.4, wet=-4, loud=-29),
    "street_pedestrian": _scene(bg_tilt=-3.2, bg_low=2, bump_f=1000, bump_g=3, bump2_f=300, bump2_g=2, voice=5,
                                step=4, chirp=0.3, car=0.6, roll=0.4, horn=0.1, rt60=0.6, wet=-9, loud=-30),
    "street_traffic": _scene(bg_tilt=-4.0, bg_low=6, bump_f=150, bump_g=6, bump2_f=900, bump2_g=4, am_rate=0.2,
                             am_depth=0.4, engine_f0=55, engine_lvl=-8, voice=0.5, step=0.5, car=2.5, horn=0.3,
                             squeal=0.05, rt60=0.3, wet=-12, loud=-24),
    "tram": _scene(bg_tilt=-4.5, bg_low=7, bump_f=150, bump_g=6, bump2_f=1200, bump2_g=4, am_rate=0.4, am_depth=0.2,
                   engine_f0=60, engine_lvl=-10, whine_f0=300, whine_lvl=-9, whine_glide=0.1, voice=1.5, step=0.3,
                   beep=0.3, clack=1.0, squeal=0.8, car=0.3, rt60=0.5, wet=-8, loud=-24),
}
SCENES = tuple(PROTOTYPES)

# Which scenes a location of a given scene may drift towards (the confusions TAU is known for).
CONFUSABLE = {
    "airport": ("shopping_mall", "metro_station"), "shopping_mall": ("airport", "metro_station"),
    "metro_station": ("metro", "airport"), "metro": ("tram", "metro_station"), "tram": ("metro", "bus"),
    "bus": ("tram", "street_traffic"), "park": ("public_square",), "public_square": ("street_pedestrian", "park"),
    "street_pedestrian": ("public_square", "street_traffic"), "street_traffic": ("street_pedestrian", "bus"),
}

# Spread of location-level jitter per parameter kind: log-normal sigma for "log", dB/units sigma for "lin".
JITTER = {"log": 0.12, "lin": 1.5}


def mix(p: dict[str, float], q: dict[str, float], m: float) -> dict[str, float]:
    """Interpolate two parameter sets (geometric for log-kind parameters)."""
    out = {}
    for k, kind in KIND.items():
        if kind == "log":
            out[k] = float(np.exp((1 - m) * np.log(p[k]) + m * np.log(q[k])))
        else:
            out[k] = (1 - m) * p[k] + m * q[k]
    return out


def city_style(rng: np.random.Generator) -> dict[str, float]:
    """Per-city offsets: machinery pitch, background tilt, event habits, rooms, loudness."""
    return {"f0_scale": float(rng.uniform(0.85, 1.18)), "tilt": float(rng.normal(0, 0.8)),
            "rt_scale": float(rng.uniform(0.8, 1.25)), "loud": float(rng.normal(0, 2.0)),
            **{f"rate_{e}": float(np.exp(rng.normal(0, 0.25))) for e in EVENTS}}


def location_params(scene: str, city: dict[str, float], rng: np.random.Generator, overlap: float,
                    hard_fraction: float, jitter_scale: float = 1.0) -> dict[str, float]:
    """Parameters of one recording location: scene prototype, pulled towards a confusable scene for a
    ``hard_fraction`` of locations, with the city style and per-location jitter on top."""
    p = dict(PROTOTYPES[scene])
    if rng.random() < hard_fraction:
        other = CONFUSABLE[scene][rng.integers(len(CONFUSABLE[scene]))]
        p = mix(p, PROTOTYPES[other], float(rng.uniform(0.2, overlap)))
    for k in ("engine_f0", "whine_f0"):
        p[k] *= city["f0_scale"]
    p["bg_tilt"] += city["tilt"]
    p["rt60"] *= city["rt_scale"]
    p["loud"] += city["loud"]
    for e in EVENTS:
        p[e] *= city[f"rate_{e}"]
    for k, kind in KIND.items():
        s = JITTER[kind] * jitter_scale
        p[k] = float(p[k] * np.exp(rng.normal(0, s))) if kind == "log" else float(p[k] + rng.normal(0, s))
    p["am_depth"] = float(np.clip(p["am_depth"], 0.0, 0.9))
    p["rt60"] = float(np.clip(p["rt60"], 0.05, 3.0))
    return p


# ----------------------------------------------------------------------------------------------------------------
# Event synthesis: each returns a short waveform with unit peak.

def _env(n: int, attack: float = 0.1) -> np.ndarray:
    a = max(1, int(n * attack))
    e = np.ones(n)
    e[:a] = np.linspace(0, 1, a)
    e[a:] = np.linspace(1, 0, n - a) ** 2
    return e


def _norm(x: np.ndarray) -> np.ndarray:
    return x / (np.abs(x).max() + 1e-9)


def ev_voice(rng, p):
    n = int(rng.uniform(0.12, 0.35) * SR)
    f0 = rng.uniform(90, 260)
    formants = ((rng.uniform(350, 850), 15, 0.35), (rng.uniform(1000, 2300), 12, 0.3), (2800, 8, 0.3))
    table = dsp.wavetable(dsp.harmonic_amps(f0, 40, 0.5, 5000, formants))
    glide = f0 * (1 + rng.uniform(-0.15, 0.15) * np.linspace(0, 1, n))
    return _norm(dsp.oscillate(table, glide, n, rng.random()) * np.hanning(n))


def ev_step(rng, p):
    n = int(0.05 * SR)
    t = np.arange(n) / SR
    x = rng.standard_normal(n) * np.exp(-t / rng.uniform(0.004, 0.012))
    return _norm(dsp.moving_average(x, rng.integers(3, 12)))


def ev_chirp(rng, p):
    n = int(rng.uniform(0.05, 0.15) * SR)
    f1 = rng.uniform(2500, 4500)
    f = f1 * np.exp(np.linspace(0, np.log(rng.uniform(0.7, 1.6)), n))
    table = dsp.wavetable(np.array([1.0, 0.3]))
    return _norm(dsp.oscillate(table, f, n) * np.sin(np.linspace(0, np.pi, n)))


def ev_car(rng, p):
    n = int(rng.uniform(0.8, 1.5) * SR)
    t = np.linspace(-1, 1, n)
    env = np.exp(-0.5 * (t / 0.35) ** 2)
    noise = np.cumsum(rng.standard_normal(n))
    noise = noise - dsp.moving_average(noise, 200)
    f0 = rng.uniform(30, 60) * (1 + 0.05 * -np.tanh(3 * t))
    engine = dsp.oscillate(dsp.wavetable(dsp.harmonic_amps(45, 20, 0.8, 1500)), f0, n)
    return _norm((_norm(noise) + 0.5 * engine) * env)


def ev_beep(rng, p):
    n = int(rng.uniform(0.1, 0.4) * SR)
    f = np.where(np.arange(n) < n // 2, rng.uniform(500, 2500), rng.uniform(500, 2500)) if rng.random() < 0.5 \
        else rng.uniform(500, 2500)
    return _norm(dsp.oscillate(dsp.wavetable(np.array([1.0, 0.2, 0.1])), f, n) * _env(n, 0.02))


def ev_clack(rng, p):
    n = int(0.12 * SR)
    t = np.arange(n) / SR
    x = np.zeros(n)
    fc = rng.uniform(800, 2000)
    for onset in (0, int(rng.uniform(0.03, 0.06) * SR)):
        tt = t[: n - onset]
        x[onset:] += np.sin(2 * np.pi * fc * tt) * np.exp(-tt / 0.01) + 0.5 * rng.standard_normal(n - onset) * \
            np.exp(-tt / 0.003)
    return _norm(x)


def ev_rustle(rng, p):
    n = int(rng.uniform(0.2, 0.6) * SR)
    return _norm(np.diff(rng.standard_normal(n + 1)) * np.hanning(n))


def ev_roll(rng, p):
    n = int(rng.uniform(0.3, 0.8) * SR)
    t = np.arange(n) / SR
    am = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(20, 40) * t))
    return _norm(dsp.moving_average(rng.standard_normal(n), 6) * am * np.hanning(n))


def ev_squeal(rng, p):
    n = int(rng.uniform(0.3, 1.0) * SR)
    t = np.arange(n) / SR
    f = rng.uniform(2000, 5000) * (1 + 0.01 * np.sin(2 * np.pi * 6 * t))
    return _norm(dsp.oscillate(dsp.wavetable(np.array([1.0, 0.4, 0.2])), f, n) * np.hanning(n))


def ev_horn(rng, p):
    n = int(rng.uniform(0.2, 0.6) * SR)
    f = rng.uniform(350, 450)
    table = dsp.wavetable(dsp.harmonic_amps(f, 12, 0.6, 5000))
    return _norm((dsp.oscillate(table, f, n) + dsp.oscillate(table, f * 1.26, n)) * _env(n, 0.03))


EVENT_SYNTH = {"voice": ev_voice, "step": ev_step, "chirp": ev_chirp, "car": ev_car, "beep": ev_beep,
               "clack": ev_clack, "rustle": ev_rustle, "roll": ev_roll, "squeal": ev_squeal, "horn": ev_horn}


# ----------------------------------------------------------------------------------------------------------------

def _tone(rng, f0, level_db, glide, n_harm, rolloff, limit):
    if level_db <= OFF + 1:
        return np.zeros(N)
    f = f0 * (1 + glide * np.linspace(0, 1, N)) * (1 + 0.003 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * np.arange(N) / SR))
    table = dsp.wavetable(dsp.harmonic_amps(f0, n_harm, rolloff, limit))
    return dsp.db(level_db) * dsp.oscillate(table, f, N, rng.random())


def _music(rng, level_db):
    if level_db <= OFF + 1:
        return np.zeros(N)
    out = np.zeros(N)
    root = 220 * 2 ** (rng.integers(0, 12) / 12)
    half = N // 2
    for start in (0, half):
        for semis in (0, rng.choice([3, 4]), 7):
            f = root * 2 ** ((semis + rng.choice([0, 5, 7])) / 12)
            table = dsp.wavetable(dsp.harmonic_amps(f, 8, 1.2, 6000))
            seg = dsp.oscillate(table, f, N - start if start else half, rng.random())
            out[start:start + len(seg)] += seg * _env(len(seg), 0.05)
    return dsp.db(level_db) * out / 3


def room_ir(rng: np.random.Generator, rt60: float) -> np.ndarray:
    n = int(min(rt60 * 1.2, 1.0) * SR)
    t = np.arange(n) / SR
    h = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    return h / np.sqrt(np.sum(h * h))


def render(p: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """One clean 1-s segment of a location, returned as its rfft over 2N samples including the reverb tail.

    Recording devices filter in that domain; their responses are causal, so the tail past 1 s never reaches the
    recorded second, and every device of a parallel recording shares this one spectrum.
    """
    bells = ((p["bump_f"], p["bump_g"], 0.8), (p["bump2_f"], p["bump2_g"], 0.6), (80.0, p["bg_low"], 1.2))
    bg = dsp.shaped_noise(rng, dsp.band_db(FREQS, p["bg_tilt"], bells, hp=20.0))
    t = np.arange(N) / SR
    bg *= 1 + p["am_depth"] * np.sin(2 * np.pi * p["am_rate"] * t + rng.uniform(0, 2 * np.pi))
    bg /= dsp.rms(bg)

    fg = _tone(rng, p["engine_f0"], p["engine_lvl"], p["engine_glide"], 30, 0.7, 2000)
    fg += _tone(rng, p["whine_f0"], p["whine_lvl"], p["whine_glide"], 4, 1.0, 8000)
    fg += _music(rng, p["music_lvl"])
    for name in EVENTS:
        for _ in range(rng.poisson(p[name])):
            ev = EVENT_SYNTH[name](rng, p) * dsp.db(EVENT_LEVEL_DB[name] + p["ev_lvl"] + rng.normal(0, 3))
            onset = int(rng.integers(-len(ev) // 2, N))
            a, b = max(onset, 0), min(onset + len(ev), N)
            if b > a:
                fg[a:b] += ev[a - onset:b - onset]
    fg_spec = np.fft.rfft(fg, 2 * N)
    wet = fg_spec * np.fft.rfft(room_ir(rng, p["rt60"]), 2 * N) * dsp.db(p["wet"])
    dry = bg + fg
    energy = np.sum(dry * dry) + 2.0 * np.sum(np.abs(wet) ** 2) / (2 * N)  # Parseval for the reverb part
    gain = dsp.db(p["loud"] + rng.normal(0, 1.0)) / np.sqrt(energy / N + 1e-20)
    return (np.fft.rfft(bg, 2 * N) + fg_spec + wet) * gain
