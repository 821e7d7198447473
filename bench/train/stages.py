"""Running a system's stages: data handed to the recipe, Lightning fits with checkpoints and CSV logs, and a cache.

Each finished stage is stored under a key of (system, its source, the configuration of this and every earlier
stage, data fingerprint, seed), so re-running reuses it. Inside a stage, every ``ctx.fit(...)`` checkpoints each
epoch; an interrupted fit resumes from ``last.ckpt``, and finished fits of a stage (e.g. the device models of a
device-specific fine-tuning stage) are not repeated.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console

from bench import __version__
from bench.data.irs import load_irs
from bench.data.loaders import ClipDataset, make_loader
from bench.data.manifest import Manifest
from bench.data.store import Store
from bench.models import create_model
from bench.models.base import ASCModel
from bench.system import SystemSpec, config_hash
from bench.train.task import ClassifierTask, NonFiniteLossError


class _NoAdverts(logging.Filter):
    """Lightning advertises its cloud logger at every Trainer; an offline harness prints no such tip."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB}")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


class StageError(RuntimeError):
    """A stage that failed; the message names the system, stage and what to do."""


class Interrupted(RuntimeError):
    """Ctrl-C during training: the last checkpoint is kept and the next run resumes from it."""


@dataclass
class RunEnv:
    """What every stage of one run shares."""

    spec: SystemSpec
    profile: str
    variant: str | None
    seed: int
    resolved: dict[str, Any]
    store: Store
    manifest: Manifest
    train_split: str
    fit_clips: pd.DataFrame     # training split minus validation locations
    val_clips: pd.DataFrame     # validation locations carved from the training split
    cache_root: Path
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    progress: bool = True
    console: Console = field(default_factory=Console)
    reused_stages: set[str] = field(default_factory=set)
    ir_cache: dict[Any, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def device_list(self) -> list[str]:
        return list(self.manifest.devices)

    def stage_key(self, stage: str) -> str:
        chain = self.spec.stages[: self.spec.stages.index(stage) + 1]
        return config_hash({
            "system": self.spec.name, "source": self.spec.source_hash(), "harness": __version__,
            "stages": [[s, self.spec.stage_config(self.resolved, s)] for s in chain],
            "data": self.store.fingerprint, "train_split": self.train_split, "seed": self.seed,
            "val_locations": sorted(self.val_clips["identifier"].unique()),
        })


class StageContext:
    """Handed to each stage function: its config, data, earlier stages' outputs, and ``fit``."""

    def __init__(self, env: RunEnv, stage: str, workdir: Path, previous: dict[str, dict[str, Any]]):
        self.env = env
        self.stage = stage
        self.config = env.spec.stage_config(env.resolved, stage)  # stage "" (submission): shared keys only
        self.workdir = workdir
        self.previous = previous
        self.seed = env.seed
        self.manifest = env.manifest
        self.classes = list(env.manifest.classes)

    # -- data -------------------------------------------------------------------------------------------------------
    def clips(self, part: str = "fit", devices: list[str] | None = None) -> pd.DataFrame:
        """Training clips (``fit``), validation clips (``val``) or both (``train``), optionally of some devices."""
        df = {"fit": self.env.fit_clips, "val": self.env.val_clips,
              "train": pd.concat([self.env.fit_clips, self.env.val_clips])}[part]
        return df[df["device"].isin(devices)] if devices is not None else df

    def loader(self, clips: pd.DataFrame, batch_size: int, shuffle: bool,
               extras: dict[str, Any] | None = None) -> torch.utils.data.DataLoader:
        ds = ClipDataset(self.env.store, clips, self.env.device_list, extras)
        single = self.env.devices == 1 and self.env.num_nodes == 1
        return make_loader(ds, batch_size, shuffle, seed=self.seed if single else None,
                           drop_last=shuffle and len(clips) > batch_size)

    def device_index(self, device: str) -> int:
        return self.env.device_list.index(device)

    def impulse_responses(self) -> list[torch.Tensor]:
        """Device impulse responses for DIR: ``irs_dir`` from the config, else the dataset's own IR folder."""
        folder = self.config.get("irs_dir")
        if folder is None:
            sub = self.manifest.irs.get("folder")
            if sub is None:
                raise StageError(f"{self.env.spec.name}/{self.stage}: DIR needs impulse responses; set irs_dir = "
                                 "'/path/to/MicIRP' in the profile (the dataset ships none)")
            folder = Path(self.env.store.info["source"]) / sub
        if folder not in self.env.ir_cache:
            self.env.ir_cache[folder] = load_irs(folder)
        return self.env.ir_cache[folder]

    # -- models -----------------------------------------------------------------------------------------------------
    def create_model(self, name: str | None = None, seed: int | None = None, **overrides) -> ASCModel:
        """A registry model (``model`` in the config), with ``model_options`` from the config and ``overrides``."""
        torch.manual_seed(self.seed if seed is None else seed)
        options = {**self.config.get("model_options", {}), **overrides}
        return create_model(name or self.config["model"], n_classes=len(self.classes), **options)

    # -- training ---------------------------------------------------------------------------------------------------
    def fit(self, task: ClassifierTask, train: pd.DataFrame, val: pd.DataFrame | None = None, name: str = "fit",
            extras: Callable[[pd.DataFrame], dict[str, Any]] | None = None, run_dir: Path | None = None,
            seed: int | None = None) -> ClassifierTask:
        """Train ``task`` on ``train`` clips with Lightning; reuse a finished fit, resume an interrupted one.

        ``run_dir`` defaults to ``<stage dir>/<name>`` (a shared cache such as the teachers' may pass its own)."""
        run_dir = run_dir or self.workdir / name
        seed = self.seed if seed is None else seed
        done = run_dir / "weights.pt"
        if done.exists():
            task.model.load_state_dict(torch.load(done, map_location="cpu", weights_only=True))
            self.env.console.print(f"  [dim]{self.stage}/{name}: finished earlier, reused[/]")
            return task
        ckpt_dir = run_dir / "checkpoints"
        last = ckpt_dir / "last.ckpt"
        key_file = run_dir / "key.json"
        key = {"stage_key": run_dir.parent.name, "fit": name, "n_train": len(train), "seed": seed}
        if last.exists() and (not key_file.exists() or json.loads(key_file.read_text()) != key):
            self.env.console.print(f"  [yellow]{run_dir}: checkpoint belongs to another configuration; starting "
                                   "this fit from scratch[/]")
            shutil.rmtree(ckpt_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(json.dumps(key))
        opt = task.optim
        L.seed_everything(seed, workers=True, verbose=False)
        train_loader = self.loader(train, opt.batch_size, True, extras(train) if extras else None)
        val_loader = self.loader(val, max(opt.batch_size, 64), False, extras(val) if extras else None) \
            if val is not None and len(val) and opt.val_every > 0 else None
        callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="latest", save_last=True, save_top_k=1, every_n_epochs=1,
                                     enable_version_counter=False)]
        if self.env.progress:
            callbacks.append(RichProgressBar(leave=False))
        multi = self.env.devices > 1 or self.env.num_nodes > 1
        deterministic = torch.are_deterministic_algorithms_enabled()  # before the Trainer switches it on
        trainer = L.Trainer(
            accelerator=self.env.accelerator, devices=self.env.devices, num_nodes=self.env.num_nodes,
            strategy="ddp_spawn" if multi else "auto", max_epochs=opt.epochs, deterministic=True,
            logger=CSVLogger(run_dir, name="logs", version=0), log_every_n_steps=1, callbacks=callbacks,
            enable_progress_bar=self.env.progress, enable_model_summary=False, num_sanity_val_steps=0,
            check_val_every_n_epoch=max(opt.val_every, 1), limit_val_batches=1.0 if val_loader else 0,
            gradient_clip_val=opt.grad_clip or None, default_root_dir=run_dir)
        start = time.perf_counter()
        try:
            trainer.fit(task, train_loader, val_loader, ckpt_path=last if last.exists() else None,
                        weights_only=True)
        except NonFiniteLossError as exc:
            raise StageError(f"{self.env.spec.name}/{self.stage}/{name}: {exc}") from exc
        except SystemExit as exc:  # Lightning turns Ctrl-C into sys.exit(1) after a graceful teardown
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise Interrupted(f"{self.env.spec.name}/{self.stage}/{name} interrupted; the last finished epoch "
                              f"is checkpointed in {ckpt_dir} — run the same command again to resume") from exc
        finally:  # Lightning leaves deterministic mode on; quantized inference has no deterministic kernels
            torch.use_deterministic_algorithms(deterministic)
        if trainer.interrupted:
            raise Interrupted(f"{self.env.spec.name}/{self.stage}/{name} interrupted; run again to resume")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        torch.save(task.model.state_dict(), done)
        (run_dir / "metrics.json").write_text(json.dumps({"wall_s": time.perf_counter() - start, **metrics},
                                                         indent=2))
        return task


def run_stage(env: RunEnv, stage: str, previous: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], bool, float]:
    """Run (or reuse) one stage; returns (artifacts, reused, wall seconds)."""
    key = env.stage_key(stage)
    workdir = env.cache_root / env.spec.name / f"{stage}-{key[:16]}"
    artifacts_path = workdir / "artifacts.pt"
    done_path = workdir / "done.json"
    if done_path.exists() and artifacts_path.exists():
        info = json.loads(done_path.read_text())
        return torch.load(artifacts_path, map_location="cpu", weights_only=True), True, info["wall_s"]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps({"key": key, "config": env.spec.stage_config(env.resolved, stage)},
                                                    indent=2, default=str))
    ctx = StageContext(env, stage, workdir, previous)
    L.seed_everything(env.seed, workers=True, verbose=False)
    start = time.perf_counter()
    try:
        artifacts = getattr(env.spec.module, stage)(ctx)
    except (StageError, Interrupted, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise StageError(f"{env.spec.name}: stage {stage!r} raised {type(exc).__name__}: {exc} "
                         f"(work kept in {workdir})") from exc
    if not isinstance(artifacts, dict):
        raise StageError(f"{env.spec.name}: stage {stage!r} must return a dict of artifacts, got "
                         f"{type(artifacts).__name__}")
    wall = time.perf_counter() - start
    tmp = artifacts_path.with_suffix(".tmp")
    torch.save(artifacts, tmp)
    os.replace(tmp, artifacts_path)
    done_path.write_text(json.dumps({"key": key, "wall_s": wall}))
    return artifacts, False, wall
