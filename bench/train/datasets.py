"""What a run's stages train on: the run's dataset split into fit and validation clips, and the other datasets a
stage asks for (the pre-training corpus), generated or packed on demand with a progress display.

Kept apart from ``bench.run`` because stages run this code: the cache records it as a dependency of what they
train (:class:`bench.identity.Recorder`), so editing the run command's own code (its messages, scoring, rows)
keeps every cached stage, teacher and pre-training valid.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bench.data.clips import ClipSet
from bench.data.manifest import Manifest, load_manifest
from bench.data.sources import resolve
from bench.data.splits import carve_validation
from bench.data.store import Store
from bench.train.stages import StageData


def stage_data(store: Store, manifest: Manifest, split: str, val_fraction: float) -> StageData:
    """A dataset's training part and its validation part: the manifest's own ``validation`` split when it has one,
    else locations (or, without locations, clips) carved from ``split`` — never the test split."""
    classes = tuple(manifest.classes)
    devices = tuple(manifest.devices)
    multilabel = manifest.multilabel

    def clips(frame: pd.DataFrame) -> ClipSet:
        return ClipSet(store, frame, classes, devices, multilabel)

    train = store.split(split)
    if manifest.validation_split and manifest.validation_split in store.info["splits"]:
        return StageData(store, manifest, clips(train), clips(store.split(manifest.validation_split)), split)
    fit, val = carve_validation(train, val_fraction, seed=0)
    return StageData(store, manifest, clips(fit), clips(val), split)


PHASES = {"generate": "generating the data", "prepare": "packing the store"}


@contextlib.contextmanager
def data_progress(console: Console, bar: bool) -> Iterator[Callable[[str, int, int], None]]:
    """What generating or packing a dataset inside a run shows: a bar per phase, or (``bar=False``) a line when a
    phase starts and one when it ends, instead of a minute of silence."""
    started: dict[str, float] = {}
    ended: set[str] = set()
    with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not bar) as shown:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            what = PHASES.get(phase, phase)
            if phase not in started:
                started[phase] = time.perf_counter()
                tasks[phase] = shown.add_task(what, total=total)
                if not bar:
                    console.print(f"  {what} …")
            shown.update(tasks[phase], completed=done, total=total)
            if not bar and done >= total and phase not in ended:
                ended.add(phase)
                console.print(f"  {what}: done in {time.perf_counter() - started[phase]:.0f} s")

        yield update


def external_loader(console: Console, progress: bool, profile: str, val_fraction: float) -> Callable[[str], StageData]:
    """``load(arg)``: the dataset a stage names (``events``: the profile's pre-training corpus, or a folder),
    prepared, with its fit/validation parts."""
    def load(arg: str) -> StageData:
        with data_progress(console, progress) as show:
            other = resolve(arg, profile, progress=show).store
        other_manifest = load_manifest(other.info["manifest"])
        return stage_data(other, other_manifest, other_manifest.train_split, val_fraction)

    return load
