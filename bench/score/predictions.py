"""Per-clip predictions kept with every board row, so that rows can be compared on the same clips, aggregated over
seeds and broken down (per device, per class, confusion per device) without re-running anything.

One row's predictions are a compressed ``.npz`` in the ``clip_predictions`` column (about 25 kB for the 2,160 clips
of the embedded benchmark): the predicted class (exact, ``uint8``), the log-probabilities (``float16``, for
averaging over seeds), and what the statistics need about each clip — its label, device and recording location
(``identifier``; the cluster the interval resamples) and the device's role (real / seen / unseen, from the dataset's
manifest), so that comparisons need nothing but the board. ``clips_digest`` names the clips and their order: two rows
are comparable only when their digests are equal.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bench.score.metrics import log_softmax


class PredictionsError(ValueError):
    """Stored predictions that cannot be read (damaged, or written by an older development version)."""


def clips_digest(filenames: Sequence[str]) -> str:
    """SHA-256 of the scored clips' file names, in scoring order."""
    return hashlib.sha256("\n".join(map(str, filenames)).encode()).hexdigest()


@dataclass
class ClipPredictions:
    """What a row predicted for each clip, with the clips' labels, devices and locations."""

    labels: np.ndarray        # int, class index in the dataset's class order
    pred: np.ndarray          # int, predicted class
    log_probs: np.ndarray     # float, clips x classes (log-softmax)
    devices: np.ndarray       # str
    locations: np.ndarray     # str; "" where the split has no recording locations
    classes: tuple[str, ...]
    digest: str
    device_roles: dict[str, str]

    @classmethod
    def from_logits(cls, logits: np.ndarray, labels, devices, locations, classes: Sequence[str],
                    filenames: Sequence[str], device_roles: Mapping[str, str]) -> "ClipPredictions":
        logits = np.asarray(logits, dtype=np.float64)
        locations = ["" if loc is None or (isinstance(loc, float) and np.isnan(loc)) else str(loc) for loc in locations]
        devices = np.asarray(devices, dtype=str)
        return cls(np.asarray(labels, dtype=np.int64), logits.argmax(axis=1), log_softmax(logits), devices,
                   np.asarray(locations, dtype=str), tuple(classes), clips_digest(filenames),
                   {d: device_roles.get(d, "unseen") for d in sorted(set(devices.tolist()))})

    def role_masks(self) -> dict[str, np.ndarray]:
        """Clips of each device group (``acc_real``, ``acc_seen``, ``acc_unseen``, ``acc_known``) and of each device
        (``device:<id>``)."""
        role = np.array([self.device_roles.get(d, "unseen") for d in self.devices], dtype=object)
        masks = {f"acc_{r}": role == r for r in ("real", "seen", "unseen")}
        masks["acc_known"] = role != "unseen"
        masks.update({f"device:{d}": self.devices == d for d in self.device_roles})
        return masks

    @property
    def has_locations(self) -> bool:
        return bool(len(self.locations)) and all(self.locations)

    @property
    def correct(self) -> np.ndarray:
        return (self.pred == self.labels).astype(np.float64)

    def to_bytes(self) -> bytes:
        device_names, device_idx = np.unique(self.devices, return_inverse=True)
        location_names, location_idx = np.unique(self.locations, return_inverse=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=self.labels.astype(np.uint8), pred=self.pred.astype(np.uint8),
                            log_probs=self.log_probs.astype(np.float16), device_names=device_names,
                            device_idx=device_idx.astype(np.uint16), location_names=location_names,
                            location_idx=location_idx.astype(np.uint16), classes=np.array(self.classes),
                            digest=np.array(self.digest),
                            device_roles=np.array([self.device_roles.get(d, "unseen") for d in device_names]))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ClipPredictions":
        try:
            return cls._from_npz(blob)
        except (KeyError, ValueError, OSError, EOFError) as exc:
            raise PredictionsError(f"per-clip predictions cannot be read ({exc}); re-score the row") from None

    @classmethod
    def _from_npz(cls, blob: bytes) -> "ClipPredictions":
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            return cls(z["labels"].astype(np.int64), z["pred"].astype(np.int64), z["log_probs"].astype(np.float64),
                       z["device_names"][z["device_idx"]], z["location_names"][z["location_idx"]],
                       tuple(z["classes"].tolist()), str(z["digest"]),
                       dict(zip(z["device_names"].tolist(), z["device_roles"].tolist())))

    @classmethod
    def average(cls, members: Sequence["ClipPredictions"]) -> "ClipPredictions":
        """The seed-averaged prediction: the mean of the members' probabilities, per clip."""
        first = members[0]
        if any(m.digest != first.digest for m in members):
            raise ValueError("cannot average predictions made on different clips")
        probs = np.mean([np.exp(m.log_probs) for m in members], axis=0)
        log_probs = np.log(np.clip(probs, 1e-12, None))
        return cls(first.labels, probs.argmax(axis=1), log_probs, first.devices, first.locations, first.classes,
                   first.digest, first.device_roles)

    def confusion(self, device: str | None = None) -> np.ndarray:
        """Confusion counts (true class x predicted class), of all clips or of one device's."""
        keep = np.ones(len(self.labels), bool) if device is None else self.devices == device
        out = np.zeros((len(self.classes), len(self.classes)), dtype=np.int64)
        np.add.at(out, (self.labels[keep], self.pred[keep]), 1)
        return out
