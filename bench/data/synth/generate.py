"""Plan and write a synthetic dataset in the TAU Urban Acoustic Scenes 2022 Mobile development layout.

Cities hold recording locations; each location is cut into 1-s segments; train and test are split by location;
each segment is recorded in parallel by several device chains (device ``a`` always, the others on a subset in
training and all of them in test). Every location draws from its own seed, so the output is byte-identical for a
seed however the work is spread over processes.

``test_draw`` in the generator section (default 0) re-draws the test split — its locations, their segments and the
devices that appear only in test — from streams of their own, leaving the training split byte-identical: a fresh
test set nobody has looked at, for a benchmark whose generator was tuned on the old one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bench.data.manifest import Manifest, load_manifest
from bench.data.synth import devices as devmod
from bench.data.synth import scenes
from bench.data.synth import dsp
from bench.data.tau import MARKER

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class LocationPlan:
    scene: str
    city_index: int
    city: str
    location_id: int
    split: str                                     # "train" | "test"
    segments: tuple[tuple[str, ...], ...]          # per segment: the devices that record it


def plan(manifest: Manifest, seed: int) -> list[LocationPlan]:
    g = manifest.generator
    cities, n_train, n_test = g["cities"], g["train_locations"], g["test_locations"]
    rng = np.random.default_rng([seed, 1])
    raw = []
    loc_ids = [0] * len(cities)
    for si, scene in enumerate(manifest.classes):
        # training locations in every city; test locations spread over the cities round-robin
        cells = [(ci, "train", g["train_segments"]) for ci in range(len(cities)) for _ in range(n_train)]
        cells += [((si + k) % len(cities), "test", g["test_segments"]) for k in range(n_test)]
        for ci, split, n_seg in cells:
            raw.append((scene, ci, cities[ci], loc_ids[ci], split, n_seg))
            loc_ids[ci] += 1
    # Secondary devices record an exact number of randomly chosen training segments each (split25 proportions).
    train_slots = [(i, s) for i, r in enumerate(raw) if r[4] == "train" for s in range(r[5])]
    extra: dict[tuple[int, int], list[str]] = {}
    for dev in g["secondary_devices"]:
        k = int(round(g["secondary_fraction"] * len(train_slots)))
        for j in rng.choice(len(train_slots), size=k, replace=False):
            extra.setdefault(train_slots[j], []).append(dev)
    plans = []
    for i, (scene, ci, city, loc_id, split, n_seg) in enumerate(raw):
        if split == "test":
            segs = tuple(tuple(g["test_devices"]) for _ in range(n_seg))
        else:
            segs = tuple(("a", *extra.get((i, s), ())) for s in range(n_seg))
        plans.append(LocationPlan(scene, ci, city, loc_id, split, segs))
    return plans


def expected_counts(manifest: Manifest, seed: int = 0) -> dict[str, dict[str, int]]:
    """Clips per split and device implied by the generator section (independent of the seed)."""
    out: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for lp in plan(manifest, seed):
        for devs in lp.segments:
            for d in devs:
                out[lp.split][d] = out[lp.split].get(d, 0) + 1
    return out


def filename(lp: LocationPlan, segment: int, device: str) -> str:
    return f"audio/{lp.scene}-{lp.city}-{lp.location_id}-{segment}-{device}.wav"


def _render_location(args) -> list[tuple[str, str, str, str, str]]:
    """Render and write every recording of one location; returns meta rows (filename, scene, id, device, split)."""
    lp, manifest_name, seed, out = args
    manifest = load_manifest(manifest_name)
    g = manifest.generator
    chains = _chains(manifest, seed)
    si = manifest.classes.index(lp.scene)
    city = scenes.city_style(np.random.default_rng([seed, 2, lp.city_index]))
    draw = _stream(manifest, seed, lp.split)
    rng = np.random.default_rng([*draw, 3, lp.city_index, si, lp.location_id])
    params = scenes.location_params(lp.scene, city, rng, g["overlap"], g["hard_fraction"], g["jitter"])
    rows = []
    for s, devs in enumerate(lp.segments):
        seg_rng = np.random.default_rng([*draw, 4, lp.city_index, si, lp.location_id, s])
        spectrum = scenes.render(params, seg_rng)
        for d in devs:
            name = filename(lp, s, d)
            dsp.write_wav_pcm24(str(Path(out) / name), chains[d].record(spectrum, seg_rng))
            rows.append((name, lp.scene, f"{lp.city}-{lp.location_id}", d, lp.split))
    return rows


def _stream(manifest: Manifest, seed: int, split: str) -> list[int]:
    """The random stream prefix of a split: the seed, plus the test draw for the test split when it is not 0."""
    draw = int(manifest.generator.get("test_draw", 0))
    return [seed, 1000 + draw] if split == "test" and draw else [seed]


_CHAIN_CACHE: dict[tuple[str, int], dict[str, devmod.DeviceChain]] = {}


def _chains(manifest: Manifest, seed: int) -> dict[str, devmod.DeviceChain]:
    """Every device's chain; the devices that only record test clips are drawn from the test split's stream."""
    key = (manifest.name, seed)
    if key not in _CHAIN_CACHE:
        g = manifest.generator
        in_training = ["a", *g["secondary_devices"]]
        test_only = [d for d in g["test_devices"] if d not in in_training]
        _CHAIN_CACHE[key] = {
            **devmod.all_devices([seed], [d for d in g["test_devices"] if d in in_training], g["device_strength"]),
            **devmod.all_devices(_stream(manifest, seed, "test"), test_only, g["device_strength"])}
    return _CHAIN_CACHE[key]


def _write_irs(manifest: Manifest, seed: int, out: Path) -> None:
    ir_dir = out / "micirp"
    ir_dir.mkdir()
    for i in range(manifest.generator["micirp_count"]):
        h = devmod.micirp_like(np.random.default_rng([seed, 5, i]))
        dsp.write_wav_pcm24(str(ir_dir / f"ir{i:02d}.wav"), 0.9 * h / np.abs(h).max())


def _write_tables(manifest: Manifest, rows: list[tuple], out: Path) -> None:
    meta = pd.DataFrame(rows, columns=["filename", "scene_label", "identifier", "source_label", "split"])
    meta = meta.sort_values("filename", kind="stable").reset_index(drop=True)
    tsv = dict(sep="\t", index=False)
    meta.drop(columns="split").to_csv(out / "meta.csv", **tsv)
    train, test = meta[meta.split == "train"], meta[meta.split == "test"]
    train_file = manifest.splits[manifest.train_split].file
    train[["filename"]].to_csv(out / train_file, **tsv)
    test[["filename", "scene_label"]].to_csv(out / manifest.splits[manifest.test_split].file, **tsv)
    setup = out / "evaluation_setup"
    setup.mkdir()
    train[["filename", "scene_label"]].to_csv(setup / "fold1_train.csv", **tsv)
    test[["filename", "scene_label"]].to_csv(setup / "fold1_evaluate.csv", **tsv)
    test[["filename"]].to_csv(setup / "fold1_test.csv", **tsv)


def _identity(manifest_name: str, seed: int) -> dict:
    """What determines the generated bytes: manifest, its generator settings, seed, generator version."""
    settings = json.dumps(load_manifest(manifest_name).generator, sort_keys=True)
    return {"manifest": manifest_name, "seed": seed, "generator_version": GENERATOR_VERSION,
            "generator_settings": hashlib.sha256(settings.encode()).hexdigest()}


def is_complete(out: Path, manifest_name: str, seed: int) -> bool:
    marker = out / MARKER
    return marker.exists() and json.loads(marker.read_text()) == _identity(manifest_name, seed)


def generate(manifest_name: str, seed: int, out: Path, workers: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the dataset to ``out`` (via a ``.partial`` folder renamed at the end, so no half dataset is left)."""
    manifest = load_manifest(manifest_name)
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "audio").mkdir(parents=True)
    plans = plan(manifest, seed)
    tasks = [(lp, manifest_name, seed, str(tmp)) for lp in plans]
    workers = workers or min(len(os.sched_getaffinity(0)), 4)
    rows: list[tuple] = []
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for i, r in enumerate(pool.imap_unordered(_render_location, tasks, chunksize=4)):
                rows.extend(r)
                if progress:
                    progress(i + 1, len(tasks))
    else:
        for i, t in enumerate(tasks):
            rows.extend(_render_location(t))
            if progress:
                progress(i + 1, len(tasks))
    _write_irs(manifest, seed, tmp)
    _write_tables(manifest, rows, tmp)
    (tmp / MARKER).write_text(json.dumps(_identity(manifest_name, seed), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
