"""The child process that runs one official inference module: ``python -m bench.packages.worker JOB FD``.

Package code is untrusted, so it only ever runs here, inside the sandbox (:mod:`bench.packages.sandbox`). The
parent (:mod:`bench.packages.runner`) writes JOB (JSON, read-only here) and reads file descriptor FD, one JSON
object per line: ``{"stage": ...}`` when a stage starts, ``{"stage": ..., "done": n, "total": N}`` after each
``predict`` call, ``{"array": name, "npy": base64}`` for logits and ``{"result": name, "data": {...}}`` for
results — ``result`` (class order, logit arrays, predict seconds, official complexity, or ``error``) once the
required stages are done, then ``int8`` and ``energy`` for the optional stages, so a package that hangs or crashes
there keeps its scores. Package output (prints, tqdm) goes to the child's stdout/stderr, which the parent sends to
a log file, so it can never corrupt the stream. Nothing is written to disk.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import torch

from bench.packages.compat import soundfile_torchaudio
from bench.packages.loader import PackageError, PackageSpec, import_module, missing_dependency, package_dir
from bench.score.rows import one_line
from bench.submission import OFFICIAL_DEVICES, SubmissionError

def describe(exc: BaseException, stage: str, spec: PackageSpec) -> str:
    """The board's one-line reason for an exception raised while ``stage`` ran package code."""
    try:
        folder = package_dir(spec.name, spec.path)
    except PackageError:
        folder = None
    dependency = missing_dependency(exc, spec.name, folder)
    if dependency:
        return dependency
    if isinstance(exc, (PackageError, SubmissionError)):  # the harness's own checks: the message says it all
        return one_line(f"{stage}: {exc}")
    return one_line(f"{stage}: raised {type(exc).__name__}: {exc}")


def predict_kwargs(predict) -> dict:
    """The official evaluation also passes ``use_cuda=``; the harness scores on CPU, so it passes False where
    ``predict`` accepts it (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(predict).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: call it as the README documents it
        return {}
    accepts = any(p.name == "use_cuda" or p.kind is p.VAR_KEYWORD for p in params)
    return {"use_cuda": False} if accepts else {}


def unpack(result, n_files: int) -> tuple[np.ndarray, list[str]]:
    """``predict``'s (list of per-file logits, class_order) as a ``[n_files, n_classes]`` float32 array."""
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise PackageError(f"predict must return (logits, class_order), got {type(result).__name__}")
    logits, order = list(result[0]), [str(c) for c in result[1]]
    if len(logits) != n_files:
        raise PackageError(f"predict returned {len(logits)} logits for {n_files} files")
    rows = [torch.as_tensor(x).detach().float().cpu().reshape(-1) for x in logits]
    sizes = sorted({r.numel() for r in rows})
    if len(sizes) > 1:
        raise PackageError(f"predict returned logits of different sizes {sizes}")
    if sizes and sizes[0] != len(order):
        raise PackageError(f"logits have {sizes[0]} entries but class_order names {len(order)} classes")
    return (torch.stack(rows).numpy() if rows else np.zeros((0, len(order)), np.float32)), order


def batch_input(x: torch.Tensor) -> torch.Tensor:
    """One file's model input with a batch dimension of 1 (``load_inputs`` usually returns it that way)."""
    x = torch.as_tensor(x)
    return x if x.ndim > 1 and x.shape[0] == 1 else x.unsqueeze(0)


class Session:
    """Runs the job's stages in order; ``stage`` names the one running, for events and failure reasons."""

    def __init__(self, job: dict, events):
        self.job, self.events = job, events
        self.spec = PackageSpec(job["package"], job["index"], Path(job["path"]) if job["path"] else None)
        self.stage = "startup"
        self.api: ModuleType | None = None

    def emit(self, **event) -> None:
        self.events.write(json.dumps(event) + "\n")

    def send_array(self, name: str, values: np.ndarray) -> str:
        buffer = io.BytesIO()
        np.save(buffer, values, allow_pickle=False)
        self.emit(array=name, npy=base64.b64encode(buffer.getvalue()).decode())
        return name

    def send_result(self, name: str, data: dict) -> None:
        self.emit(result=name, data=data)

    def enter(self, stage: str) -> None:
        self.stage = stage
        self.emit(stage=stage)

    def run(self) -> int:
        with soundfile_torchaudio():
            try:
                core = self.core()
            except BaseException as exc:  # whatever the package does (sys.exit included) is its result
                self.send_result("result", {"error": describe(exc, self.stage, self.spec), "stage": self.stage})
                return 1
            self.send_result("result", core)
            for name, step in (("int8", self.int8), ("energy", self.energy)):
                if self.job.get(name):
                    try:
                        out = step()
                    except BaseException as exc:
                        out = {"error": describe(exc, self.stage, self.spec)}
                    self.send_result(name, out)
        return 0

    def core(self) -> dict:
        """Import, predict every split, count complexity: without these there is no result."""
        self.enter("import")
        self.api = import_module(self.spec)
        order, logits, seconds = None, {}, {}
        for split, clips in self.job["splits"].items():
            values, split_order, seconds[split] = self.predict(split, clips)
            if order is not None and split_order != order:
                raise PackageError(f"class order differs between splits: {order} vs {split_order}")
            order = split_order
            logits[split] = self.send_array(split, values)
        self.enter("complexity")
        complexity = package_complexity(self.api)
        return {"class_order": order, "logits": logits, "predict_s": seconds,
                "complexity": {dev: asdict(r) for dev, r in complexity.per_device.items()}}

    def predict(self, split: str, clips: dict) -> tuple[np.ndarray, list[str], float]:
        """The package's own ``predict`` on consecutive batches of files (mixed devices, dataset order)."""
        files, devices = clips["files"], clips["devices"]
        stage = f"predict ({split})"
        self.enter(stage)
        size, kwargs = self.job["batch_size"], predict_kwargs(self.api.predict)
        order, parts, seconds = None, [], 0.0
        for i in range(0, len(files), size):
            start = time.perf_counter()
            result = self.api.predict(files[i:i + size], devices[i:i + size], model_file_path=None, **kwargs)
            seconds += time.perf_counter() - start
            values, batch_order = unpack(result, len(files[i:i + size]))
            if order is not None and batch_order != order:
                raise PackageError(f"predict returned class order {batch_order} after {order}")
            self.check(values, batch_order, clips["names"][i:i + size], devices[i:i + size])
            order = batch_order
            parts.append(values)
            self.emit(stage=stage, done=i + len(values), total=len(files))
        if order is None:
            raise PackageError(f"no files in the {split} split")
        return np.concatenate(parts), order, seconds

    def check(self, values: np.ndarray, order: list[str], names: list[str], devices: list[str]) -> None:
        """Fail at the first bad batch (unknown class names, NaN/inf), with the scorer's own checks and messages."""
        from bench.score.scorer import align_classes, check_logits

        who = self.spec.submission
        aligned = align_classes(values, order, self.job["classes"], who)
        check_logits(aligned, pd.DataFrame({"filename": names, "device": devices}), who)

    def int8(self) -> dict:
        """Static INT8 of each device model, then the test logits through ``load_inputs`` -> quantized model."""
        from bench.score.quantize import int8_size_bytes

        from bench.score.complexity import is_quantized

        self.enter("int8")
        model = self.api.load_model()
        deployed = {dev: self.api.get_model_for_device(model, dev) for dev in set(self.job["splits"]["test"]["devices"])}
        if all(is_quantized(net) for net in deployed.values()):  # INT8 already: never quantized twice
            return {"already_int8": True, "size_bytes": max(int8_size_bytes(net) for net in deployed.values())}
        quantized, group_of = self.quantize(model)
        test, size = self.job["splits"]["test"], self.job["batch_size"]
        out = []
        for i in range(0, len(test["files"]), size):
            devices = test["devices"][i:i + size]
            x = torch.stack(self.features(model, test["files"][i:i + size], devices))
            parts = []
            for key, net in quantized.items():
                idx = [j for j, d in enumerate(devices) if group_of[d] == key]
                if idx:
                    with torch.no_grad():
                        parts.append((idx, net(x[idx]).float()))
            y = torch.empty(len(devices), parts[0][1].shape[1])
            for idx, part in parts:
                y[idx] = part
            out.append(y.numpy())
            self.emit(stage="int8", done=i + len(devices), total=len(test["files"]))
        return {"logits": self.send_array("test-int8", np.concatenate(out)),
                "size_bytes": max(int8_size_bytes(q) for q in quantized.values())}

    def quantize(self, model) -> tuple[dict, dict]:
        """FX static PTQ of every distinct ``get_model_for_device`` model of the test devices, calibrated on
        validation clips of its own devices when there is a batch of them, else on all (as the scorer does).
        Returns {model key: INT8 model} and {device: model key}."""
        from bench.score.quantize import quantize_static

        job, calib = self.job, self.job["int8"]
        size = job["batch_size"]
        nets, group_of = {}, {}
        for dev in sorted(set(job["splits"]["test"]["devices"])):
            net = self.api.get_model_for_device(model, dev)
            nets.setdefault(id(net), net)
            group_of[dev] = id(net)
        calib_devices = np.array(calib["devices"])
        rng = np.random.default_rng(job["seed"])
        picks = {}
        for key in nets:
            own = np.flatnonzero(np.isin(calib_devices, [d for d, k in group_of.items() if k == key]))
            pool = own if len(own) >= size else np.arange(len(calib_devices))
            picks[key] = np.sort(rng.choice(pool, min(len(pool), calib["batches"] * size), replace=False))
        needed = np.unique(np.concatenate(list(picks.values()))).tolist()
        feats = dict(zip(needed, self.features(model, [calib["files"][i] for i in needed],
                                               calib_devices[needed].tolist())))
        quantized = {}
        for key, net in nets.items():
            x = torch.stack([feats[i] for i in picks[key].tolist()])
            quantized[key] = quantize_static(net, list(torch.split(x, size)), x[:1])
        return quantized, group_of

    def features(self, model, files: list[str], devices: list[str]) -> list[torch.Tensor]:
        """float32 model inputs, one ``[...]`` tensor per file (batch dimension removed, for stacking)."""
        inputs = list(self.api.load_inputs(files, devices, model))
        if len(inputs) != len(files):
            raise PackageError(f"load_inputs returned {len(inputs)} inputs for {len(files)} files")
        return [batch_input(x)[0].float() for x in inputs]

    def energy(self) -> dict:
        """Energy per clip of ``predict`` on the first test clips, repeated for at least 1 s (model loading and
        decoding included)."""
        from bench.score.energy import measure_energy

        self.enter("energy")
        test = self.job["splits"]["test"]
        n = min(self.job["energy"]["clips"], len(test["files"]))
        kwargs = predict_kwargs(self.api.predict)
        measured = measure_energy(
            lambda: self.api.predict(test["files"][:n], test["devices"][:n], model_file_path=None, **kwargs), n)
        return asdict(measured)


COUNTED_MODEL_API = "get_counted_model_for_device"  # optional: the float twin of an INT8 device model


def package_complexity(api: ModuleType):
    """The official check (test_complexity.py): ``load_inputs`` on the package's ``resources/dummy.wav`` for
    devices a, b, c, s1 … s10, then each ``get_model_for_device`` model counted at its input's shape. A package
    that deploys INT8 may also define ``get_counted_model_for_device(model, device_id)`` returning the float twin,
    which is then counted at one byte per parameter, as the organisers ask; without it a converted model is counted
    from its quantized graph (``bench.score.complexity``)."""
    from bench.score.complexity import DeviceModel, count_devices, is_quantized

    dummy = Path(api.__file__).resolve().parent / "resources" / "dummy.wav"
    if not dummy.is_file():
        raise PackageError("no resources/dummy.wav in the package; the official complexity check needs one")
    model = api.load_model()
    devices = list(OFFICIAL_DEVICES)
    inputs = list(api.load_inputs([str(dummy)] * len(devices), devices, model))
    if len(inputs) != len(devices):
        raise PackageError(f"load_inputs returned {len(inputs)} inputs for {len(devices)} files")
    twin = getattr(api, COUNTED_MODEL_API, None)
    models = {}
    for dev, x in zip(devices, inputs):
        deployed = api.get_model_for_device(model, dev)
        if callable(twin) and is_quantized(deployed):
            models[dev] = DeviceModel(twin(model, dev), tuple(batch_input(x).shape), "int8")
        else:
            models[dev] = DeviceModel(deployed, tuple(batch_input(x).shape))
    return count_devices(models)


def main(argv: list[str]) -> int:
    job_path, fd = Path(argv[1]), int(argv[2])
    job = json.loads(job_path.read_text())
    torch.set_num_threads(job["threads"])  # the harness's, so clips/s and the board's `threads` column agree
    if job["memory_bytes"]:
        resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
    with os.fdopen(fd, "w", buffering=1) as events:
        return Session(job, events).run()


if __name__ == "__main__":
    status = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # everything was sent: skip the interpreter's teardown (~1 s with torch loaded)
