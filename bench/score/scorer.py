"""Score a submission on a prepared dataset: accuracy, official complexity, INT8, energy -> one leaderboard row.

Our trained systems and third-party submissions go through this same code. The test split is only ever predicted
on; INT8 calibration uses validation clips carved from the training split.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from bench.data.loaders import ClipDataset, make_loader
from bench.data.manifest import Manifest
from bench.data.splits import carve_validation
from bench.data.store import Store
from bench.score.complexity import ComplexityError, DeviceModel, SubmissionComplexity, count_devices
from bench.score.energy import EnergyError, analytic_energy, measure_energy
from bench.score.fp16 import fp16_arithmetic
from bench.score.leaderboard import DEPLOY_DTYPES
from bench.score.metrics import Scores, macro_accuracy, score_predictions
from bench.score.predictions import ClipPredictions
from bench.score.quantize import QuantizationError, int8_size_bytes
from bench.models import create_model
from bench.submission import OFFICIAL_DEVICES, Deployment, ModelSubmission, Submission, SubmissionError

Progress = Callable[[str, int, int], None]


@dataclass
class ScoreOptions:
    batch_size: int = 64
    n_boot: int = 1000
    int8: bool = True
    calib_batches: int = 4
    energy: bool = True
    energy_clips: int = 256
    seed: int = 0


@dataclass
class ScoreResult:
    """Everything measured for one submission; ``row`` holds the leaderboard columns."""

    row: dict
    scores: Scores | None = None
    complexity: SubmissionComplexity | None = None
    logits: np.ndarray | None = None
    int8_scores: Scores | None = None
    extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    phase_s: dict[str, float] = field(default_factory=dict)  # wall seconds of each scoring phase, in order


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``phases[name]``: where a score's time goes (scoring benchmark)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - start


def align_classes(logits: np.ndarray, class_order: Sequence[str], classes: Sequence[str], who: str) -> np.ndarray:
    """Reorder logit columns from the submission's class order to the dataset's (matched by name)."""
    unknown = sorted(set(class_order) - set(classes))
    missing = sorted(set(classes) - set(class_order))
    if unknown or missing or len(class_order) != len(classes):
        raise SubmissionError(f"{who}: class order {list(class_order)} does not match the dataset's classes "
                              f"(unknown: {unknown}, missing: {missing})")
    if logits.shape[1] != len(class_order):
        raise SubmissionError(f"{who}: logits have {logits.shape[1]} columns for {len(class_order)} classes")
    return logits[:, [list(class_order).index(c) for c in classes]]


def check_logits(logits: np.ndarray, clips: pd.DataFrame, who: str) -> None:
    """NaN/inf logits or a wrong number of predictions: a clear error naming the submission and devices."""
    if len(logits) != len(clips):
        raise SubmissionError(f"{who}: {len(logits)} predictions for {len(clips)} clips")
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        devs = sorted(set(clips["device"].to_numpy()[bad]))
        raise SubmissionError(f"{who}: {int(bad.sum())} clip(s) with NaN or infinite logits on device(s) {devs}, "
                              f"e.g. {clips['filename'].to_numpy()[bad][0]}")


class InputCache:
    """Model inputs of a split, kept for submissions that share a front-end (a system's general model, its device
    models and their INT8 conversion): the mel spectrogram is the costliest part of CPU scoring. Kept only while
    they fit in ``budget_bytes``."""

    def __init__(self, budget_bytes: int = 1_500_000_000):
        self.budget = budget_bytes
        self.entries: dict[tuple, list[torch.Tensor]] = {}

    def get(self, key: tuple | None) -> list[torch.Tensor] | None:
        return self.entries.get(key) if key is not None else None

    def put(self, key: tuple | None, batches: list[torch.Tensor]) -> None:
        used = sum(t.numel() * t.element_size() for b in self.entries.values() for t in b)
        size = sum(t.numel() * t.element_size() for t in batches)
        if key is not None and used + size <= self.budget:
            self.entries[key] = batches


def predict_clips(sub: Submission, store: Store, clips: pd.DataFrame, batch_size: int,
                  progress: Progress | None = None, label: str = "predict",
                  cache: InputCache | None = None) -> np.ndarray:
    """Logits for ``clips`` (store rows) in the submission's class order."""
    devices = [str(d) for d in clips["device"].to_numpy()]
    key = None
    if cache is not None and sub.input_key() is not None:
        rows = hashlib.sha1(clips["row"].to_numpy().tobytes()).hexdigest()
        key = (sub.input_key(), store.fingerprint, rows, batch_size)
    cached = cache.get(key) if cache is not None else None
    inputs: list[torch.Tensor] = []
    out, done = [], 0
    loader = make_loader(ClipDataset(store, clips, []), batch_size, shuffle=False) if cached is None else cached
    for i, batch in enumerate(loader):
        lo = i * batch_size
        ids = devices[lo:lo + (len(batch) if cached is not None else len(batch["wave"]))]
        x = batch if cached is not None else sub.load_inputs(batch["wave"], ids)
        if cached is None and key is not None:
            inputs.append(x)
        out.append(sub.predict_inputs(x, ids).numpy())
        done += len(ids)
        if progress:
            progress(label, done, len(clips))
    if cached is None and key is not None:
        cache.put(key, inputs)
    return np.concatenate(out) if out else np.zeros((0, len(sub.class_order)), dtype=np.float32)


def official_complexity(sub: Submission, devices: Sequence[str] = OFFICIAL_DEVICES) -> SubmissionComplexity:
    """Count each device model as the official check does: input shape from ``load_inputs`` on a 1-s dummy clip."""
    dummy = 0.01 * torch.randn(1, sub.sample_rate, generator=torch.Generator().manual_seed(0))
    models = {}
    for dev in devices:
        shape = tuple(sub.load_inputs(dummy, [dev]).shape)
        models[dev] = DeviceModel(sub.counted_model_for_device(dev), shape, sub.deploy_dtype(dev))
    try:
        return count_devices(models)
    except ComplexityError as exc:
        raise SubmissionError(f"{sub.name}: {exc}") from exc


def calibration_clips(store: Store, manifest: Manifest, validation: dict | None) -> pd.DataFrame | None:
    """The validation clips the run itself used (its recorded split and locations), so a re-score calibrates INT8
    exactly as the run did; for a submission without that record, the default carve."""
    split = (validation or {}).get("split", manifest.train_split)
    if split not in store.info["splits"]:
        return None
    train = store.split(split)
    if validation and validation.get("locations"):
        return train[train["identifier"].isin(validation["locations"])]
    return carve_validation(train, (validation or {}).get("fraction", 0.1))[1]


def calibration_features(sub: Submission, store: Store, clips: pd.DataFrame, rng: np.random.Generator,
                         n: int, batch_size: int) -> list[torch.Tensor]:
    """Features of up to ``n`` clips drawn from ``clips`` (validation clips, never test), in batches."""
    n = min(len(clips), n)
    pick = clips.iloc[np.sort(rng.choice(len(clips), size=n, replace=False))]
    waves = torch.from_numpy(store.waveforms(pick["row"].to_numpy()))
    return list(torch.split(sub.load_inputs(waves, pick["device"].tolist()), batch_size))


def quantize_submission(sub: ModelSubmission, store: Store, calib: pd.DataFrame,
                        options: ScoreOptions) -> ModelSubmission:
    """Static INT8 of every float deployment of ``sub``, each device model calibrated on its own devices'
    validation clips when there is a batch of them, otherwise (and for the general model) on all of them.
    Deployments that are INT8 already are kept as they are."""
    rng = np.random.default_rng(options.seed)
    n = options.calib_batches * options.batch_size
    all_feats = calibration_features(sub, store, calib, rng, n, options.batch_size)

    def convert(device: str, dep: Deployment) -> Deployment:
        if dep.form.startswith("int8"):
            return dep
        own = calib[calib["device"].isin(sub.devices_of(dep))]
        feats = calibration_features(sub, store, own, rng, n, options.batch_size) \
            if len(own) >= options.batch_size else all_feats
        model = create_model(dep.arch, **dep.arch_config)  # holding the deployed values (fp16 ones, upcast)
        model.net.load_state_dict({k: v.float() if v.is_floating_point() else v
                                   for k, v in dep.net.state_dict().items()})
        return Deployment.ptq(model, feats)

    return sub.converted(f"{sub.name} (int8)", convert)


def score_submission(sub: Submission, store: Store, manifest: Manifest, split: str,
                     calib: pd.DataFrame | None = None, options: ScoreOptions | None = None,
                     progress: Progress | None = None, cache: InputCache | None = None) -> ScoreResult:
    """Predict the split, compute metrics, count complexity, quantize and measure energy."""
    options = options or ScoreOptions()
    cache = cache if cache is not None else InputCache()
    clips = store.split(split)
    if (clips["label"] < 0).any():
        raise SubmissionError(f"split {split!r} has no labels; use `bench score --outputs` to write predictions")
    start, phases = time.perf_counter(), {}
    with timed(phases, "test prediction"):
        logits = align_classes(predict_clips(sub, store, clips, options.batch_size, progress, cache=cache),
                               sub.class_order, manifest.classes, sub.name)
    predict_s = phases["test prediction"]
    check_logits(logits, clips, sub.name)
    with timed(phases, "metrics and intervals"):
        scores, predictions = evaluate(clips, logits, manifest, options.n_boot, options.seed)
    with timed(phases, "official complexity count"):
        complexity = official_complexity(sub)
    row = {
        "dataset": manifest.name, "dataset_fingerprint": store.fingerprint, "split": split,
        **metric_columns(scores, predictions), **complexity_columns(complexity), **dtype_columns(complexity),
        "batch_size": options.batch_size, "clips_per_s": len(clips) / max(predict_s, 1e-9),
    }
    if calib is not None and len(calib) and (calib["label"] >= 0).all():
        with timed(phases, "validation prediction"):
            row["val_macro_acc"] = validation_macro_accuracy(sub, store, manifest, calib, options, cache)
    result = ScoreResult(row, scores, complexity, logits, notes=list(sub.notes), phase_s=phases)
    unreadable = unreadable_clips(store, split)
    if unreadable:
        result.notes.append(unreadable_note(len(clips), split, unreadable))
        result.extra["unreadable"] = unreadable
    if options.int8:
        _score_int8(sub, store, manifest, clips, calib, options, result, progress, cache)
    if options.energy:
        with timed(phases, "energy"):
            _measure_energy(sub, store, clips, options, result)
    row["wall_s_score"] = time.perf_counter() - start
    return result


def validation_macro_accuracy(sub: Submission, store: Store, manifest: Manifest, val: pd.DataFrame,
                              options: ScoreOptions, cache: InputCache | None = None) -> float:
    """Macro accuracy on the validation clips carved from the training split: what model selection and the
    teacher gate may look at (the test split is for scoring only)."""
    logits = align_classes(predict_clips(sub, store, val, options.batch_size, cache=cache), sub.class_order,
                           manifest.classes, sub.name)
    labels = val["label"].to_numpy()
    return macro_accuracy(labels, logits.argmax(1) == labels, len(manifest.classes))


def unreadable_clips(store: Store, split: str) -> list[str]:
    """Clips of ``split`` that could not be decoded when the store was made (left out of every score)."""
    every = store.split(split, include_failed=True)
    return every.loc[~every["ok"], "filename"].tolist()


def unreadable_note(scored: int, split: str, unreadable: list[str]) -> str:
    shown = ", ".join(unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
    return (f"{scored} of {scored + len(unreadable)} {split} clips scored; {len(unreadable)} unreadable: {shown}")


def complexity_columns(complexity: SubmissionComplexity) -> dict:
    """Leaderboard complexity columns from the official per-device counts."""
    per_device = complexity.per_device.values()
    return {
        "max_macs": complexity.max_macs, "max_param_bytes": complexity.max_param_bytes,
        "params": max(r.params for r in per_device),
        "thop_macs": max((r.thop_macs or 0) for r in per_device) or None,
        "dispatcher_macs": max(r.dispatcher_macs for r in per_device),
        "complexity_per_device": {d: {"macs": r.macs, "param_bytes": r.param_bytes, "params": r.params,
                                      "dtype": r.dtype, "input_shape": list(r.input_shape), "status": r.status,
                                      "counter": r.counter, "hidden_params": r.hidden_params}
                                  for d, r in complexity.per_device.items()},
        "compliant": complexity.compliant,
        "compliance_reasons": compliance_reasons(complexity),
        "counters": {**complexity.per_device["a"].counters,
                     "counter": "torchinfo total_mult_adds, fp32 copy, batch 1"},
    }


def dtype_columns(complexity: SubmissionComplexity) -> dict:
    """The deployed parameter dtype (``mixed`` when device models differ), which kernels ran the fp16 ones
    (``bench.score.fp16``) and the analytic energy of the most expensive device model, each device model at its own
    dtype (left empty for dtypes the model cannot price)."""
    dtypes = {r.dtype for r in complexity.per_device.values()}
    out: dict = {"deploy_dtype": next(iter(dtypes)) if len(dtypes) == 1 else "mixed",
                 "fp16_arithmetic": fp16_arithmetic() if "float16" in dtypes else None}
    if out["deploy_dtype"] not in DEPLOY_DTYPES:
        out["deploy_dtype"] = None
    try:
        energies = [analytic_energy(r.macs, r.param_bytes, r.dtype).joules for r in complexity.per_device.values()]
    except (KeyError, ValueError):
        return out
    out["analytic_energy_uj_per_clip"] = max(energies) * 1e6
    return out


def compliance_reasons(complexity: SubmissionComplexity) -> str | None:
    """Each violation once, with the devices it concerns ("all devices" when every device model has it)."""
    by_reason: dict[str, list[str]] = {}
    for dev, report in complexity.per_device.items():
        for reason in report.reasons:
            by_reason.setdefault(reason, []).append(dev)
    parts = [f"{reason} ({'all devices' if len(devs) == len(complexity.per_device) else ', '.join(devs)})"
             for reason, devs in by_reason.items()]
    return "; ".join(parts) or None


def evaluate(clips: pd.DataFrame, logits: np.ndarray, manifest: Manifest, n_boot: int,
             seed: int) -> tuple[Scores, ClipPredictions]:
    """Metrics of ``logits`` (dataset class order) on ``clips`` (store rows), intervals over recording locations,
    and the per-clip predictions the row keeps."""
    locations = clips["identifier"].to_numpy() if "identifier" in clips.columns else None
    scores = score_predictions(clips["label"].to_numpy(), logits, clips["device"].astype(str).to_numpy(),
                               manifest.classes, manifest.roles(), n_boot=n_boot, seed=seed, locations=locations)
    predictions = ClipPredictions.from_logits(logits, clips["label"].to_numpy(), clips["device"].astype(str),
                                              locations if locations is not None else [""] * len(clips),
                                              manifest.classes, clips["filename"].tolist(), manifest.roles())
    return scores, predictions


def metric_columns(scores: Scores, predictions: ClipPredictions | None = None) -> dict:
    g = scores.group_accuracy
    out = {"macro_acc": scores.macro_accuracy, "macro_acc_ci_low": scores.macro_accuracy_ci[0],
           "macro_acc_ci_high": scores.macro_accuracy_ci[1], "overall_acc": scores.accuracy,
           "log_loss": scores.log_loss, "acc_known": g.get("known"), "acc_unseen": g.get("unseen"),
           "acc_real": g.get("real"), "acc_seen": g.get("seen"), "acc_per_device": scores.device_accuracy,
           "acc_per_class": scores.class_accuracy, "confusion": scores.confusion, "n_clips": scores.n_clips,
           "ci_method": scores.ci_method, "intervals": scores.intervals, "n_seeds": 1}
    if predictions is not None:
        out |= {"clips_digest": predictions.digest, "clip_predictions": predictions.to_bytes()}
    return out


def _int8_size(sub: ModelSubmission) -> int:
    return max(int8_size_bytes(dep.net) for dep in sub.unique().values())


def _score_int8(sub, store, manifest, clips, calib, options, result, progress, cache) -> None:
    row = result.row
    if isinstance(sub, ModelSubmission) and all(d.form.startswith("int8") for d in sub.deployments.values()):
        row["int8_macro_acc"] = row["macro_acc"]  # deployed as INT8 already: its own accuracy and artefact size
        row["int8_size_bytes"] = _int8_size(sub)
        return
    if not isinstance(sub, ModelSubmission):
        row["int8_error"] = "not quantized: the submission does not expose its float models"
        return
    if sub.int8_row:
        row["int8_error"] = f"not quantized again: its own INT8 deployment is row {sub.int8_row}"
        return
    if calib is None or len(calib) == 0:
        row["int8_error"] = "not quantized: no validation clips for calibration"
        return
    try:
        with timed(result.phase_s, "INT8 static PTQ of every device model (observe, convert)"):
            q = quantize_submission(sub, store, calib, options)
    except QuantizationError as exc:
        row["int8_error"] = f"not quantizable: {exc}"
        return
    with timed(result.phase_s, "INT8 prediction"):
        logits = align_classes(predict_clips(q, store, clips, options.batch_size, progress, "int8", cache),
                               q.class_order, manifest.classes, q.name)
    check_logits(logits, clips, q.name)
    result.int8_scores, _ = evaluate(clips, logits, manifest, 100, options.seed)
    row["int8_macro_acc"] = result.int8_scores.macro_accuracy
    row["int8_size_bytes"] = _int8_size(q)
    result.extra["int8_submission"] = q


def _measure_energy(sub, store, clips, options, result) -> None:
    subset = clips.iloc[: options.energy_clips]
    waves = torch.from_numpy(store.waveforms(subset["row"].to_numpy()))
    devices = subset["device"].tolist()

    def workload() -> None:
        for i in range(0, len(waves), options.batch_size):
            sub.predict(waves[i:i + options.batch_size], devices[i:i + options.batch_size])

    try:
        energy = measure_energy(workload, len(waves))
    except EnergyError as exc:  # accuracy and complexity stand; the row says why energy is missing
        result.notes.append(f"energy not measured: {exc}")
        return
    result.row["energy_j_per_clip"] = energy.joules_per_clip
    result.row["energy_method"] = energy.method
    result.extra["energy"] = energy
