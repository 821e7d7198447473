"""Dataset manifests (``data_manifests/*.json``): classes, device roles, split files and expected row counts.

Device roles (real / seen / unseen) come from here and nowhere else, so a new dataset or a new device is a
manifest edit, not a code change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.paths import MANIFEST_DIR

ROLES = ("real", "seen", "unseen")
UNKNOWN_DEVICE = "unknown"


@dataclass(frozen=True)
class SplitSpec:
    name: str
    file: str
    rows: int | None = None
    devices: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    name: str
    layout: str
    title: str = ""
    classes: tuple[str, ...] = ()
    devices: dict[str, str] = field(default_factory=dict)  # device id -> role
    training_devices: tuple[str, ...] = ()
    reference_device: str = "a"  # the high-quality recorder (DIR augments only its clips)
    meta_file: str | None = None
    meta_rows: int | None = None
    splits: dict[str, SplitSpec] = field(default_factory=dict)
    train_split: str | None = None
    test_split: str | None = None
    validation_split: str | None = None  # a dataset's own validation part (else one is carved from train_split)
    multilabel: bool = False             # clips carry several labels (a pre-training corpus), not one scene
    audio: dict[str, Any] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)
    irs: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    path: Path | None = None

    @property
    def sample_rate(self) -> int:
        return int(self.audio.get("sample_rate", 44_100))

    def role(self, device: str) -> str:
        """Role of a device id; ids the manifest does not know are treated as ``unknown`` (unseen)."""
        return self.devices.get(device, self.devices.get(UNKNOWN_DEVICE, "unseen"))

    def roles(self) -> dict[str, str]:
        return dict(self.devices)

    def known_devices(self) -> set[str]:
        return set(self.devices)


_KEYS = {"name", "layout", "title", "classes", "devices", "training_devices", "reference_device", "meta", "splits",
         "train_split", "test_split", "validation_split", "multilabel", "audio", "generator", "irs", "notes"}


class ManifestError(ValueError):
    pass


def parse_manifest(data: dict[str, Any], path: Path | None = None) -> Manifest:
    where = str(path) if path else "manifest"
    unknown = set(data) - _KEYS
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    for key in ("name", "layout"):
        if key not in data:
            raise ManifestError(f"{where}: missing key {key!r}")
    bad_roles = {d: r for d, r in data.get("devices", {}).items() if r not in ROLES}
    if bad_roles:
        raise ManifestError(f"{where}: device roles must be one of {ROLES}, got {bad_roles}")
    splits = {name: SplitSpec(name, s["file"], s.get("rows"), dict(s.get("devices", {})))
              for name, s in data.get("splits", {}).items()}
    for key in ("train_split", "test_split", "validation_split"):
        if data.get(key) and data[key] not in splits:
            raise ManifestError(f"{where}: {key} {data[key]!r} is not one of the splits {sorted(splits)}")
    meta = data.get("meta") or {}
    return Manifest(
        name=data["name"], layout=data["layout"], title=data.get("title", ""),
        classes=tuple(data.get("classes", ())), devices=dict(data.get("devices", {})),
        training_devices=tuple(data.get("training_devices", ())),
        reference_device=data.get("reference_device", "a"), meta_file=meta.get("file"),
        meta_rows=meta.get("rows"), splits=splits, train_split=data.get("train_split"),
        test_split=data.get("test_split"), validation_split=data.get("validation_split"),
        multilabel=bool(data.get("multilabel", False)), audio=dict(data.get("audio", {})),
        generator=dict(data.get("generator", {})), irs=dict(data.get("irs", {})), notes=data.get("notes", ""),
        path=path)


def manifest_ref(manifest: Manifest) -> str:
    """How to find ``manifest`` again: its name when it ships with ascbench, else its file (a dataset's own)."""
    shipped = MANIFEST_DIR / f"{manifest.name}.json"
    if manifest.path is None or (shipped.exists() and Path(manifest.path).resolve() == shipped.resolve()):
        return manifest.name
    return str(Path(manifest.path).resolve())


def load_manifest(name_or_path: str | Path) -> Manifest:
    """Load ``data_manifests/<name>.json`` or an explicit JSON path (a dataset may carry its own manifest)."""
    path = Path(name_or_path).expanduser()
    if path.suffix != ".json":
        path = MANIFEST_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))
        raise ManifestError(f"no manifest {name_or_path!r} ({path}); known: {', '.join(known)}")
    return parse_manifest(json.loads(path.read_text()), path)
