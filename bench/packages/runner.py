"""Parent side of package scoring: start the isolated child, watch it, and turn what it returns into a result.

The child (:mod:`bench.packages.worker`) gets file paths and device ids, a wall-clock timeout (the whole process
group is killed when it runs out) and an address-space limit. Whatever goes wrong — timeout, crash, exception,
wrong-length output, NaN logits, unknown class names — becomes a failed result with a one-line reason; metrics are
computed here with the scorer's own functions, so package rows and in-process rows mean the same thing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from bench.data.splits import carve_validation
from bench.data.manifest import Manifest
from bench.data.store import Store
from bench.data.tau import Dataset
from bench.packages.loader import PackageSpec
from bench.paths import PACKAGE_ROOT
from bench.score.complexity import ComplexityReport, SubmissionComplexity
from bench.score.leaderboard import ENERGY_METHODS
from bench.score.metrics import Scores, score_predictions
from bench.score.rows import one_line, submission_row
from bench.score.scorer import (ScoreOptions, ScoreResult, align_classes, check_logits, complexity_columns,
                                dtype_columns, metric_columns)
from bench.submission import SubmissionError

Progress = Callable[[str, int, int], None]
OUT_OF_MEMORY = re.compile(r"MemoryError|can't allocate memory|Cannot allocate memory|bad_alloc", re.IGNORECASE)


@dataclass
class Isolation:
    """Limits of the child process: wall-clock seconds for the whole run, address space in GB (RLIMIT_AS;
    torch itself maps about 3 GB, so stay above 4)."""

    timeout_s: float = 3600.0
    memory_gb: float = 8.0


@dataclass
class PackageData:
    """What a package is scored on: clip tables (filename, device, label, path) and the dataset's identity."""

    manifest: Manifest
    test_split: str
    test: pd.DataFrame
    fingerprint: str | None
    eval: pd.DataFrame | None = None
    calib: pd.DataFrame | None = None

    @property
    def labelled(self) -> bool:
        return bool((self.test["label"] >= 0).all())

    def splits(self) -> dict[str, pd.DataFrame]:
        return {"test": self.test} | ({"eval": self.eval} if self.eval is not None else {})


def _with_paths(dataset: Dataset, clips: pd.DataFrame) -> pd.DataFrame:
    return clips.assign(path=[str(dataset.root / f) for f in clips["filename"]]).reset_index(drop=True)


def package_data(dataset: Dataset, store: Store | None = None, eval_dataset: Dataset | None = None,
                 seed: int = 0) -> PackageData:
    """The test split (and optionally an unlabelled evaluation set) as files on disk, as the official evaluation
    reads them, plus validation clips carved from the training split for INT8 calibration. With the dataset's
    prepared ``store``, clips come from its index (clips that failed to decode are left out, as in-process) and
    rows carry its fingerprint, so package rows compare with rows of our systems; without one (an unlabelled
    evaluation set is only predicted), the dataset's own lists are used and there is no fingerprint."""
    m, clips = dataset.manifest, store or dataset
    calib = None
    if m.train_split in (store.info["splits"] if store else dataset.split_files):
        calib = _with_paths(dataset, carve_validation(clips.split(m.train_split), seed=seed)[1])
    evaluation = None
    if eval_dataset is not None:
        evaluation = _with_paths(eval_dataset, eval_dataset.split(eval_dataset.manifest.test_split))
    return PackageData(m, m.test_split, _with_paths(dataset, clips.split(m.test_split)),
                       store.fingerprint if store else None, evaluation, calib)


@dataclass
class PackageResult:
    """One scored module: its board ``identity``, what was measured (``scored``) or why it failed (``error``);
    ``logits`` are the package's raw logits per split in ``class_order``, from which ``output.csv`` is written.
    ``row()`` is its leaderboard row, made like every other row (:func:`bench.score.rows.submission_row`)."""

    spec: PackageSpec
    identity: dict
    scored: ScoreResult | None = None
    error: str | None = None
    class_order: list[str] = field(default_factory=list)
    logits: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def complexity(self) -> SubmissionComplexity | None:
        return self.scored.complexity if self.scored else None

    @property
    def scores(self) -> Scores | None:
        return self.scored.scores if self.scored else None

    def row(self) -> dict:
        return submission_row(self.identity, self.scored, error=self.error)


# ---- the child -----------------------------------------------------------------------------------------------

@dataclass
class ChildRun:
    """What came back: ``result`` (result.json), ``optional`` (int8/energy .json) and, if the child did not
    finish normally, ``failure`` saying why."""

    result: dict | None
    optional: dict[str, dict]
    failure: str | None


class _Events:
    """Reads the child's event lines; remembers the running stage and forwards progress."""

    def __init__(self, fd: int, progress: Progress | None, label: str):
        self.fd, self.progress, self.label = fd, progress, label
        self.stage, self.done, self.total = "startup", 0, 0
        self.buffer = b""
        self.open = True

    def read(self, wait_s: float) -> None:
        if not self.open:
            time.sleep(wait_s)
            return
        ready, _, _ = select.select([self.fd], [], [], wait_s)
        if not ready:
            return
        chunk = os.read(self.fd, 1 << 16)
        self.open = bool(chunk)
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError, KeyError):  # a garbled line is skipped, never fatal
                self._handle(json.loads(line))

    def _handle(self, event: dict) -> None:
        if event["stage"] != self.stage:
            self.done = self.total = 0
        self.stage = event["stage"]
        self.done, self.total = event.get("done", self.done), event.get("total", self.total)
        if self.progress:
            self.progress(f"{self.label}: {self.stage}", self.done, self.total)

    def where(self) -> str:
        return self.stage + (f" after {self.done}/{self.total} clips" if self.total else "")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_child(job: dict, work: Path, isolation: Isolation, progress: Progress | None = None,
              label: str = "package") -> ChildRun:
    """Run the worker on ``job`` in ``work`` and collect what it wrote, whatever happened to it."""
    job_path = work / "job.json"
    job_path.write_text(json.dumps({**job, "memory_bytes": int(isolation.memory_gb * 2**30)}))
    harness = str(PACKAGE_ROOT.parent)  # the child imports the same bench as this process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [harness, os.environ.get("PYTHONPATH")]))}
    read_fd, write_fd = os.pipe()
    with open(work / "output.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.packages.worker", str(job_path), str(write_fd)],
                                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=work, env=env, start_new_session=True)
    os.close(write_fd)
    events = _Events(read_fd, progress, label)
    deadline = time.monotonic() + isolation.timeout_s
    timed_out = False
    try:
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            events.read(min(left, 0.2))
        while not timed_out and events.open and select.select([read_fd], [], [], 0)[0]:
            events.read(0)  # lines written just before the child exited
    finally:
        _kill_group(proc.pid)  # the child's own children too (data-loader workers, …)
        proc.wait()
        os.close(read_fd)
    result = _read_json(work / "result.json")
    optional = {name: data for name in ("int8", "energy") if (data := _read_json(work / f"{name}.json"))}
    failure = None
    if timed_out:
        failure = f"timeout after {isolation.timeout_s:g} s in {events.where()}"
    elif proc.returncode != 0 and not (result and "error" in result):
        failure = _crash_reason(proc.returncode, events.where(), work / "output.log")
    return ChildRun(result, optional, failure)


def _memory_hint(reason: str, isolation: Isolation) -> str:
    if OUT_OF_MEMORY.search(reason):
        return f"{reason} (memory limit {isolation.memory_gb:g} GB; raise it with --memory-gb)"
    return reason


def _crash_reason(code: int, where: str, log: Path) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's out-of-memory killer?)" if -code == signal.SIGKILL else ""
        return f"crashed in {where}: killed by {name}{hint}"
    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
    return one_line(f"exited with code {code} in {where}" + (f"; last output: {tail[0]}" if tail else ""))


def _read_json(path: Path) -> dict | None:
    """A result file, or None when missing or unreadable (the package runs in the same folder)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---- scoring -------------------------------------------------------------------------------------------------

def _job(spec: PackageSpec, data: PackageData, options: ScoreOptions) -> dict:
    def clips(frame: pd.DataFrame) -> dict:
        return {"files": frame["path"].tolist(), "names": frame["filename"].tolist(),
                "devices": frame["device"].astype(str).tolist()}

    int8 = options.int8 and data.labelled and data.calib is not None and len(data.calib) > 0
    return {"package": spec.name, "index": spec.index, "path": str(spec.path) if spec.path else None,
            "classes": list(data.manifest.classes),
            "splits": {name: clips(frame) for name, frame in data.splits().items()},
            "batch_size": options.batch_size, "seed": options.seed, "threads": torch.get_num_threads(),
            "int8": {**clips(data.calib), "batches": options.calib_batches} if int8 else None,
            "energy": {"clips": options.energy_clips} if options.energy and data.labelled else None}


def score_package(spec: PackageSpec, data: PackageData, options: ScoreOptions | None = None,
                  isolation: Isolation | None = None, progress: Progress | None = None) -> PackageResult:
    """Run one module isolated on the test split (and eval set), then score it like any submission."""
    options, isolation = options or ScoreOptions(), isolation or Isolation()
    start = time.perf_counter()
    identity = {"submission": spec.submission, "system": spec.label, "kind": "package",
                "dataset": data.manifest.name, "dataset_fingerprint": data.fingerprint, "split": data.test_split,
                "batch_size": options.batch_size}
    with tempfile.TemporaryDirectory(prefix="ascbench-package-") as tmp:
        work = Path(tmp)
        run = run_child(_job(spec, data, options), work, isolation, progress, spec.submission)
        error = (run.result or {}).get("error") or (run.failure if not run.result else None)
        if error:
            return PackageResult(spec, identity, error=one_line(_memory_hint(error, isolation)))
        try:
            result = _evaluate(spec, data, run, work, options, identity)
        except SubmissionError as exc:
            return PackageResult(spec, identity, error=one_line(str(exc)))
    result.scored.row["wall_s_score"] = time.perf_counter() - start
    return result


def _evaluate(spec: PackageSpec, data: PackageData, run: ChildRun, work: Path, options: ScoreOptions,
              identity: dict) -> PackageResult:
    """The package's returned logits and complexity, scored with the scorer's own functions."""
    core = run.result
    order = core["class_order"]
    raw = {split: np.load(work / name) for split, name in core["logits"].items()}
    aligned = {}
    for split, clips in data.splits().items():
        aligned[split] = align_classes(raw[split], order, data.manifest.classes, spec.submission)
        check_logits(aligned[split], clips, spec.submission)
    complexity = SubmissionComplexity({dev: ComplexityReport(**{**r, "input_shape": tuple(r["input_shape"])})
                                       for dev, r in core["complexity"].items()})
    notes = [f"official package: predict() on batches of {options.batch_size} files, use_cuda=False"]
    row = {"dataset": identity["dataset"], "dataset_fingerprint": identity["dataset_fingerprint"],
           "split": identity["split"], "batch_size": options.batch_size, **complexity_columns(complexity),
           **dtype_columns(complexity), "clips_per_s": len(data.test) / max(core["predict_s"]["test"], 1e-9)}
    scores = None
    if data.labelled:
        scores = _scores(data, aligned["test"], options.n_boot, options.seed)
        row.update(metric_columns(scores))
        row.update(_int8_columns(spec, data, run, work, order, options, notes))
        row.update(_energy_columns(run, options, notes))
    return PackageResult(spec, identity, ScoreResult(row, scores, complexity, notes=notes), None, order, raw)


def _scores(data: PackageData, logits: np.ndarray, n_boot: int, seed: int) -> Scores:
    return score_predictions(data.test["label"].to_numpy(), logits, data.test["device"].astype(str).to_numpy(),
                             data.manifest.classes, data.manifest.roles(), n_boot=n_boot, seed=seed)


def _int8_columns(spec, data, run, work, order, options, notes) -> dict:
    if not options.int8:
        return {}
    if data.calib is None or len(data.calib) == 0:
        return {"int8_error": "not quantized: no validation clips for calibration"}
    out = run.optional.get("int8") or {"error": f"not finished: {run.failure or 'no result'}"}
    if "error" in out:
        return {"int8_error": one_line(f"not quantized: {out['error']}")}
    logits = align_classes(np.load(work / out["logits"]), order, data.manifest.classes, spec.submission)
    check_logits(logits, data.test, f"{spec.submission} (int8)")
    notes.append("INT8: FX static PTQ of each get_model_for_device() model, calibrated on validation clips, "
                 "applied to load_inputs() outputs")
    return {"int8_macro_acc": _scores(data, logits, 100, options.seed).macro_accuracy,
            "int8_size_bytes": out["size_bytes"]}


def _energy_columns(run: ChildRun, options: ScoreOptions, notes: list[str]) -> dict:
    if not options.energy:
        return {}
    out = run.optional.get("energy") or {"error": f"not finished: {run.failure or 'no result'}"}
    if "error" in out or out["method"] not in ENERGY_METHODS:
        notes.append(one_line(f"energy not measured: {out.get('error') or 'unknown method ' + out['method']}"))
        return {}
    notes.append(f"energy: predict() on {out['n_clips']} clips, {out['repeats']}x (at least 1 s), model loading and "
                 "decoding included")
    return {"energy_j_per_clip": out["joules_per_clip"], "energy_method": out["method"]}
