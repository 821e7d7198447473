"""The packed audio store: every clip of a dataset decoded once to 32 kHz int16 in one memory-mapped file.

Decoding and resampling 44.1 kHz 24-bit WAVs each epoch is what makes the public baselines slow; after
``bench data prepare`` all training and scoring loaders read rows of ``audio.i16`` instead. Preparation works in
chunks and records each finished chunk, so an interrupted run resumes where it stopped.

Integrity: ``store.json`` keeps the SHA-256 of the index (clip list, labels, devices, splits) and the digest of
every audio chunk. The index is checked each time a store is opened; the audio whenever ``audio.i16`` was touched
since it was last verified (its size, modification and change times: a write always moves the change time). A store
that no longer matches is never used: ``prepare`` rebuilds it, opening it directly fails with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bench.data.audio import CLIP_SAMPLES, TARGET_SR, AudioIssue, AudioReadError, decode, fit_length, resample
from bench.data.manifest import manifest_ref
from bench.data.tau import Dataset, DatasetError, open_dataset
from bench.errors import StoreError
from bench.paths import data_home

STORE_VERSION = 2  # 2: checksums of the index and the audio chunks
CHUNK = 256


def default_store_dir(dataset: Dataset) -> Path:
    digest = hashlib.sha1(str(dataset.root).encode()).hexdigest()[:10]
    return data_home() / "stores" / f"{dataset.name}-{digest}"


def source_state(dataset: Dataset, filenames: list[str], splits: list[str]) -> str:
    """Whether the files on disk changed since the store was made: names, sizes, modification times, split files.
    (Cheap to check; the content fingerprint is computed from the decoded audio while preparing.)"""
    h = hashlib.sha256(f"{dataset.name}\n".encode())
    for name in filenames:
        path = dataset.root / name
        st = path.stat() if path.exists() else None
        h.update(f"{name}\t{st.st_size if st else -1}\t{st.st_mtime_ns if st else -1}\n".encode())
    for split in sorted(splits):
        h.update(split.encode() + dataset.split_files[split].read_bytes())
    return h.hexdigest()


def content_fingerprint(name: str, index: pd.DataFrame, chunk_digests: list[str], splits: list[str]) -> str:
    """Identity of the data: the decoded 32 kHz audio, the labels, devices and split memberships. The same data
    copied to another machine has the same fingerprint."""
    h = hashlib.sha256(name.encode())
    labels = ["labels"] if "labels" in index.columns else []  # multi-label corpora
    cols = ["filename", "scene_label", *labels, "identifier", "device", "ok", *[f"in_{s}" for s in sorted(splits)]]
    h.update(index[cols].to_csv(index=False).encode())
    for d in chunk_digests:
        h.update(d.encode())
    return h.hexdigest()


class StoreIntegrityError(StoreError):
    """The store's files no longer match the checksums recorded when it was made."""


@dataclass
class PrepareReport:
    store: "Store"
    converted: dict[str, int]            # issue kind -> count of clips fixed on the way in
    failed: list[AudioIssue]             # clips that could not be decoded (stored as silence, flagged)
    resumed_chunks: int
    reused: bool
    rebuilt: str | None = None           # why an existing store was thrown away and made again


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stat_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _write_info(info_path: Path, info: dict) -> None:
    tmp = info_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, info_path)


def _records(progress_path: Path) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if progress_path.exists():
        for line in progress_path.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[rec["chunk"]] = rec
            except (json.JSONDecodeError, KeyError):
                break  # a torn last line from an interrupted write: that chunk is simply redone
    return done


def _reserve(path: Path, size: int, store_dir: Path) -> None:
    """Allocate the audio file's blocks now, so a full disk is a clear error here and not a bus error (SIGBUS)
    when the memory-mapped writes find no space later."""
    free = shutil.disk_usage(store_dir).free
    try:
        with open(path, "ab") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise StoreError(f"{path}: not enough disk space for the store: it needs {size:,} bytes, "
                             f"{free:,} are free on that disk; free some space or put the store on another disk "
                             "with --store DIR") from None
        raise


def _decode_one(root: Path, name: str, expected_sr: int, subtype: str | None):
    try:
        wave, sr, issues = decode(root / name, expected_sr, subtype)
        return wave, sr, issues
    except AudioReadError as exc:
        return None, 0, [exc.issue]


def _decode_chunk(pool: ThreadPoolExecutor, root: Path, names: list[str], expected_sr: int, subtype: str | None):
    """Decode a chunk (threads: soundfile releases the GIL), resample per source rate in one batched call."""
    results = list(pool.map(lambda n: _decode_one(root, n, expected_sr, subtype), names))
    out = np.zeros((len(names), CLIP_SAMPLES), dtype=np.float32)
    issues: list[AudioIssue] = []
    by_rate: dict[tuple[int, int], list[int]] = {}
    for i, (wave, sr, iss) in enumerate(results):
        issues.extend(iss)
        if wave is not None:
            by_rate.setdefault((sr, len(wave)), []).append(i)
    for (sr, _), idx in by_rate.items():
        batch = np.stack([results[i][0] for i in idx])
        out[idx] = fit_length(resample(batch, sr))
    ok = np.array([r[0] is not None for r in results])
    return out, issues, ok


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def prepare(root: str | Path, splits: list[str] | None = None, store_dir: Path | None = None,
            manifest: str | None = None, splits_dir: str | Path | None = None, threads: int = 2,
            progress: Callable[[int, int], None] | None = None) -> PrepareReport:
    """Convert the clips of ``splits`` (default: the manifest's train and test splits) into a store."""
    dataset = open_dataset(root, manifest, splits_dir)
    if splits is None:
        m = dataset.manifest
        splits = [s for s in (m.train_split, m.validation_split, m.test_split) if s]
    missing = [s for s in splits if s not in dataset.split_files]
    if missing:
        raise DatasetError(f"{dataset.root}: split file(s) for {missing} not found; place "
                           f"{', '.join(dataset.manifest.splits[s].file for s in missing if s in dataset.manifest.splits) or 'them'} "
                           "next to the data or pass --splits-dir")
    members = {s: dataset.split(s)["filename"].tolist() for s in splits}
    filenames = sorted(set().union(*members.values()))
    store_dir = Path(store_dir) if store_dir else default_store_dir(dataset)
    state = source_state(dataset, filenames, splits)
    store_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(store_dir.with_name(store_dir.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one packer per store: a second process waits, then reuses the store
        return _pack(dataset, members, filenames, splits, store_dir, state, threads, progress)


def _pack(dataset, members: dict[str, list[str]], filenames: list[str], splits: list[str], store_dir: Path,
          state: str, threads: int, progress: Callable[[int, int], None] | None) -> PrepareReport:
    """:func:`prepare` under its lock: reuse a complete store of the same source, else (re)pack it, resuming."""
    info_path = store_dir / "store.json"
    rebuilt = None
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("source_state") == state and info.get("complete") and info.get("version") == STORE_VERSION:
            try:
                store = Store(store_dir)
            except StoreIntegrityError as exc:  # tampered or damaged: never used, made again from the source
                rebuilt = str(exc)
                info = {}
            else:
                failed = [AudioIssue(*i) for rec in _records(store_dir / "progress.jsonl").values()
                          for i in rec["issues"] if i[3]]
                return PrepareReport(store, {}, failed, 0, reused=True)
        if rebuilt or info.get("source_state") != state or info.get("version") != STORE_VERSION:
            for f in ("audio.i16", "progress.jsonl", "index.parquet", "store.json"):
                (store_dir / f).unlink(missing_ok=True)
    store_dir.mkdir(parents=True, exist_ok=True)
    n = len(filenames)
    info = {"version": STORE_VERSION, "dataset": dataset.name, "manifest": manifest_ref(dataset.manifest),
            "source": str(dataset.root), "source_state": state, "n": n, "sample_rate": TARGET_SR,
            "samples": CLIP_SAMPLES, "splits": splits, "complete": False}
    try:
        _write_info(info_path, info)
    except OSError as exc:
        raise StoreError(f"{info_path}: cannot be written ({exc.strerror}); check the disk and its free space") from exc
    audio_path = store_dir / "audio.i16"
    size = n * CLIP_SAMPLES * 2
    resuming = audio_path.exists() and audio_path.stat().st_size == size
    if not resuming:
        audio_path.unlink(missing_ok=True)
        (store_dir / "progress.jsonl").unlink(missing_ok=True)
    _reserve(audio_path, size, store_dir)
    audio = np.memmap(audio_path, dtype=np.int16, mode="r+", shape=(n, CLIP_SAMPLES))
    progress_path = store_dir / "progress.jsonl"
    done = _records(progress_path) if resuming else {}
    resumed = len(done)
    chunks = range(0, n, CHUNK)
    with ThreadPoolExecutor(threads) as pool, open(progress_path, "a") as plog:
        for k, start in enumerate(chunks):
            if k not in done:
                names = filenames[start:start + CHUNK]
                waves, issues, ok = _decode_chunk(pool, dataset.root, names, dataset.manifest.sample_rate,
                                                  dataset.manifest.audio.get("subtype"))
                audio[start:start + len(names)] = to_int16(waves)
                audio.flush()
                rec = {"chunk": k, "digest": hashlib.sha1(audio[start:start + len(names)].tobytes()).hexdigest(),
                       "failed": [i for i, v in enumerate(ok) if not v],
                       "issues": [[i.path, i.kind, i.message, i.fatal] for i in issues]}
                plog.write(json.dumps(rec) + "\n")
                plog.flush()
                os.fsync(plog.fileno())
                done[k] = rec
            if progress:
                progress(min(start + CHUNK, n), n)
    del audio
    all_issues = [AudioIssue(*i) for k in sorted(done) for i in done[k]["issues"]]
    failed_rows = {k * CHUNK + i for k, rec in done.items() for i in rec["failed"]}
    index = dataset.clips.set_index("filename").loc[filenames].reset_index()
    index.insert(0, "row", np.arange(n))
    index["ok"] = ~index["row"].isin(failed_rows)
    for s, names in members.items():
        index[f"in_{s}"] = index["filename"].isin(set(names))
    try:
        index.to_parquet(store_dir / "index.parquet", index=False)
    except OSError as exc:
        raise StoreError(f"{store_dir / 'index.parquet'}: cannot be written ({exc.strerror}); check the disk and "
                         "its free space") from exc
    converted: dict[str, int] = {}
    for i in all_issues:
        if not i.fatal:
            converted[i.kind] = converted.get(i.kind, 0) + 1
    digests = [done[k]["digest"] for k in sorted(done)]
    fp = content_fingerprint(dataset.name, index, digests, splits)
    info.update(complete=True, fingerprint=fp, converted=converted, failed=len(failed_rows),
                checksums={"index": _file_sha256(store_dir / "index.parquet"), "chunks": digests, "chunk": CHUNK},
                audio_verified=_stat_stamp(audio_path))
    _write_info(info_path, info)
    return PrepareReport(Store(store_dir), converted, [i for i in all_issues if i.fatal], resumed, reused=False,
                         rebuilt=rebuilt)


class Store:
    """Read side of a prepared store: ``index`` (one row per clip) and ``waveforms(rows)``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "store.json"
        if not info_path.exists():
            raise StoreError(f"{self.root}: no store here; run `bench data prepare DATASET_DIR` first")
        self.info = json.loads(info_path.read_text())
        if not self.info.get("complete"):
            raise StoreError(f"{self.root}: store preparation was interrupted; run `bench data prepare` again to "
                             "resume it")
        checksums = self.info.get("checksums")
        if checksums is None:
            raise StoreIntegrityError(f"{self.root}: made by an older ascbench without checksums; run "
                                      "`bench data prepare` on its dataset to rebuild it")
        if _file_sha256(self.root / "index.parquet") != checksums["index"]:
            raise StoreIntegrityError(f"{self.root / 'index.parquet'}: the clip list or labels changed since the "
                                      "store was made; it is not used — `bench data prepare` rebuilds it")
        self.index = pd.read_parquet(self.root / "index.parquet")
        self.audio = np.memmap(self.root / "audio.i16", dtype=np.int16, mode="r",
                               shape=(self.info["n"], self.info["samples"]))
        if _stat_stamp(self.root / "audio.i16") != self.info.get("audio_verified"):
            self._verify_audio(checksums)

    def _verify_audio(self, checksums: dict) -> None:
        """Re-hash every chunk of the audio; record the file's stamp when it all still matches."""
        chunk = checksums["chunk"]
        bad = [k for k, digest in enumerate(checksums["chunks"])
               if hashlib.sha1(self.audio[k * chunk:(k + 1) * chunk].tobytes()).hexdigest() != digest]
        if bad:
            first = self.index.loc[self.index["row"] == bad[0] * chunk, "filename"].iloc[0]
            raise StoreIntegrityError(f"{self.root / 'audio.i16'}: {len(bad)} of {len(checksums['chunks'])} audio "
                                      f"chunks changed since the store was made (first at {first}); it is not "
                                      "used — `bench data prepare` rebuilds it")
        self.info["audio_verified"] = _stat_stamp(self.root / "audio.i16")
        with contextlib.suppress(OSError):  # a read-only store stays verified for this process only
            _write_info(self.root / "store.json", self.info)

    def __getstate__(self) -> dict:
        """Pickle by path (DDP spawn, data-loader workers): the memmap is reopened, never copied."""
        return {"root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    @property
    def fingerprint(self) -> str:
        return self.info["fingerprint"]

    @property
    def dataset_name(self) -> str:
        return self.info["dataset"]

    @property
    def generator_seed(self) -> int | None:
        """The seed a generated dataset (``bench data synth``) was drawn with, from its marker file; else None."""
        from bench.data.tau import MARKER

        marker = Path(self.info["source"]) / MARKER
        try:
            return json.loads(marker.read_text()).get("seed")
        except (OSError, ValueError):
            return None

    def split(self, name: str, include_failed: bool = False) -> pd.DataFrame:
        col = f"in_{name}"
        if col not in self.index.columns:
            raise StoreError(f"{self.root}: split {name!r} was not prepared (have: {', '.join(self.info['splits'])}); "
                             f"run `bench data prepare --splits {name},...`")
        rows = self.index[self.index[col]]
        return rows if include_failed else rows[rows["ok"]]

    def waveforms(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``[len(rows), 32000]`` in the order given (read in sorted order for locality)."""
        rows = np.asarray(rows)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.audio.shape[1]), dtype=np.float32)
        out[order] = self.audio[rows[order]]
        out *= 1.0 / 32768.0
        return out
