"""The teacher stage: big models trained by the harness (or loaded from a local checkpoint), and their logits.

Teachers are trained on the training split only (``fit`` clips; the validation locations stay held out) and
cached in a cache shared by every system (:class:`bench.train.cache.CacheEntry` under ``cache/teachers``), keyed
by the teacher's own config, the data, the seed and the libraries, and reused while the harness code that trained
it is unchanged: a second system asking for the same teacher trains nothing. An entry keeps the weights and the
logits on the un-augmented training clips (fit + validation), which distillation reads. KD targets are the averaged
logits or DS-FlexiNet's learned fusion, fitted on the validation clips only (never on test).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.config import ConfigError, Key, REQUIRED, Schema, reads, with_defaults
from bench.data.clips import ClipSet
from bench.distill import KD_MODES, TeacherFusion, average_logits
from bench.identity import Recorder, library_versions, note_dependencies
from bench.models import check_model_options, create_model
from bench.models.base import ASCModel
from bench.models.passt import load_passt_checkpoint
from bench.paths import data_home
from bench.submission import ModelSubmission
from bench.train.cache import CacheEntry
from bench.train.recipes import AUGMENT, make_task
from bench.train.stages import StageContext, StageError
from bench.train.task import OPTIM

TEACHER = Schema("teacher", {
    "name": Key(str, REQUIRED, "unique name; the cache and the board use it"),
    "model": Key(str, REQUIRED, "registry architecture"),
    "seed": Key(int, 0, "added to the run seed x 1000, so teachers of one run differ"),
    "checkpoint": Key(str, None, "local weights to start from (never downloaded); with epochs = 0 used as is"),
    "model_options": Key(dict, {}, "overrides of the architecture's config"),
}) | OPTIM | AUGMENT


def _check_teachers(cfg) -> None:
    names = [t["name"] for t in cfg.get("teachers") or []]
    if len(set(names)) != len(names):
        raise ConfigError(f"teachers: names must be unique, got {names}")
    for t in cfg.get("teachers") or []:
        check_model_options(t["model"], t.get("model_options") or {})


TEACHERS = Schema("teachers", {
    "teachers": Key(list, [], "one table per teacher (name, model, seed, epochs, optimizer and augmentation keys, "
                    "model_options, checkpoint); the stage table's other keys are every teacher's defaults",
                    table=TEACHER),
}, checks=(_check_teachers,)) | OPTIM | AUGMENT


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
    common = {k: v for k, v in table.items() if k != "teachers"}
    where = str(ctx.env.spec.toml_path)
    return [with_defaults({**common, **t}, TEACHER, where, f"{stage}.teachers[{i}]")
            for i, t in enumerate(table.get("teachers", []))]


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
    else:
        model.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def teacher_entry(ctx: StageContext, cfg: dict[str, Any]) -> CacheEntry:
    """The shared cache entry of one teacher: its config (with a checkpoint file's content hash), the data, seed,
    process layout and libraries — and the system's files when the teacher is one of the system's own architectures
    (a harness architecture's teacher is shared by every system)."""
    from bench.identity import file_digest

    checkpoint = Path(cfg["checkpoint"]).expanduser() if cfg["checkpoint"] else None
    static = {"teacher": cfg, "checkpoint_sha256": file_digest(checkpoint) if checkpoint and checkpoint.exists()
              else None, "data": ctx.data.identity(), "seed": ctx.seed, "libraries": library_versions(),
              "world": {"accelerator": ctx.env.accelerator, "devices": ctx.env.devices,
                        "num_nodes": ctx.env.num_nodes},
              "system_files": ctx.env.spec.files() if "/" in cfg["model"] else None}
    return CacheEntry(data_home() / "cache" / "teachers", cfg["name"], static)


def train_teacher(ctx: StageContext, cfg: dict[str, Any]) -> tuple[torch.Tensor, bool]:
    """Logits of one teacher on the training split (fit + validation clips, in that order); trains it (or
    loads its checkpoint) unless the shared cache has it. Returns (logits, came from the cache)."""
    entry = teacher_entry(ctx, cfg)
    with entry.lock(ctx.env.console):
        hit, reasons = entry.lookup()
        if hit:
            note_dependencies(entry.info["dependencies"])  # the stage depends on the code that trained the teacher
            return entry.load_artifacts()["logits"], True
        ctx.env.console.print(f"    teacher {cfg['name']}: training ({'; '.join(reasons)})")
        entry.prepare_work(ctx.env.console)
        start = time.perf_counter()
        with Recorder() as recorder:
            model = _build(ctx, cfg)
            if cfg["checkpoint"]:
                _load_checkpoint(model, cfg)
            if cfg["epochs"] > 0:
                ctx.fit(make_task(ctx, model, cfg), ctx.clips("fit"), ctx.clips("val"), name=cfg["name"],
                        run_dir=entry.dir / "fit", seed=_seed(ctx, cfg))
            train = ctx.clips("train")
            logits = predict_logits(model, train)
        n_fit = len(ctx.clips("fit"))
        labels = torch.from_numpy(train.labels)
        val_acc = float((logits[n_fit:].argmax(1) == labels[n_fit:]).float().mean()) if len(train) > n_fit else None
        entry.store({"rows": torch.from_numpy(train.rows.copy()), "logits": logits, "weights": model.state_dict()},
                    recorder, time.perf_counter() - start, val_accuracy=val_acc, logits_bytes=logits.numel() * 4)
    return logits, False


@reads(TEACHERS)
def teacher_stage(ctx: StageContext) -> dict[str, Any]:
    """Stage body: every teacher of the stage's ``teachers`` list."""
    out: dict[str, Any] = {"rows": torch.from_numpy(ctx.clips("train").rows.copy()), "logits": {}, "cached": {}}
    for cfg in teacher_configs(ctx, ctx.stage):
        logits, cached = train_teacher(ctx, cfg)
        out["logits"][cfg["name"]] = logits
        out["cached"][cfg["name"]] = cached
        ctx.env.console.print(f"    teacher {cfg['name']}: " + ("[green]cached[/]" if cached else "trained"))
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


def kd_targets(ctx: StageContext, teachers: dict[str, Any], mode: str) -> KDTargets:
    """Averaged or fused teacher logits; fusion is fitted on the validation clips' teacher logits."""
    if mode not in KD_MODES[:2]:
        raise StageError(f"kd must be one of {KD_MODES[:2]} here, got {mode!r}")
    names = sorted(teachers["logits"])
    if not names:
        raise StageError("distillation needs at least one teacher (profile `teachers` list is empty)")
    rows = teachers["rows"].numpy()
    logits = [teachers["logits"][n] for n in names]
    if mode == "average":
        return KDTargets(rows, average_logits(logits), {"mode": mode, "teachers": names})
    val = ctx.clips("val")
    pos = pd.Series(np.arange(len(rows)), index=rows)[val.rows].to_numpy(copy=True)
    fusion = TeacherFusion().fit([z[pos] for z in logits], torch.from_numpy(val.labels), split="validation")
    return KDTargets(rows, fusion.transform(logits), {"mode": mode, "teachers": names, **fusion.to_dict()})


def teacher_submissions(ctx: StageContext, stage: str = "teachers") -> dict[str, tuple[ModelSubmission, str]]:
    """Leaderboard rows for the teachers trained in this run (cached ones were scored when they were trained)."""
    if stage in ctx.env.reused_stages:
        return {}
    out = {}
    for cfg in teacher_configs(ctx, stage):
        if ctx.previous[stage]["cached"].get(cfg["name"]):
            continue
        model = _build(ctx, cfg)
        model.load_state_dict(teacher_entry(ctx, cfg).load_artifacts()["weights"])
        out[f"teacher-{cfg['name']}"] = (ModelSubmission.single(f"teacher:{cfg['name']}", model.eval(),
                                                                ctx.classes), "teacher")
    return out
