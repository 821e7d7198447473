"""The teacher stage: big models trained by the harness (or loaded from a local checkpoint), and their logits.

A teacher may first be pre-trained on a multi-label corpus (``pretrain``: the embedded sound-event corpus
``events``, the offline stand-in for AudioSet, or any clips-layout folder) with binary cross-entropy; the
checkpoint is cached once per (architecture, options, corpus, recipe) under ``cache/pretrained`` and shared by every
teacher, seed and system that asks for it; its head is dropped before fine-tuning on the scenes. Every teacher's
validation macro accuracy is recorded; the quality gate flags a teacher below ``floor`` and, with
``gate = "exclude"``, leaves it out of the ensemble.

Teachers are trained on the training split only (``fit`` clips; the validation locations stay held out) and
cached in a cache shared by every system (:class:`bench.train.cache.CacheEntry` under ``cache/teachers``), keyed
by the teacher's own config, the data, the seed and the libraries, and reused while the harness code that trained
it is unchanged: a second system asking for the same teacher trains nothing. An entry keeps the weights and the
logits on the un-augmented training clips (fit + validation), which distillation reads. KD targets are the averaged
logits or DS-FlexiNet's learned fusion, fitted on the validation clips only (never on test).
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.config import ConfigError, Key, REQUIRED, Schema, deep_merge, optional, reads, with_defaults
from bench.data.clips import ClipSet
from bench.distill import KD_MODES, DeviceWeights, TeacherFusion, average_logits, kd_loss_from_config
from bench.identity import Recorder, library_versions, note_dependencies
from bench.models import check_model_options, create_model
from bench.models.base import ASCModel
from bench.models.beats import load_beats_checkpoint
from bench.models.passt import load_passt_checkpoint
from bench.models.pretrained import load_pretrained, local_state
from bench.paths import data_home
from bench.score.leaderboard import has_row_of
from bench.score.metrics import macro_accuracy
from bench.submission import ModelSubmission
from bench.train.cache import CacheEntry, EntryBusy, skipping_busy_entries
from bench.train.dafa import DAFA, DAFATask
from bench.train.recipes import AUGMENT, augmentations, make_task
from bench.train.ssl import MaskedPatchTask
from bench.train.stages import StageContext, StageError, budget_columns, external_data
from bench.train.task import OPTIM, ClassifierTask, OptimConfig, binary_cross_entropy, cross_entropy

PRETRAIN = Schema("pretrain", {
    "data": Key(str, "events", "the corpus: `events` (the embedded sound-event corpus of the run's profile) or a "
                "dataset folder with its own classes and validation part"),
    "seed": Key(int, 0, "pre-training seed (not the run's: one checkpoint per architecture, corpus and recipe)"),
    "objective": Key(str, "labels", "what pre-training learns: the corpus labels (binary cross-entropy on its "
                     "multi-hot labels), or masked patches (self-supervised, no labels: bench.train.ssl)",
                     choices=("labels", "masked_patches")),
    "mask_ratio": Key(float, 0.75, "share of the patches masked per clip (objective = masked_patches)"),
    "n_codes": Key(int, 1024, "codebook size of the random-projection tokenizer (objective = masked_patches)"),
    **{k: AUGMENT.keys[k] for k in ("roll_seconds", "fms_p", "fms_alpha", "fms_per_batch", "dir_p", "irs_dir")},
}) | OPTIM
# a pre-training may continue another one (BEATs SSL+SL: the self-supervised model trained on the corpus labels)
PRETRAIN.keys["start"] = Key(dict, None, "start from the weights of this pre-training (a pretrain table of its own, "
                             "cached on its own) instead of from scratch", table=PRETRAIN)

TEACHER = Schema("teacher", {
    "name": Key(str, REQUIRED, "unique name; the cache and the board use it"),
    "model": Key(str, REQUIRED, "registry architecture"),
    "seed": Key(int, 0, "added to the run seed x 1000, so teachers of one run differ"),
    "checkpoint": Key(str, None, "local weights to start from (never downloaded); with epochs = 0 used as is"),
    "model_options": Key(dict, {}, "overrides of the architecture's config"),
    "pretrain": Key(dict, None, "pre-train on a multi-label corpus first (data, seed, epochs, optimizer keys, "
                    "roll/Freq-MixStyle), then fine-tune on the scenes with the head replaced", table=PRETRAIN),
    "pretrained": Key(bool, True, "start from the `pretrain` checkpoint (false: the same teacher from scratch)"),
    "dafa": Key(dict, None, "fine-tune with cross-entropy + Device-Aware Feature Alignment (weight, dcsl, gdal, "
                "projection head; bench.train.dafa) — Jeong & Kim's generalization expert", table=DAFA),
}) | OPTIM | AUGMENT
TEACHER_OVERRIDE = optional(TEACHER, "teacher override")


def _check_teachers(cfg) -> None:
    teachers = cfg.get("teachers") or []
    unknown = sorted(set(cfg.get("per_teacher") or {}) - {t["name"] for t in teachers})
    if unknown:
        raise ConfigError(f"per_teacher names {', '.join(unknown)}, not a teacher of the stage "
                          f"({', '.join(t['name'] for t in teachers)})")
    teachers = [deep_merge(t, (cfg.get("per_teacher") or {}).get(t["name"], {})) for t in teachers]
    names = [t["name"] for t in teachers]
    if len(set(names)) != len(names):
        raise ConfigError(f"teachers: names must be unique, got {names}")
    for t in teachers:
        check_model_options(t["model"], t.get("model_options") or {})
        if t.get("checkpoint") and t.get("pretrain"):
            raise ConfigError(f"teacher {t['name']}: give `checkpoint` (local pre-trained weights) or `pretrain` "
                              "(pre-train here), not both")


GATE = Schema("gate", {
    "floor": Key(float, None, "quality gate: the validation macro accuracy (a fraction) a teacher must reach — "
                 "set it to the un-distilled student's (`val_macro_acc` of its row); none: no floor"),
    "max_class_share": Key(float, None, "quality gate: the largest share of the validation predictions one class may "
                           "take (a collapsed teacher predicts a few classes for everything); none: no check"),
    "gate": Key(str, "flag", "a teacher that fails the gate is flagged on the board, or also left out of the "
                "ensemble", choices=("flag", "exclude")),
})
STAGE_ONLY = ("teachers", "per_teacher", *GATE.keys)  # keys of the stage table that are not every teacher's defaults
SHARED = ("pretrain", "pretrained")  # teacher keys the stage table may set for every teacher

TEACHERS = Schema("teachers", {
    "teachers": Key(list, [], "one table per teacher (name, model, seed, epochs, optimizer and augmentation keys, "
                    "model_options, checkpoint or pretrain); the stage table's other keys are every teacher's "
                    "defaults", table=TEACHER),
    "per_teacher": Key(dict, {}, "changes to teachers by name, merged into their entries table by table (a variant "
                       "that changes one teacher of every profile: { expert = { name = \"expert-dcsl\", dafa = "
                       "{ gdal = 0.0 } } })", table=TEACHER_OVERRIDE, mapping=True),
}, checks=(_check_teachers,)) | GATE | Schema("shared", {k: TEACHER.keys[k] for k in SHARED}) | OPTIM | AUGMENT


def _seed(ctx: StageContext, cfg: dict[str, Any]) -> int:
    return ctx.seed * 1000 + int(cfg["seed"])


def _build(ctx: StageContext, cfg: dict[str, Any]) -> ASCModel:
    torch.manual_seed(_seed(ctx, cfg))
    return create_model(cfg["model"], n_classes=len(ctx.classes), **cfg["model_options"])


def teacher_configs(ctx: StageContext, stage: str) -> list[dict[str, Any]]:
    """Each teacher's full config: the teacher stage's own table (its keys besides ``teachers``) under the
    teacher's entry, then the declared defaults. Shared keys of the system never reach a teacher, so student
    settings never change a teacher's cache key."""
    table = ctx.env.resolved.get(stage, {})
    common = {k: v for k, v in table.items() if k not in STAGE_ONLY}
    changes = table.get("per_teacher") or {}
    where = str(ctx.env.spec.toml_path)
    return [with_defaults(deep_merge({**common, **t}, changes.get(t["name"], {})), TEACHER, where,
                          f"{stage}.teachers[{i}]") for i, t in enumerate(table.get("teachers", []))]


@torch.inference_mode()
def predict_logits(model: ASCModel, clips: ClipSet, batch_size: int = 128) -> torch.Tensor:
    """Logits on un-augmented clips (eval mode)."""
    model.eval()
    rows = clips.rows
    out = [model(torch.from_numpy(clips.store.waveforms(rows[i:i + batch_size]))).float()
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out)


def _load_checkpoint(model: ASCModel, cfg: dict[str, Any]) -> None:
    path = Path(cfg["checkpoint"]).expanduser()
    if not path.exists():
        raise StageError(f"teacher {cfg['name']}: checkpoint {path} not found (the harness never downloads "
                         "weights; put the file there or drop `checkpoint` to train the teacher)")
    if cfg["model"].startswith("passt"):
        load_passt_checkpoint(model, path)
    elif cfg["model"].startswith("beats"):
        load_beats_checkpoint(model, path)
    else:
        model.net.load_state_dict(local_state(path))


def pretrain_recipe(ctx: StageContext, table: dict[str, Any], where: str) -> tuple[dict[str, Any], Any]:
    """(a ``pretrain`` table with its defaults, the corpus it names); a ``start`` recipe is completed the same way."""
    recipe = with_defaults(table, PRETRAIN, str(ctx.env.spec.toml_path), where)
    if recipe["start"] is not None:
        recipe["start"] = pretrain_recipe(ctx, recipe["start"], f"{where}.start")[0]
    return recipe, ctx.env.dataset(recipe["data"])


def _corpus(ctx: StageContext, cfg: dict[str, Any]) -> tuple[dict[str, Any], Any] | None:
    """(the pre-training recipe with its defaults, the corpus) of a teacher that starts from pre-training."""
    if not cfg["pretrain"] or not cfg["pretrained"] or cfg["checkpoint"]:
        return None
    return pretrain_recipe(ctx, cfg["pretrain"], f"teacher {cfg['name']}.pretrain")


def _world(ctx: StageContext) -> dict[str, Any]:
    return {"accelerator": ctx.env.accelerator, "devices": ctx.env.devices, "num_nodes": ctx.env.num_nodes}


def pretrain_entry(ctx: StageContext, cfg: dict[str, Any], recipe: dict[str, Any], corpus) -> CacheEntry:
    """The shared cache entry of one pre-training: architecture and options, recipe, corpus, libraries."""
    static = {"model": cfg["model"], "model_options": cfg["model_options"], "pretrain": recipe,
              "data": corpus.identity(), "libraries": library_versions(), "world": _world(ctx),
              "system_files": ctx.env.spec.files() if "/" in cfg["model"] else None}
    return CacheEntry(data_home() / "cache" / "pretrained", cfg["model"], static)


def _fits_since(ctx: StageContext, start: int, **mark: Any) -> list[dict[str, Any]]:
    """The budget entries of the fits since ``start``, taken off the stage's list and marked (e.g. with a key)."""
    items = [{**item, **mark} for item in ctx.budget[start:]]
    del ctx.budget[start:]
    return items


def pretrained_weights(ctx: StageContext, cfg: dict[str, Any], recipe: dict[str, Any],
                       corpus) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Weights of the architecture ``cfg["model"]`` (with ``cfg["model_options"]``) pre-trained on ``corpus`` —
    on its labels (binary cross-entropy on multi-hot labels) or on masked patches — trained unless the shared cache
    has them, after the ``start`` pre-training it continues, if any; and the pre-trainings' budget entries."""
    entry = pretrain_entry(ctx, cfg, recipe, corpus)
    console = ctx.env.console
    with entry.lock(console):
        hit, reasons = entry.lookup()
        if hit:
            note_dependencies(entry.info["dependencies"])
            cached = entry.info.get("trained_in_run") != ctx.env.run_id  # else a helper process of this run's
            return entry.load_artifacts()["weights"], [{**b, "cached": cached} for b in entry.info["budget"]]
        entry.prepare_work(console)
        start, first = time.perf_counter(), len(ctx.budget)
        budget: list[dict[str, Any]] = []
        with Recorder() as recorder:  # a start inside: this entry depends on the code that trained it too
            if recipe["start"] is not None:
                begin = recipe["start"]
                start_weights, budget = pretrained_weights(ctx, cfg, begin, ctx.env.dataset(begin["data"]))
            console.print(f"    pre-training {cfg['model']} on {corpus.manifest.name} ({recipe['objective']}; "
                          f"{'; '.join(reasons)})")
            torch.manual_seed(recipe["seed"])
            model = create_model(cfg["model"], n_classes=len(corpus.classes), **cfg["model_options"])
            if recipe["start"] is not None:
                load_pretrained(model, start_weights)
            wave, feats = augmentations(ctx, {**AUGMENT.defaults(), **{k: v for k, v in recipe.items()
                                                                        if k in AUGMENT}}, dir_every_clip=True)
            optim = OptimConfig.from_config(recipe)
            if recipe["objective"] == "masked_patches":
                task = MaskedPatchTask(model, optim, recipe["mask_ratio"], recipe["n_codes"], recipe["seed"],
                                       wave, feats)
            else:
                loss = binary_cross_entropy if corpus.manifest.multilabel else cross_entropy
                task = ClassifierTask(model, optim, wave, feats, loss)
            ctx.fit(task, corpus.fit, corpus.val, name=f"pretrain-{cfg['model']}", run_dir=entry.dir / "fit",
                    seed=recipe["seed"])
        budget += _fits_since(ctx, first, key=entry.key, pretrain=True)
        metrics = json.loads((entry.dir / "fit" / "metrics.json").read_text())
        entry.store({"weights": model.state_dict(), "classes": list(corpus.classes)}, recorder,
                    time.perf_counter() - start, budget=budget, val_map=metrics.get("val_map"),
                    val_masked_acc=metrics.get("val_masked_acc"), trained_in_run=ctx.env.run_id)
    return model.state_dict(), budget


def teacher_entry(ctx: StageContext, cfg: dict[str, Any], corpus: tuple[dict[str, Any], Any] | None = None,
                  seed: int | None = None) -> CacheEntry:
    """The shared cache entry of one teacher: its config (with a checkpoint file's content hash, or the corpus it
    is pre-trained on), the data, seed (the teacher stage's: ``seed`` where ``ctx`` is not that stage's), process
    layout and libraries — and the system's files when the teacher is one of the system's own architectures (a
    harness architecture's teacher is shared by every system)."""
    from bench.identity import file_digest

    checkpoint = Path(cfg["checkpoint"]).expanduser() if cfg["checkpoint"] else None
    corpus = corpus or _corpus(ctx, cfg)
    static = {"teacher": cfg, "checkpoint_sha256": file_digest(checkpoint) if checkpoint and checkpoint.exists()
              else None, "data": ctx.data.identity(), "seed": ctx.seed if seed is None else seed,
              "libraries": library_versions(),
              "world": _world(ctx), "system_files": ctx.env.spec.files() if "/" in cfg["model"] else None}
    if corpus is not None:
        static["pretrain"] = {"recipe": corpus[0], "data": corpus[1].identity()}
    return CacheEntry(data_home() / "cache" / "teachers", cfg["name"], static)


def _task(ctx: StageContext, model: ASCModel, cfg: dict[str, Any]) -> ClassifierTask:
    """Cross-entropy, or cross-entropy + DAFA for a teacher with a ``dafa`` table (and a weight above 0)."""
    dafa = cfg["dafa"]
    if dafa is None or {**DAFA.defaults(), **dafa}["weight"] == 0:
        return make_task(ctx, model, cfg)
    wave, feats = augmentations(ctx, cfg)
    return DAFATask(model, OptimConfig.from_config(cfg), dafa, wave, feats)  # it completes the DAFA defaults


@dataclass
class TrainedTeacher:
    logits: torch.Tensor       # on the training split: fit clips, then validation clips
    cached: bool
    budget: list[dict[str, Any]]  # its fits (pre-training included): steps and samples seen


def train_teacher(ctx: StageContext, cfg: dict[str, Any]) -> TrainedTeacher:
    """One teacher's logits on the training split (fit + validation clips, in that order); trains it (pre-trained
    first, or loaded from its checkpoint) unless the shared cache has it."""
    corpus = _corpus(ctx, cfg)
    entry = teacher_entry(ctx, cfg, corpus)
    with entry.lock(ctx.env.console):
        hit, reasons = entry.lookup()
        if hit:
            note_dependencies(entry.info["dependencies"])  # the stage depends on the code that trained the teacher
            if entry.info.get("trained_in_run") == ctx.env.run_id:  # by a helper process of this run
                return TrainedTeacher(entry.load_artifacts()["logits"], False, entry.info.get("budget", []))
            budget = [{**b, "cached": True} for b in entry.info.get("budget", [])]
            return TrainedTeacher(entry.load_artifacts()["logits"], True, budget)
        entry.prepare_work(ctx.env.console)
        start, first = time.perf_counter(), len(ctx.budget)
        budget: list[dict[str, Any]] = []
        with Recorder() as recorder:
            if corpus is not None and not cfg["checkpoint"]:  # first: another process may hold it (EntryBusy)
                weights, budget = pretrained_weights(ctx, cfg, *corpus)
            ctx.env.console.print(f"    teacher {cfg['name']}: training ({'; '.join(reasons)})")
            model = _build(ctx, cfg)
            if cfg["checkpoint"]:
                _load_checkpoint(model, cfg)
            elif corpus is not None:
                load_pretrained(model, weights)
            if cfg["epochs"] > 0:
                ctx.fit(_task(ctx, model, cfg), ctx.clips("fit"), ctx.clips("val"), name=cfg["name"],
                        run_dir=entry.dir / "fit", seed=_seed(ctx, cfg))
            train = ctx.clips("train")
            logits = predict_logits(model, train)
        # a teacher that trained nothing itself (a checkpoint, epochs = 0) still names its entry: its rows are found
        own = _fits_since(ctx, first, key=entry.key, teacher=cfg["name"])
        budget += own or [{"fit": cfg["name"], "teacher": cfg["name"], "key": entry.key, "steps": 0, "samples": 0}]
        entry.store({"rows": torch.from_numpy(train.rows.copy()), "logits": logits, "weights": model.state_dict()},
                    recorder, time.perf_counter() - start, budget=budget, logits_bytes=logits.numel() * 4,
                    trained_in_run=ctx.env.run_id)
    return TrainedTeacher(logits, False, budget)


def stage_pretraining(ctx: StageContext) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(architecture, recipe, corpus) of the pre-training a stage reading ``MODEL`` and ``PRETRAIN`` asks for (a
    student's: TF-SepNet's ``pretrain`` stage); :func:`pretrained_weights` trains or finds it."""
    recipe, corpus = pretrain_recipe(ctx, {k: ctx.config[k] for k in PRETRAIN.keys}, ctx.stage)
    return {"model": ctx.config["model"], "model_options": ctx.config["model_options"]}, recipe, corpus


def _jobs(ctx: StageContext, cfgs: list[dict[str, Any]],
          pretrain_stage: str | None) -> tuple[list[Callable[[], Any]], str]:
    """What the teacher stage's processes can do, uncached — the missing teachers, longest first, then the
    pre-training of the later stage ``pretrain_stage`` (it needs no teacher; none where that stage loads a
    checkpoint) — and in words.

    Longest first (by epochs, pre-training included; the order of equals kept): a process that is left with the
    longest teacher at the end would train it alone while the other cores idle (DS-FlexiNet's default teachers:
    PaSST 24 epochs after two CP-ResNets of 12). Which process trains a teacher changes nothing in it: each has the
    same threads."""
    missing = [cfg for cfg in cfgs if not teacher_entry(ctx, cfg, _corpus(ctx, cfg)).lookup()[0]]
    jobs: list[Callable[[], Any]] = [functools.partial(train_teacher, ctx, cfg) for cfg in longest_first(missing)]
    what = f"{len(jobs)} teacher{'s' * (len(jobs) != 1)}"
    if pretrain_stage:
        later = StageContext(ctx.env, pretrain_stage, ctx.workdir, {})
        if not later.config.get("checkpoint"):
            student, recipe, corpus = stage_pretraining(later)
            if not pretrain_entry(later, student, recipe, corpus).lookup()[0]:
                jobs.append(functools.partial(pretrained_weights, later, student, recipe, corpus))
                what += f" and the {pretrain_stage} stage's {student['model']}"
    return jobs, what


def longest_first(cfgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Teacher configs by their epochs (pre-training included), most first; equals keep their order."""
    return sorted(cfgs, key=lambda cfg: -(cfg["epochs"] + ((cfg["pretrain"] or {}).get("epochs") or 0)))


def work_through(jobs: list[Callable[[], Any]]) -> None:
    """Every job once: first each one whose cache entries no other process holds, then the rest, waiting for those
    entries (and usually finding them trained)."""
    held = []
    with skipping_busy_entries():
        for job in jobs:
            try:
                job()
            except EntryBusy:
                held.append(job)
    for job in held:
        job()


def start_helpers(ctx: StageContext, cfgs: list[dict[str, Any]], pretrain_stage: str | None = None
                  ) -> tuple[list[mp.process.BaseProcess], list[Callable[[], Any]]]:
    """(helper processes forked to work through the teacher stage's jobs beside this one, the jobs: :func:`_jobs`).

    Small networks use two threads poorly: on 2 free cores, two processes with one thread each train two teachers
    in less time than one process with two threads trains them one after the other. Process ``k`` starts on the
    ``k``-th job and goes on through the list, skipping jobs another process holds (the teachers that start from
    one self-supervised pre-training wait for it; meanwhile a process pre-trains the student) and coming back to
    them at the end; the cache's per-entry locks make nothing train twice, and this process then collects every
    teacher in order.

    Each helper computes on **one thread**, and this process on the rest of the run's threads (until
    :func:`join_helpers`). A forked process must not use more: GNU OpenMP, which PyTorch's wheels use, keeps its
    thread team across ``fork`` without the threads, so a fork of a process that has computed on two or more
    threads hangs for ever in its first parallel region on two or more. A cold ``bench run systems/dsflexinet``
    hung so when the helper's last teacher took the second core once the other process was done. A helper
    therefore neither starts on more than one thread nor follows the free cores. None on one thread, a GPU or
    under DDP (where nothing is looked up), or with fewer than two jobs."""
    if ctx.env.accelerator != "cpu" or ctx.env.multi_process or ctx.env.threads < 2:
        return [], []
    jobs, what = _jobs(ctx, cfgs, pretrain_stage)
    n = min(ctx.env.threads, len(jobs))
    if n < 2:
        return [], []
    helpers = []
    for k in range(1, n):
        helper = mp.get_context("fork").Process(target=_helper, args=(ctx, jobs[k:] + jobs[:k]),
                                                 name=f"teachers-helper-{k}", daemon=True)
        helper.start()
        helpers.append(helper)
    own = ctx.env.threads - (n - 1)
    torch.set_num_threads(own)
    split = "1 thread each" if own == 1 else f"this one on {own} threads, the other{'s' * (n > 2)} on 1 each"
    ctx.env.console.print(f"    {what} to train: {n} processes, {split}")
    return helpers, jobs


def _helper(ctx: StageContext, jobs: list[Callable[[], Any]]) -> None:
    torch.set_num_threads(1)  # never more in a forked process (start_helpers)
    ctx.env.follow_free_cores = False
    ctx.env.progress = False  # one progress bar: the main process's
    try:
        work_through(jobs)
    except BaseException as exc:  # the main process reaches this work, does it and reports the error
        ctx.env.console.print(f"    [yellow]helper process failed ({type(exc).__name__}: {exc}); the main process "
                              "does its work[/]")
        os._exit(1)


def join_helpers(ctx: StageContext, helpers: list[mp.process.BaseProcess], stop: bool = False) -> None:
    """Wait for the helpers (the main process has every teacher by now; ``stop``: it failed, end them) and take
    the run's threads back."""
    for helper in helpers:
        if stop:
            helper.terminate()
        helper.join()
    if helpers:
        torch.set_num_threads(ctx.env.threads)


def validation_quality(logits: torch.Tensor, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """A teacher's validation macro accuracy and the class its predictions favour most (with its share: a collapsed
    teacher sends most clips to one or two classes)."""
    if not len(labels):
        return {"val_macro_acc": None, "top_class": None, "top_class_share": None}
    predicted = logits.argmax(1).numpy()
    counts = np.bincount(predicted, minlength=len(classes))
    return {"val_macro_acc": macro_accuracy(labels, predicted == labels, len(classes)),
            "top_class": classes[int(counts.argmax())], "top_class_share": float(counts.max() / len(predicted))}


def gate_failures(quality: dict[str, Any], floor: float | None, max_class_share: float | None) -> list[str]:
    """Why a teacher fails the quality gate (empty: it passes, or it has no validation clips to judge)."""
    acc, share = quality["val_macro_acc"], quality["top_class_share"]
    failures = []
    if floor is not None and acc is not None and acc < floor:
        failures.append(f"validation macro accuracy {100 * acc:.1f} % < floor {100 * floor:.1f} %")
    if max_class_share is not None and share is not None and share > max_class_share:
        failures.append(f"collapsed: {100 * share:.0f} % of validation predictions are {quality['top_class']} "
                        f"(> {100 * max_class_share:.0f} %)")
    return failures


def gate_verdict(failures: list[str], gate: str) -> str:
    """``pass``, ``flagged`` (failed the gate, kept) or ``excluded`` (failed it, left out of the ensemble)."""
    if not failures:
        return "pass"
    return "excluded" if gate == "exclude" else "flagged"


@reads(TEACHERS)
def teacher_stage(ctx: StageContext, pretrain_stage: str | None = None) -> dict[str, Any]:
    """Stage body: every teacher of the stage's ``teachers`` list, through the quality gate. ``pretrain_stage``:
    a later stage (reading ``MODEL`` and ``PRETRAIN``) whose pre-training the stage's processes train alongside the
    teachers when they run in parallel (:func:`start_helpers`); that stage then finds it in the shared cache."""
    out: dict[str, Any] = {"rows": torch.from_numpy(ctx.clips("train").rows.copy()), "logits": {}, "cached": {},
                           "quality": {}, "budget": {}}
    floor, max_share, gate = ctx.config["floor"], ctx.config["max_class_share"], ctx.config["gate"]
    n_fit, val_labels = len(ctx.clips("fit")), ctx.clips("val").labels
    cfgs = teacher_configs(ctx, ctx.stage)
    helpers, jobs = start_helpers(ctx, cfgs, pretrain_stage)
    try:
        work_through(jobs)  # with the helpers, if any; then every teacher is collected in order
        trained = [train_teacher(ctx, cfg) for cfg in cfgs]
    except BaseException:
        join_helpers(ctx, helpers, stop=True)
        raise
    join_helpers(ctx, helpers)
    for cfg, teacher in zip(cfgs, trained):
        name = cfg["name"]
        ctx.add_budget(teacher.budget)
        quality = validation_quality(teacher.logits[n_fit:], val_labels, list(ctx.classes))
        failures = gate_failures(quality, floor, max_share)
        verdict = gate_verdict(failures, gate)
        out["cached"][name] = teacher.cached
        out["budget"][name] = teacher.budget
        out["quality"][name] = {**quality, "floor": floor, "max_class_share": max_share, "gate": verdict,
                                "failures": failures}
        acc = quality["val_macro_acc"]
        shown = "n/a" if acc is None else f"{100 * acc:.1f} %"
        ctx.env.console.print(f"    teacher {name}: " + ("[green]cached[/]" if teacher.cached else "trained")
                              + f", validation macro accuracy {shown}"
                              + ("" if acc is None else f", top class {quality['top_class']} "
                                 f"{100 * quality['top_class_share']:.0f} %")
                              + ("" if verdict == "pass" else f" [yellow]{verdict}: {'; '.join(failures)}[/]"))
        if verdict == "flagged":
            ctx.note(f"teacher {name} fails the quality gate ({'; '.join(failures)}) and is still in the ensemble")
        if verdict == "excluded":
            ctx.note(f"teacher {name} left out of the ensemble: {'; '.join(failures)}")
            continue
        out["logits"][name] = teacher.logits
    if not out["logits"] and out["quality"]:
        reasons = "; ".join(f"{n}: {', '.join(q['failures'])}" for n, q in out["quality"].items())
        raise StageError(f"{ctx.env.spec.name}/{ctx.stage}: every teacher fails the quality gate ({reasons}); "
                         "lower `floor`, raise `max_class_share`, set gate = \"flag\", or train better teachers")
    ctx.report("teachers", {"quality": out["quality"], "budget": out["budget"]})
    return out


@dataclass
class KDTargets:
    """Teacher targets per training clip, looked up by store row."""

    rows: np.ndarray
    logits: torch.Tensor
    info: dict[str, Any]

    def extras(self, clips: ClipSet) -> dict[str, torch.Tensor]:
        pos = pd.Series(np.arange(len(self.rows)), index=self.rows)[clips.rows].to_numpy(copy=True)
        return {"teacher_logits": self.logits[pos]}


def kd_targets(ctx: StageContext, teachers: dict[str, Any], mode: str, names: list[str] | None = None,
               weights: dict[str, float] | None = None) -> KDTargets:
    """The teacher targets of ``names`` (default: every teacher the gate kept): their (weighted) average, their
    learned fusion, or weights per device; fusion and device weights are fitted on the validation clips only."""
    if mode not in KD_MODES[:3]:
        raise StageError(f"kd must be one of {KD_MODES[:3]} here, got {mode!r}")
    kept = sorted(teachers["logits"])
    names = list(names) if names else kept
    missing = [n for n in names if n not in kept]
    if missing:
        dropped = [n for n in missing if n in teachers.get("quality", {})]
        raise StageError(f"{ctx.env.spec.name}: kd_teachers names {', '.join(missing)}, "
                         + ("left out by the quality gate" if dropped == missing else "not a teacher of the run")
                         + f" (teachers kept: {', '.join(kept) or 'none'})")
    if not names:
        raise StageError("distillation needs at least one teacher (profile `teachers` list is empty)")
    unknown = sorted(set(weights or {}) - set(names))
    if unknown:
        raise StageError(f"{ctx.env.spec.name}: kd_weights names {', '.join(unknown)}, not among the teachers "
                         f"distilled from ({', '.join(names)})")
    rows = teachers["rows"].numpy()
    logits = [teachers["logits"][n] for n in names]
    val = ctx.clips("val")
    pos = pd.Series(np.arange(len(rows)), index=rows)[val.rows].to_numpy(copy=True)
    info: dict[str, Any] = {"mode": mode, "teachers": names}
    if mode == "average":
        w = [float((weights or {}).get(n, 0.0 if weights else 1.0)) for n in names]
        info["weights"] = [x / sum(w) for x in w]
        targets = KDTargets(rows, average_logits(logits, w), info)
    elif mode == "per_device":
        devices = ctx.clips("train").frame.set_index("row").loc[rows, "device"].tolist()
        fitted = DeviceWeights().fit([z[pos] for z in logits], torch.from_numpy(val.labels),
                                     [devices[i] for i in pos], split="validation")
        targets = KDTargets(rows, fitted.transform(logits, devices), {**info, **fitted.to_dict()})
    else:
        fusion = TeacherFusion().fit([z[pos] for z in logits], torch.from_numpy(val.labels), split="validation")
        targets = KDTargets(rows, fusion.transform(logits), {**info, **fusion.to_dict()})
    correct = targets.logits[pos].argmax(1).numpy() == val.labels
    targets.info["val_macro_acc"] = macro_accuracy(val.labels, correct, len(ctx.classes)) if len(val) else None
    targets.info["teacher_quality"] = teachers.get("quality", {})
    ctx.report("kd_targets", targets.info)
    return targets


def distillation(ctx: StageContext, stage: str = "teachers") -> tuple[Any, Any]:
    """(task loss, per-clip extras) of a stage that declares ``KD``: cross-entropy without distillation, else the
    KD loss and the targets of the configured teachers (``kd``, ``kd_teachers``, ``kd_weights``)."""
    if ctx.config["kd"] == "none":
        return cross_entropy, None
    targets = kd_targets(ctx, ctx.previous[stage], ctx.config["kd"], ctx.config["kd_teachers"],
                         ctx.config["kd_weights"])
    return kd_loss_from_config(ctx.config), targets.extras


def fit_distilled(ctx: StageContext, model: ASCModel) -> ClassifierTask:
    """Train ``model`` on the stage's fit clips with its configured distillation (or plain cross-entropy), validated
    on the validation clips: the distillation stage of a system that declares ``KD``. The fitted task holds the
    trained ``model`` and the ``final_optimizer_state`` a later fit may resume."""
    loss, extras = distillation(ctx)
    return ctx.fit(make_task(ctx, model, ctx.config, loss), ctx.clips("fit"), ctx.clips("val"), extras=extras)


def teacher_submissions(ctx: StageContext, stage: str = "teachers") -> dict[str, tuple[ModelSubmission, str]]:
    """Leaderboard rows for the run's teachers that the run's board does not hold yet (the same cached teacher,
    trained by another system, an ``--until`` run or an interrupted one, is scored once). Without a board, only the
    teachers this run trained."""
    out = {}
    done = ctx.previous[stage]
    for cfg in teacher_configs(ctx, stage):
        name = cfg["name"]
        # the submission's seed is the run's; the teachers were trained with their stage's (0 when seed-shared)
        entry = teacher_entry(ctx, cfg, seed=ctx.env.stage_seed(stage))
        if (has_row_of(ctx.env.board, f"teacher:{name}", entry.key) if ctx.env.board is not None
                else done["cached"].get(name)):
            continue
        model = _build(ctx, cfg)
        model.load_state_dict(entry.load_artifacts()["weights"])
        sub = ModelSubmission.single(f"teacher:{name}", model.eval(), ctx.classes)
        own = done["budget"][name]
        sub.row_fields = {"teacher_gate": done["quality"][name]["gate"], **budget_columns(own),
                          "external_data": external_data(own, ctx.data.store.fingerprint)}
        out[f"teacher-{name}"] = (sub, "teacher")
    return out
