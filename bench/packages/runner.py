"""Parent side of package scoring: stage the audio, start the sandboxed child, watch it, and turn what it returns
into a result.

The audio is hard-linked (or copied) under neutral names, in a seeded shuffled order, into a fresh folder — the
only data the child (:mod:`bench.packages.worker`, inside :mod:`bench.packages.sandbox`) can see; its logits are put
back in dataset order here. The child has a wall-clock timeout (the sandbox, and every process in it, is killed
when it runs out) and an address-space limit. Whatever goes wrong — timeout, crash, ``os._exit``, a signal,
exception, wrong-length output, NaN logits, unknown class names — becomes a failed result with a one-line reason;
metrics are computed here with the scorer's own functions, so package rows and in-process rows mean the same thing.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import select
import shutil
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
from bench.packages.loader import PackageError, PackageSpec
from bench.packages.sandbox import CLIPS, JOB, Isolation, bwrap_command, require_sandbox
from bench.paths import PACKAGE_ROOT, data_home
from bench.score.complexity import ComplexityReport, SubmissionComplexity
from bench.score.leaderboard import ENERGY_METHODS
from bench.score.metrics import Scores
from bench.score.rows import one_line, submission_row
from bench.score.scorer import (ScoreOptions, ScoreResult, align_classes, check_logits, complexity_columns,
                                dtype_columns, evaluate, metric_columns, unreadable_clips, unreadable_note)
from bench.submission import SubmissionError

Progress = Callable[[str, int, int], None]
OUT_OF_MEMORY = re.compile(r"MemoryError|can't allocate memory|Cannot allocate memory|bad_alloc", re.IGNORECASE)


@dataclass
class PackageData:
    """What a package is scored on: clip tables (filename, device, label, path) and the dataset's identity."""

    manifest: Manifest
    test_split: str
    test: pd.DataFrame
    fingerprint: str | None
    eval: pd.DataFrame | None = None
    calib: pd.DataFrame | None = None
    unreadable: list[str] = field(default_factory=list)  # test clips the store could not decode (left out)

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
                       store.fingerprint if store else None, evaluation, calib,
                       unreadable_clips(store, m.test_split) if store else [])


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
    """What came back over the pipe: ``results`` (``result``, and ``int8``/``energy`` when their stages finished),
    ``arrays`` (logits by name) and, if the child did not finish normally, ``failure`` saying why."""

    results: dict[str, dict]
    arrays: dict[str, np.ndarray]
    failure: str | None

    @property
    def result(self) -> dict | None:
        return self.results.get("result")


class _Events:
    """Reads the child's lines: progress events, arrays and results; remembers the running stage."""

    def __init__(self, fd: int, progress: Progress | None, label: str):
        self.fd, self.progress, self.label = fd, progress, label
        self.stage, self.done, self.total = "startup", 0, 0
        self.buffer = b""
        self.open = True
        self.results: dict[str, dict] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def read(self, wait_s: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], wait_s)
        if not ready:
            return
        chunk = os.read(self.fd, 1 << 20)
        self.open = bool(chunk)
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:  # a garbled line is skipped, never fatal
            with contextlib.suppress(json.JSONDecodeError, KeyError, ValueError, TypeError):
                self._handle(json.loads(line))

    def _handle(self, event: dict) -> None:
        if "result" in event:
            self.results[str(event["result"])] = dict(event["data"])
            return
        if "array" in event:
            array = np.load(io.BytesIO(base64.b64decode(event["npy"])), allow_pickle=False)
            self.arrays[str(event["array"])] = np.asarray(array, dtype=np.float32)
            return
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


def run_child(job: dict, staging: Path, isolation: Isolation, package_folder: Path | None = None,
              progress: Progress | None = None, label: str = "package") -> ChildRun:
    """Run the worker on ``job`` (clips staged in ``staging/clips``) — in the sandbox unless ``isolation`` says
    otherwise — and collect what it sent, whatever happened to it."""
    job = {**job, "memory_bytes": int(isolation.memory_gb * 2**30), "threads": torch.get_num_threads()}
    inside = CLIPS if isolation.sandbox else str(staging / "clips")
    job_path = staging / "job.json"
    job_path.write_text(json.dumps(_relocate(job, inside)))
    harness = str(PACKAGE_ROOT.parent)  # the child imports the same bench as this process
    threads = {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]} if "OMP_NUM_THREADS" in os.environ else {}
    read_fd, write_fd = os.pipe()
    if isolation.sandbox:
        require_sandbox()
        command = bwrap_command([sys.executable, "-m", "bench.packages.worker", JOB, str(write_fd)],
                                staging / "clips", job_path, package_folder, {"PYTHONPATH": harness, **threads})
        env, cwd = None, None
    else:
        command = [sys.executable, "-m", "bench.packages.worker", str(job_path), str(write_fd)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [harness, os.environ.get("PYTHONPATH")]))}
        cwd = staging
    log_path = staging / "output.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
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
            if events.open:
                events.read(min(left, 0.2))
            else:  # everything was sent: wait for the exit itself, not for the next poll
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(min(left, 0.2))
        while not timed_out and events.open and select.select([read_fd], [], [], 0)[0]:
            events.read(0)  # lines written just before the child exited
    finally:
        _kill_group(proc.pid)  # the child's own children too (data-loader workers, …)
        proc.wait()
        os.close(read_fd)
    result = events.results.get("result")
    failure = None
    if timed_out:
        failure = f"timeout after {isolation.timeout_s:g} s in {events.where()}"
    elif proc.returncode != 0 and not (result and "error" in result):
        failure = _crash_reason(proc.returncode, events.where(), log_path)
    elif result is None:
        failure = (f"exited (code {proc.returncode}) in {events.where()} without returning a result "
                   "(os._exit or a crash of the interpreter)")
    return ChildRun(events.results, events.arrays, failure)


def _relocate(job: dict, clips: str) -> dict:
    """The job with its staged clip names turned into paths where the child sees them."""
    def paths(part: dict | None) -> dict | None:
        return None if part is None else {**part, "files": [f"{clips}/{name}" for name in part["files"]]}

    return {**job, "splits": {k: paths(v) for k, v in job["splits"].items()}, "int8": paths(job.get("int8"))}


def _memory_hint(reason: str, isolation: Isolation) -> str:
    if OUT_OF_MEMORY.search(reason):
        return f"{reason} (memory limit {isolation.memory_gb:g} GB; raise it with --memory-gb)"
    return reason


def _crash_reason(code: int, where: str, log: Path) -> str:
    """Why the child died: a signal (negative code; or 128 + signal, as bwrap reports a sandboxed process's
    death), or an exit code with the last line it printed."""
    if 128 < code < 128 + signal.NSIG:
        code = 128 - code
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's out-of-memory killer?)" if -code == signal.SIGKILL else ""
        return f"crashed in {where}: killed by {name}{hint}"
    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
    return one_line(f"exited with code {code} in {where}" + (f"; last output: {tail[0]}" if tail else ""))


# ---- scoring -------------------------------------------------------------------------------------------------

@dataclass
class Staged:
    """The clips as the package sees them: the job (neutral names, shuffled order) and, per part, the order it
    was given in (``order[i]`` = the dataset row of the i-th clip it saw)."""

    job: dict
    order: dict[str, np.ndarray]
    copied: int

    def restore(self, part: str, values: np.ndarray) -> np.ndarray:
        """Per-clip results back in dataset order."""
        out = np.empty_like(values)
        out[self.order[part]] = values
        return out


def _link(source: Path, dest: Path) -> bool:
    """Hard-link, or copy across file systems; True when it had to copy."""
    try:
        os.link(source, dest)
        return False
    except OSError:
        shutil.copyfile(source, dest)
        return True


def stage(spec: PackageSpec, data: PackageData, options: ScoreOptions, folder: Path) -> Staged:
    """Put every clip the package must see into ``folder/clips`` as ``000000.wav`` … in a shuffled order seeded by
    ``options.seed`` (dataset order can give scenes away: TAU's lists are sorted by file name)."""
    (folder / "clips").mkdir(parents=True)
    rng = np.random.default_rng(options.seed)
    int8 = options.int8 and data.labelled and data.calib is not None and len(data.calib) > 0
    parts = {**data.splits(), **({"calib": data.calib} if int8 else {})}
    order, described, copied, n = {}, {}, 0, 0
    for part, frame in parts.items():
        order[part] = rng.permutation(len(frame))
        names = []
        for row in order[part]:
            source = Path(frame["path"].iloc[row])
            name = f"{n:06d}{source.suffix.lower()}"
            copied += _link(source, folder / "clips" / name)
            names.append(name)
            n += 1
        described[part] = {"files": names, "names": names,
                           "devices": frame["device"].astype(str).to_numpy()[order[part]].tolist()}
    calib = described.pop("calib", None)
    job = {"package": spec.name, "index": spec.index, "path": str(spec.path) if spec.path else None,
           "classes": list(data.manifest.classes), "splits": described, "batch_size": options.batch_size,
           "seed": options.seed, "int8": {**calib, "batches": options.calib_batches} if calib else None,
           "energy": {"clips": options.energy_clips} if options.energy and data.labelled else None}
    return Staged(job, order, copied)


def score_package(spec: PackageSpec, data: PackageData, options: ScoreOptions | None = None,
                  isolation: Isolation | None = None, progress: Progress | None = None) -> PackageResult:
    """Run one module in the sandbox on the test split (and eval set), then score it like any submission."""
    options, isolation = options or ScoreOptions(), isolation or Isolation()
    start = time.perf_counter()
    identity = {"submission": spec.submission, "system": spec.label, "kind": "package",
                "dataset": data.manifest.name, "dataset_fingerprint": data.fingerprint, "split": data.test_split,
                "batch_size": options.batch_size, "isolation": isolation.describe()}
    (data_home() / "sandbox").mkdir(parents=True, exist_ok=True)  # beside the datasets: hard links, not copies
    with tempfile.TemporaryDirectory(prefix="package-", dir=data_home() / "sandbox") as tmp:
        staged = stage(spec, data, options, Path(tmp))
        run = run_child(staged.job, Path(tmp), isolation, spec.source, progress, spec.submission)
        error = (run.result or {}).get("error") or (run.failure if not run.result else None)
        if error:
            return PackageResult(spec, identity, error=one_line(_memory_hint(error, isolation)))
        try:
            result = _evaluate(spec, data, run, staged, options, identity)
        except (SubmissionError, KeyError, TypeError, ValueError) as exc:  # a malformed result is the package's
            return PackageResult(spec, identity, error=one_line(f"returned an unusable result: {exc}"))
    if staged.copied:
        result.scored.notes.append(f"{staged.copied} clips copied into the sandbox (another file system)")
    result.scored.row["wall_s_score"] = time.perf_counter() - start
    return result


def _complexity(result: dict) -> SubmissionComplexity:
    return SubmissionComplexity({dev: ComplexityReport(**{**r, "input_shape": tuple(r["input_shape"])})
                                 for dev, r in result["complexity"].items()})


def check_package(spec: PackageSpec, isolation: Isolation | None = None) -> SubmissionComplexity:
    """The official complexity check of one module, run in the sandbox (``bench check --package``); a failure is a
    ``PackageError`` with the one-line reason."""
    isolation = isolation or Isolation()
    (data_home() / "sandbox").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="check-", dir=data_home() / "sandbox") as tmp:
        (Path(tmp) / "clips").mkdir()
        job = {"package": spec.name, "index": spec.index, "path": str(spec.path) if spec.path else None,
               "classes": [], "splits": {}, "batch_size": 64, "seed": 0, "int8": None, "energy": None}
        run = run_child(job, Path(tmp), isolation, spec.source, label=spec.submission)
    error = (run.result or {}).get("error") or (run.failure if not run.result else None)
    if error:
        raise PackageError(one_line(_memory_hint(error, isolation)))
    return _complexity(run.result)


def _evaluate(spec: PackageSpec, data: PackageData, run: ChildRun, staged: Staged, options: ScoreOptions,
              identity: dict) -> PackageResult:
    """The package's returned logits (put back in dataset order) and complexity, scored with the scorer's own
    functions."""
    core = run.result
    order = [str(c) for c in core["class_order"]]
    raw = {split: staged.restore(split, run.arrays[name]) for split, name in core["logits"].items()}
    aligned = {}
    for split, clips in data.splits().items():
        aligned[split] = align_classes(raw[split], order, data.manifest.classes, spec.submission)
        check_logits(aligned[split], clips, spec.submission)
    complexity = _complexity(core)
    notes = [f"official package: predict() on batches of {options.batch_size} files, use_cuda=False"]
    if data.unreadable:
        notes.append(unreadable_note(len(data.test), data.test_split, data.unreadable))
    row = {"dataset": identity["dataset"], "dataset_fingerprint": identity["dataset_fingerprint"],
           "split": identity["split"], "batch_size": options.batch_size, **complexity_columns(complexity),
           **dtype_columns(complexity), "clips_per_s": len(data.test) / max(core["predict_s"]["test"], 1e-9)}
    scores = None
    if data.labelled:
        scores, predictions = evaluate(data.test, aligned["test"], data.manifest, options.n_boot, options.seed)
        row.update(metric_columns(scores, predictions))
        row.update(_int8_columns(spec, data, run, staged, order, options, notes, scores))
        row.update(_energy_columns(run, options, notes))
    return PackageResult(spec, identity, ScoreResult(row, scores, complexity, notes=notes), None, order, raw)


def _int8_columns(spec, data, run, staged, order, options, notes, scores) -> dict:
    if not options.int8:
        return {}
    if data.calib is None or len(data.calib) == 0:
        return {"int8_error": "not quantized: no validation clips for calibration"}
    out = run.results.get("int8") or {"error": f"not finished: {run.failure or 'no result'}"}
    if "error" in out:
        return {"int8_error": one_line(f"not quantized: {out['error']}")}
    if out.get("already_int8"):  # deployed as INT8: its own accuracy, never quantized a second time
        notes.append("INT8: the package's device models are INT8 already; scored as delivered")
        return {"int8_macro_acc": scores.macro_accuracy, "int8_size_bytes": out["size_bytes"]}
    logits = align_classes(staged.restore("test", run.arrays[out["logits"]]), order, data.manifest.classes,
                           spec.submission)
    check_logits(logits, data.test, f"{spec.submission} (int8)")
    notes.append("INT8: FX static PTQ of each get_model_for_device() model, calibrated on validation clips, "
                 "applied to load_inputs() outputs")
    return {"int8_macro_acc": evaluate(data.test, logits, data.manifest, 100, options.seed)[0].macro_accuracy,
            "int8_size_bytes": out["size_bytes"]}


def _energy_columns(run: ChildRun, options: ScoreOptions, notes: list[str]) -> dict:
    if not options.energy:
        return {}
    out = run.results.get("energy") or {"error": f"not finished: {run.failure or 'no result'}"}
    if "error" in out or out["method"] not in ENERGY_METHODS:
        notes.append(one_line(f"energy not measured: {out.get('error') or 'unknown method ' + out['method']}"))
        return {}
    notes.append(f"energy: predict() on {out['n_clips']} clips, {out['repeats']}x (at least 1 s), model loading and "
                 "decoding included")
    return {"energy_j_per_clip": out["joules_per_clip"], "energy_method": out["method"]}
