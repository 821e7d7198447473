"""Readers for the TAU Urban Acoustic Scenes layouts (2022 Mobile development, 2025 Mobile evaluation).

The embedded synthetic benchmark is written in the 2022 layout, so real and synthetic data go through this one
reader. Problems in the metadata (split rows without a file entry, unknown devices or labels) are collected and
reported together rather than failing on the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.data.manifest import UNKNOWN_DEVICE, Manifest, load_manifest
from bench.errors import DatasetError

MARKER = "ascbench_dataset.json"  # written by `bench data synth` next to meta.csv
SPLIT_DIR_CANDIDATES = ("", "split_setup", "splits")


@dataclass
class Dataset:
    """A dataset on disk. ``clips`` has one row per audio file: filename, scene_label, label (-1 if unlabeled),
    identifier (city-location), city, device, role."""

    root: Path
    manifest: Manifest
    clips: pd.DataFrame
    split_files: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    _splits: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    def available_splits(self) -> list[str]:
        return sorted(self.split_files)

    def split(self, name: str) -> pd.DataFrame:
        """Rows of ``clips`` listed in split ``name`` (in the split file's order)."""
        if name not in self._splits:
            if name not in self.split_files:
                raise DatasetError(f"{self.root}: split {name!r} not found (expected {self._split_hint(name)}); "
                                   f"available: {', '.join(self.available_splits()) or 'none'}")
            if self.manifest.layout == "clips":  # one meta file; a column says which part each clip is in
                self._splits[name] = self.clips[self.clips["split"] == name].reset_index(drop=True)
                return self._splits[name]
            listed = read_table(self.split_files[name])
            rows = self.clips.set_index("filename").reindex(listed["filename"])
            missing = rows.index[rows["device"].isna()].tolist()
            if missing:
                raise DatasetError(f"{self.split_files[name]}: {len(missing)} row(s) have no entry in the file list, "
                                   f"e.g. {missing[0]}; use the split files that belong to this dataset")
            self._splits[name] = rows.reset_index()
        return self._splits[name]

    def _split_hint(self, name: str) -> str:
        spec = self.manifest.splits.get(name)
        return spec.file if spec else f"{name}.csv"


def read_table(path: Path) -> pd.DataFrame:
    """TAU metadata files are tab-separated; a comma-separated copy is accepted too."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str)
        if len(df.columns) == 1 and "," in df.columns[0]:
            df = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read as a table ({exc})") from exc
    if "filename" not in df.columns:
        raise DatasetError(f"{path}: no 'filename' column (columns: {list(df.columns)}); expected a TAU split file")
    return df


def detect_manifest(root: Path) -> Manifest:
    marker = root / MARKER
    if marker.exists():
        name = json.loads(marker.read_text())["manifest"]
        local = root / name if str(name).endswith(".json") else None  # a dataset may ship its own manifest
        return load_manifest(local if local is not None and local.exists() else name)
    if (root / "meta.csv").exists():
        return load_manifest("tau22-dev")
    if (root / "evaluation_setup" / "fold1_test.csv").exists():
        return load_manifest("tau25-eval")
    raise DatasetError(f"{root}: not a TAU dataset folder (no meta.csv for the 2022 development layout, no "
                       "evaluation_setup/fold1_test.csv for the 2025 evaluation layout); point --data at the folder "
                       "that holds them")


def _require_values(df: pd.DataFrame, columns: list[str], source: Path) -> None:
    """Empty cells where a value is required: one clear error naming the file, the column and the first row."""
    for column in columns:
        if column in df.columns and df[column].isna().any():
            first = int(df.index[df[column].isna()][0])
            raise DatasetError(f"{source}: column {column!r} is empty in {int(df[column].isna().sum())} row(s), "
                               f"first in line {first + 2} ({df['filename'].iloc[first]!r}); every clip needs one")


def _label_clips(df: pd.DataFrame, manifest: Manifest, problems: list[str], source: Path) -> pd.DataFrame:
    classes = {c: i for i, c in enumerate(manifest.classes)}
    if "scene_label" in df.columns:
        unknown = sorted(set(df["scene_label"].dropna()) - set(classes))
        if unknown:
            raise DatasetError(f"{source}: scene labels not in the manifest's classes: {unknown}")
        df["label"] = df["scene_label"].map(classes).fillna(-1).astype(int)
    else:
        df["scene_label"] = None
        df["label"] = -1
    unknown_dev = sorted(set(df["device"]) - manifest.known_devices())
    if unknown_dev:
        problems.append(f"{source}: unknown device id(s) {unknown_dev} treated as '{UNKNOWN_DEVICE}' "
                        f"(role {manifest.role(UNKNOWN_DEVICE)}); add them to the manifest to give them a role")
    df["role"] = df["device"].map(manifest.role)
    if "identifier" in df.columns:
        df["city"] = df["identifier"].str.split("-").str[0]
    else:
        df["identifier"] = None
        df["city"] = None
    return df


def _read_clips_layout(root: Path, manifest: Manifest, problems: list[str]) -> pd.DataFrame:
    """The generic layout of a non-TAU corpus: ``meta.csv`` (tab-separated) with ``filename``, ``labels`` (names
    separated by ``;``) or ``scene_label``, ``split`` (one of the manifest's splits) and optionally ``identifier``
    and ``device``."""
    meta_path = root / (manifest.meta_file or "meta.csv")
    if not meta_path.exists():
        raise DatasetError(f"{meta_path}: missing; the clips layout needs meta.csv (filename, labels, split)")
    clips = read_table(meta_path)
    label_column = "labels" if manifest.multilabel else "scene_label"
    _require_values(clips, ["filename", "split", *([] if manifest.multilabel else ["scene_label"])], meta_path)
    need = {label_column, "split"} - set(clips.columns)
    if need:
        raise DatasetError(f"{meta_path}: missing column(s) {sorted(need)}; expected filename, {label_column}, split")
    unknown_split = sorted(set(clips["split"]) - set(manifest.splits))
    if unknown_split:
        raise DatasetError(f"{meta_path}: split value(s) {unknown_split} are not the manifest's splits "
                           f"{sorted(manifest.splits)}")
    if "device" not in clips.columns:
        clips["device"] = UNKNOWN_DEVICE
    if manifest.multilabel:
        names = {n for value in clips["labels"].fillna("") for n in value.split(";") if n}
        unknown = sorted(names - set(manifest.classes))
        if unknown:
            raise DatasetError(f"{meta_path}: labels not in the manifest's classes: {unknown[:10]}")
        clips["scene_label"] = None
        clips["label"] = -1
        clips["role"] = clips["device"].map(manifest.role)
        if "identifier" not in clips.columns:
            clips["identifier"] = None
        clips["city"] = None
        return clips
    return _label_clips(clips, manifest, problems, meta_path)


def _find_split_files(root: Path, manifest: Manifest, splits_dir: Path | None) -> dict[str, Path]:
    dirs = [splits_dir] if splits_dir else [root / d for d in SPLIT_DIR_CANDIDATES]
    found = {}
    for name, spec in manifest.splits.items():
        candidates = [d / spec.file for d in dirs] + [d / Path(spec.file).name for d in dirs]
        if name == "test":  # the 2022 dev set ships the same list as evaluation_setup/fold1_evaluate.csv
            candidates.append(root / "evaluation_setup" / "fold1_evaluate.csv")
        hit = next((c for c in candidates if c.exists()), None)
        if hit:
            found[name] = hit
    return found


def open_dataset(root: str | Path, manifest: Manifest | str | None = None,
                 splits_dir: str | Path | None = None) -> Dataset:
    """Open a dataset folder in either TAU layout (detected unless ``manifest`` is given)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder; generate one with `bench data synth` or point --data "
                           "at your TAU download")
    manifest = load_manifest(manifest) if isinstance(manifest, str) else (manifest or detect_manifest(root))
    splits_dir = Path(splits_dir).expanduser().resolve() if splits_dir else None
    problems: list[str] = []
    if manifest.layout == "tau22-dev":
        meta_path = root / (manifest.meta_file or "meta.csv")
        if not meta_path.exists():
            raise DatasetError(f"{meta_path}: missing; the 2022 development layout needs meta.csv next to audio/")
        clips = read_table(meta_path)
        need = {"scene_label", "identifier", "source_label"}
        if need - set(clips.columns):
            raise DatasetError(f"{meta_path}: missing column(s) {sorted(need - set(clips.columns))}; expected "
                               "filename, scene_label, identifier, source_label (tab-separated)")
        _require_values(clips, ["filename", "scene_label", "identifier", "source_label"], meta_path)
        clips = clips.rename(columns={"source_label": "device"})[["filename", "scene_label", "identifier", "device"]]
        clips = _label_clips(clips, manifest, problems, meta_path)
    elif manifest.layout == "tau25-eval":
        listing = root / manifest.splits[manifest.test_split].file
        if not listing.exists():
            raise DatasetError(f"{listing}: missing; the 2025 evaluation layout needs it (columns filename, device_id)")
        clips = read_table(listing)
        if "device_id" not in clips.columns:
            raise DatasetError(f"{listing}: no 'device_id' column (columns: {list(clips.columns)})")
        _require_values(clips, ["filename", "device_id"], listing)
        clips = clips.rename(columns={"device_id": "device"})[["filename", "device"]]
        clips = _label_clips(clips, manifest, problems, listing)
    elif manifest.layout == "clips":
        clips = _read_clips_layout(root, manifest, problems)
    else:
        raise DatasetError(f"manifest {manifest.name!r} has layout {manifest.layout!r}, which is not an audio dataset")
    dupes = clips["filename"][clips["filename"].duplicated()]
    if len(dupes):
        raise DatasetError(f"{root}: file list names {len(dupes)} file(s) twice, e.g. {dupes.iloc[0]}")
    if manifest.layout == "clips":
        meta_path = root / (manifest.meta_file or "meta.csv")
        split_files = {name: meta_path for name in manifest.splits if (clips["split"] == name).any()}
        return Dataset(root, manifest, clips.reset_index(drop=True), split_files, problems)
    return Dataset(root, manifest, clips.reset_index(drop=True), _find_split_files(root, manifest, splits_dir), problems)
