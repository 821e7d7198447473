"""The teacher stage: big models trained by the harness (or loaded from a local checkpoint), and their logits.

Teachers are trained on the training split only (``fit`` clips; the validation locations stay held out) and
cached under a key of (teacher config, data fingerprint, training split, validation locations, seed) in a cache
shared by every system: a second system asking for the same teacher trains nothing. The cache keeps the weights
and the logits on the un-augmented training clips (fit + validation), which distillation reads. KD targets are the
averaged logits or DS-FlexiNet's learned fusion, fitted on the validation clips only (never on test).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench import __version__
from bench.distill import TeacherFusion, average_logits
from bench.models import create_model
from bench.models.base import ASCModel
from bench.models.passt import load_passt_checkpoint
from bench.paths import data_home
from bench.submission import ModelSubmission
from bench.system import config_hash
from bench.train.recipes import make_task
from bench.train.stages import StageContext, StageError

KD_MODES = ("fused", "average", "none")


def teacher_key(ctx: StageContext, cfg: dict[str, Any]) -> str:
    env = ctx.env
    return config_hash({"teacher": cfg, "data": env.store.fingerprint, "train_split": env.train_split,
                        "val_locations": sorted(env.val_clips["identifier"].unique()), "seed": ctx.seed,
                        "harness": __version__})


def teacher_dir(ctx: StageContext, cfg: dict[str, Any]) -> Path:
    return data_home() / "cache" / "teachers" / f"{cfg['name']}-{teacher_key(ctx, cfg)[:16]}"


def _seed(ctx: StageContext, cfg: dict[str, Any]) -> int:
    return ctx.seed * 1000 + int(cfg.get("seed", 0))


def _build(ctx: StageContext, cfg: dict[str, Any]) -> ASCModel:
    torch.manual_seed(_seed(ctx, cfg))
    return create_model(cfg["model"], n_classes=len(ctx.classes), **cfg.get("model_options", {}))


def teacher_configs(ctx: StageContext, stage: str) -> list[dict[str, Any]]:
    """Each teacher's full config: the stage table's common keys (optimiser, augmentations) under its own. Only the
    teacher stage's table counts, so student settings never change a teacher's cache key."""
    table = ctx.env.resolved.get(stage, {})
    common = {k: v for k, v in table.items() if k != "teachers"}
    configs = [{**common, **t} for t in table.get("teachers", [])]
    names = [c["name"] for c in configs]
    if len(set(names)) != len(names):
        raise StageError(f"teacher names must be unique, got {names}")
    return configs


@torch.inference_mode()
def predict_logits(ctx: StageContext, model: ASCModel, clips: pd.DataFrame, batch_size: int = 128) -> torch.Tensor:
    """Logits on un-augmented clips (eval mode)."""
    model.eval()
    rows = clips["row"].to_numpy()
    out = [model(torch.from_numpy(ctx.env.store.waveforms(rows[i:i + batch_size]))).float()
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


def train_teacher(ctx: StageContext, cfg: dict[str, Any]) -> tuple[torch.Tensor, bool]:
    """Logits of one teacher on the training split (fit + validation clips, in that order); trains it (or
    loads its checkpoint) unless the shared cache has it. Returns (logits, came from the cache)."""
    tdir = teacher_dir(ctx, cfg)
    logits_path = tdir / "logits.pt"
    if logits_path.exists():
        return torch.load(logits_path, map_location="cpu", weights_only=True)["logits"], True
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "config.json").write_text(json.dumps({"key": teacher_key(ctx, cfg), "config": cfg}, indent=2))
    model = _build(ctx, cfg)
    if cfg.get("checkpoint"):
        _load_checkpoint(model, cfg)
    if cfg.get("epochs", 0) > 0:
        ctx.fit(make_task(ctx, model, cfg), ctx.clips("fit"), ctx.clips("val"), name=cfg["name"], run_dir=tdir / "fit",
                seed=_seed(ctx, cfg))
    train = ctx.clips("train")
    logits = predict_logits(ctx, model, train)
    val = len(ctx.clips("fit"))
    labels = torch.from_numpy(train["label"].to_numpy(copy=True))
    val_acc = float((logits[val:].argmax(1) == labels[val:]).float().mean()) if len(train) > val else None
    torch.save(model.state_dict(), tdir / "weights.pt")
    tmp = logits_path.with_suffix(".tmp")
    torch.save({"rows": torch.from_numpy(train["row"].to_numpy(copy=True)), "logits": logits}, tmp)
    os.replace(tmp, logits_path)
    (tdir / "info.json").write_text(json.dumps({"name": cfg["name"], "val_accuracy": val_acc,
                                                "logits_bytes": logits.numel() * 4}, indent=2))
    return logits, False


def teacher_stage(ctx: StageContext) -> dict[str, Any]:
    """Stage body: every teacher of the stage's ``teachers`` list (tables with name, model, seed, epochs, optimiser
    and augmentation keys, optional model_options and a local checkpoint file)."""
    out: dict[str, Any] = {"rows": torch.from_numpy(ctx.clips("train")["row"].to_numpy(copy=True)), "logits": {},
                           "cached": {}}
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

    def extras(self, clips: pd.DataFrame) -> dict[str, torch.Tensor]:
        pos = pd.Series(np.arange(len(self.rows)), index=self.rows)[clips["row"].to_numpy()].to_numpy()
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
    pos = pd.Series(np.arange(len(rows)), index=rows)[val["row"].to_numpy()].to_numpy()
    fusion = TeacherFusion().fit([z[pos] for z in logits], torch.from_numpy(val["label"].to_numpy(copy=True)),
                                 split="validation")
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
        model.load_state_dict(torch.load(teacher_dir(ctx, cfg) / "weights.pt", map_location="cpu", weights_only=True))
        out[f"teacher-{cfg['name']}"] = (ModelSubmission.from_models(f"teacher:{cfg['name']}", model.eval(),
                                                                     ctx.classes), "teacher")
    return out
