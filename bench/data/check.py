"""``bench data check``: validate a dataset folder against its manifest and report every problem at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.data.audio import probe
from bench.data.tau import Dataset, DatasetError, open_dataset


@dataclass(frozen=True)
class Problem:
    kind: str
    where: str
    message: str


def _count_problems(dataset: Dataset, split: str, df: pd.DataFrame) -> list[Problem]:
    spec = dataset.manifest.splits.get(split)
    out = []
    if spec is None:
        return out
    where = str(dataset.split_files[split])
    if spec.rows is not None and len(df) != spec.rows:
        out.append(Problem("row count", where, f"{len(df)} rows, manifest expects {spec.rows}"))
    counts = df["device"].value_counts().to_dict()
    for dev, expected in spec.devices.items():
        if counts.get(dev, 0) != expected:
            out.append(Problem("row count", where, f"device {dev}: {counts.get(dev, 0)} rows, manifest expects "
                                                  f"{expected}"))
    return out


def check_dataset(root: str | Path, manifest: str | None = None, splits_dir: str | Path | None = None,
                  threads: int = 4) -> tuple[Dataset | None, list[Problem]]:
    """All problems found: metadata, splits, counts, location overlap, and every audio file's header."""
    try:
        ds = open_dataset(root, manifest, splits_dir)
    except DatasetError as exc:
        return None, [Problem("dataset", str(root), str(exc))]
    problems = [Problem("device", str(ds.root), p) for p in ds.problems]
    m = ds.manifest
    if m.meta_rows is not None and len(ds.clips) != m.meta_rows:
        problems.append(Problem("row count", str(ds.root / (m.meta_file or "")), f"{len(ds.clips)} rows, manifest "
                                                                                  f"expects {m.meta_rows}"))
    split_rows = {}
    for name in m.splits:
        if name not in ds.split_files:
            if name in (m.train_split, m.test_split):
                problems.append(Problem("split", str(ds.root), f"split file for {name!r} ({m.splits[name].file}) "
                                                               "not found; place it next to the data"))
            continue
        try:
            split_rows[name] = ds.split(name)
        except DatasetError as exc:
            problems.append(Problem("split", str(ds.split_files[name]), str(exc)))
            continue
        problems.extend(_count_problems(ds, name, split_rows[name]))
    train, test = split_rows.get(m.train_split), split_rows.get(m.test_split)
    if train is not None and test is not None and train["identifier"].notna().all():
        shared = sorted(set(train["identifier"]) & set(test["identifier"]))
        if shared:
            problems.append(Problem("leakage", str(ds.root), f"{len(shared)} recording location(s) in both "
                                                             f"{m.train_split} and {m.test_split}, e.g. {shared[0]}"))
    with ThreadPoolExecutor(threads) as pool:
        for issues in pool.map(lambda f: probe(ds.root / f, m.sample_rate, m.audio.get("subtype")), ds.clips["filename"]):
            problems.extend(Problem(i.kind, i.path, i.message) for i in issues)
    return ds, problems
