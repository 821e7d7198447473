"""Reading one clip the way every loader in the harness does: soundfile decode, mono, 32 kHz, exactly 1 s.

Anything that is not already a clean 1-s mono clip at the dataset's declared rate is converted *and reported*:
each :class:`AudioIssue` names the file, what was wrong and what was done, so a caller can count and show them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

TARGET_SR = 32_000
CLIP_SAMPLES = TARGET_SR  # 1 s


@dataclass(frozen=True)
class AudioIssue:
    """A problem found in one file. ``fatal`` issues mean the clip could not be used at all."""

    path: str
    kind: str  # missing | unreadable | truncated | non_finite | bit_depth | channels | sample_rate | length
    message: str
    fatal: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class AudioReadError(Exception):
    def __init__(self, issue: AudioIssue):
        super().__init__(str(issue))
        self.issue = issue


def wav_declared_data_bytes(path: Path) -> tuple[int, int] | None:
    """(declared size of the RIFF ``data`` chunk, its offset) or None if this is not a parsable RIFF/WAVE file.

    libsndfile silently returns fewer frames for a truncated file; comparing the declared size with the bytes on
    disk is how truncation is detected.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                return size, f.tell()
            f.seek(size + (size & 1), 1)


FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the only WAV sample formats that can hold NaN or infinity


def _non_finite(path: Path) -> AudioIssue:
    return AudioIssue(str(path), "non_finite", "contains NaN or infinite samples (a float WAV); fix or remove the "
                                               "file — it is never turned into silence", True)


def probe(path: Path, expected_sr: int, subtype: str | None = None) -> list[AudioIssue]:
    """Header-only checks (cheap enough for 230k files): readable, not truncated, the sample format the manifest
    declares (``subtype``, e.g. PCM_24), mono, rate, 1 s — plus, for float WAVs only, finite samples."""
    p = str(path)
    if not path.exists():
        return [AudioIssue(p, "missing", "file missing; re-download it or remove its row from the metadata", True)]
    try:
        info = sf.info(p)
    except Exception as exc:  # libsndfile raises its own error types
        return [AudioIssue(p, "unreadable", f"cannot be decoded ({exc}); re-download or remove the file", True)]
    issues = []
    declared = wav_declared_data_bytes(path) if p.lower().endswith(".wav") else None
    if declared is not None:
        size, offset = declared
        actual = path.stat().st_size - offset
        if actual < size:
            return [AudioIssue(p, "truncated", f"truncated: header declares {size} data bytes, file holds {actual}; "
                                               "re-download the file", True)]
    if info.subtype in FLOAT_SUBTYPES:
        data, _ = sf.read(p, dtype="float32", always_2d=True)
        if not np.isfinite(data).all():
            return [_non_finite(path)]
    if subtype and info.subtype != subtype:
        issues.append(AudioIssue(p, "bit_depth", f"{info.subtype_info} ({info.subtype}) instead of the declared "
                                                 f"{subtype}; decoded as it is, at its own resolution"))
    if info.channels != 1:
        issues.append(AudioIssue(p, "channels", f"{info.channels} channels; converted to mono by averaging"))
    if info.samplerate != expected_sr:
        issues.append(AudioIssue(p, "sample_rate", f"{info.samplerate} Hz instead of {expected_sr} Hz; resampled"))
    if abs(info.frames - info.samplerate) > 1:
        seconds = info.frames / info.samplerate
        issues.append(AudioIssue(p, "length", f"{seconds:.3f} s instead of 1 s; padded with zeros or cropped"))
    return issues


_resamplers: dict[int, torchaudio.transforms.Resample] = {}


def resample(wave: np.ndarray, sr: int) -> np.ndarray:
    """Resample ``[..., T]`` float32 audio to 32 kHz with torchaudio (kernels cached per source rate)."""
    if sr == TARGET_SR:
        return wave
    if sr not in _resamplers:
        _resamplers[sr] = torchaudio.transforms.Resample(sr, TARGET_SR)
    with torch.no_grad():
        return _resamplers[sr](torch.from_numpy(np.ascontiguousarray(wave))).numpy()


def fit_length(wave: np.ndarray, n: int = CLIP_SAMPLES) -> np.ndarray:
    if wave.shape[-1] >= n:
        return wave[..., :n]
    pad = [(0, 0)] * (wave.ndim - 1) + [(0, n - wave.shape[-1])]
    return np.pad(wave, pad)


def decode(path: Path, expected_sr: int, subtype: str | None = None) -> tuple[np.ndarray, int, list[AudioIssue]]:
    """Decode to mono float32 at the file's own rate (length not yet fixed). Raises :class:`AudioReadError`."""
    issues = probe(path, expected_sr, subtype)
    fatal = [i for i in issues if i.fatal]
    if fatal:
        raise AudioReadError(fatal[0])
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise AudioReadError(AudioIssue(str(path), "unreadable", "contains no samples; re-download the file", True))
    if not np.isfinite(data).all():
        raise AudioReadError(_non_finite(path))
    return data.mean(axis=1), sr, issues


def read_clip(path: Path, expected_sr: int) -> tuple[np.ndarray, list[AudioIssue]]:
    """One clip as float32 mono, 32 kHz, exactly 1 s, plus the issues found (non-fatal ones were fixed)."""
    wave, sr, issues = decode(path, expected_sr)
    return fit_length(resample(wave, sr)), issues
