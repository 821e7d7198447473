"""Running a system's stages: data handed to the recipe, Lightning fits with checkpoints and CSV logs, and a cache.

A finished stage is cached (:mod:`bench.train.cache`) under its static inputs (config, system files, data, seed,
profile, libraries) and reused only while the harness files its code ran are unchanged; otherwise the user is told
why it runs again. Inside a stage, every ``ctx.fit(...)`` checkpoints each epoch; an interrupted fit resumes from
``last.ckpt``, and finished fits of a stage (e.g. the device models of a device-specific fine-tuning stage) are not
repeated.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console

from bench.config import Key, Schema, StageConfig
from bench.data.clips import ClipSet
from bench.data.irs import load_irs
from bench.data.loaders import make_loader
from bench.data.manifest import Manifest
from bench.data.store import Store
from bench.errors import Interrupted, StageError
from bench.identity import Recorder, blind_all, library_versions
from bench.models import create_model
from bench.models.base import ASCModel
from bench.system import SystemSpec
from bench.threads import ThreadGovernor, usable_cores
from bench.train.cache import CacheEntry
from bench.train.process_group import destroy_gloo_group_at_exit
from bench.train.task import ClassifierTask, NonFiniteLossError


class _NoAdverts(logging.Filter):
    """Lightning advertises its cloud logger at every Trainer; an offline harness prints no such tip."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB}")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


class _FollowFreeCores(L.Callback):
    """Hands the start of every training batch to the fit's :class:`bench.threads.ThreadGovernor`, and says when it
    changes the thread count."""

    def __init__(self, governor: ThreadGovernor, console: Console, fit: str):
        self.governor, self.console, self.fit = governor, console, fit

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        seen = len(self.governor.changes)
        self.governor.poll(int(trainer.global_step))
        for change in self.governor.changes[seen:]:
            self.console.print(f"    {self.fit}: {change['from']} -> {change['to']} thread"
                               f"{'s' * (change['to'] > 1)} at step {change['step']} (other processes took "
                               f"{change['others_cores']:.1f} cores)")


class _DestroyGlooGroupAtExit(L.Callback):
    """Runs in each DDP worker once its process group exists (:mod:`bench.train.process_group` says why)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        destroy_gloo_group_at_exit()


DATA = Schema("data", {
    "data": Key(str, None, "train this stage on another dataset (a folder; its own classes and validation part) "
                "instead of the run's training split"),
    "train_devices": Key(list, None, "train (and validate) this stage on these devices of the run's data only"),
})


@dataclass
class StageData:
    """One dataset as a stage sees it: its store, label space and the fit/validation clips carved from it."""

    store: Store
    manifest: Manifest
    fit: ClipSet
    val: ClipSet
    split: str

    @property
    def classes(self) -> tuple[str, ...]:
        return self.fit.classes

    def identity(self) -> dict[str, Any]:
        return {"dataset": self.manifest.name, "fingerprint": self.store.fingerprint, "split": self.split,
                "validation": sorted(map(str, self.val.frame["identifier"].dropna().unique())) or len(self.val)}


@dataclass
class RunEnv:
    """What every stage of one run shares."""

    spec: SystemSpec
    profile: str
    variant: str | None
    seed: int
    resolved: dict[str, Any]
    data: StageData              # the run's data: training split minus validation locations, and those locations
    cache_root: Path
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    progress: bool = True
    console: Console = field(default_factory=Console)
    reused_stages: set[str] = field(default_factory=set)
    ir_cache: dict[Any, list[torch.Tensor]] = field(default_factory=dict)
    external: dict[str, StageData] = field(default_factory=dict)  # other datasets stages asked for, by argument
    load_external: Callable[[str], StageData] | None = None
    board: Path | None = None    # where the run's rows go (a teacher already on it is not scored again)
    threads: int = 1             # CPU threads the run computes with (bench.threads)
    follow_free_cores: bool = False  # the run measured its threads: fits follow the free cores (ThreadGovernor)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # marks cache entries this run trained

    @property
    def manifest(self) -> Manifest:
        return self.data.manifest

    @property
    def store(self) -> Store:
        return self.data.store

    @property
    def multi_process(self) -> bool:
        return self.devices > 1 or self.num_nodes > 1

    def stage_data(self, config: StageConfig) -> StageData:
        """The data a stage declared: another dataset (``data``), a device subset (``train_devices``) or the run's."""
        if "data" in config.schema.keys and config["data"]:
            return self.dataset(config["data"])
        if "train_devices" in config.schema.keys and config["train_devices"]:
            devices = list(config["train_devices"])
            return StageData(self.store, self.manifest, self.data.fit.of_devices(devices),
                             self.data.val.of_devices(devices), self.data.split)
        return self.data

    def dataset(self, name: str) -> StageData:
        """Another dataset a stage or a teacher's pre-training asked for (``events``, or a folder), loaded once."""
        if name not in self.external:
            if self.load_external is None:
                raise StageError(f"{self.spec.name}: no loader for dataset {name!r}")
            self.external[name] = self.load_external(name)
        return self.external[name]

    def stage_seed(self, stage: str) -> int:
        """The seed a stage trains with: 0 for the system's ``seed_shared_stages``, else the run's."""
        return 0 if stage in (self.resolved.get("seed_shared_stages") or []) else self.seed

    def static_inputs(self, stage: str, upstream: dict[str, str]) -> dict[str, Any]:
        """Everything known before the stage runs that decides its output (its cache key is their hash)."""
        config = self.spec.stage_config(self.resolved, stage)
        data = self.stage_data(config)
        return {"system": self.spec.name, "stage": stage, "config": config.to_dict(), "upstream": upstream,
                "system_files": self.spec.files(), "data": data.identity(), "seed": self.stage_seed(stage),
                "profile": self.profile, "libraries": library_versions(),
                "world": {"accelerator": self.accelerator, "devices": self.devices, "num_nodes": self.num_nodes}}


class StageContext:
    """Handed to each stage function: its config, data, earlier stages' outputs, and ``fit``."""

    def __init__(self, env: RunEnv, stage: str, workdir: Path, previous: dict[str, dict[str, Any]]):
        self.env = env
        self.stage = stage
        self.config = (env.spec.stage_config(env.resolved, stage) if stage
                       else env.spec.submission_config(env.resolved))
        self.workdir = workdir
        self.previous = previous
        self.seed = env.stage_seed(stage) if stage else env.seed
        self.data = env.stage_data(self.config)
        self.manifest = self.data.manifest
        self.classes = list(self.data.classes)
        self.notes: list[str] = []
        self.budget: list[dict[str, Any]] = []  # one entry per fit: optimizer steps and training samples seen

    def add_budget(self, items: list[dict[str, Any]]) -> None:
        """Count fits done elsewhere (a cached teacher, a shared pre-training) in this stage's budget, once each."""
        seen = {item.get("key") for item in self.budget if item.get("key")}
        self.budget += [item for item in items if not item.get("key") or item["key"] not in seen]

    def report(self, name: str, data: dict[str, Any]) -> None:
        """A JSON report of the stage (e.g. the teacher fusion it fitted), copied into the run folder."""
        folder = self.workdir / "reports"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))

    def note(self, text: str) -> None:
        """Something the rows of this run must say (a fallback taken, something left out); kept with the stage."""
        self.notes.append(text)
        self.env.console.print(f"  [yellow]note:[/] {text}")

    # -- data -------------------------------------------------------------------------------------------------------
    def clips(self, part: str = "fit", devices: list[str] | None = None) -> ClipSet:
        """The stage's training clips (``fit``), validation clips (``val``) or both (``train``), optionally of some
        devices only."""
        if part not in ("fit", "val", "train"):
            raise ValueError(f"clips(part) is 'fit', 'val' or 'train', got {part!r}")
        clips = {"fit": self.data.fit, "val": self.data.val, "train": self.data.fit.concat(self.data.val)}[part]
        return clips.of_devices(devices)

    def loader(self, clips: ClipSet, batch_size: int, shuffle: bool, extras: dict[str, Any] | None = None,
               seed: int | None = None, batches: str = "random") -> torch.utils.data.DataLoader:
        """Batches of ``clips``, shuffled from ``seed`` (default: the stage's) in a single process; device-stratified
        batches (``batches``) are seeded under DDP too (their sampler shards itself)."""
        seed = self.seed if seed is None else seed
        stratified = shuffle and batches == "device_stratified"
        return make_loader(clips.dataset(extras), batch_size, shuffle,
                           seed=seed if stratified or not self.env.multi_process else None,
                           drop_last=shuffle and len(clips) > batch_size, batches=batches)

    def device_index(self, device: str) -> int:
        return list(self.data.fit.device_vocab).index(device)

    def impulse_responses(self) -> list[torch.Tensor]:
        """Device impulse responses for DIR: ``irs_dir`` from the config, else the stage dataset's own IR folder, else
        (a pre-training corpus ships none) the run's dataset's."""
        folder = self.config.get("irs_dir")
        if folder is None:
            data = self.data if self.manifest.irs.get("folder") else self.env.data
            sub = data.manifest.irs.get("folder")
            if sub is None:
                raise StageError(f"{self.env.spec.name}/{self.stage}: DIR needs impulse responses; set irs_dir = "
                                 "'/path/to/MicIRP' in the profile (the dataset ships none)")
            folder = Path(data.store.info["source"]) / sub
        folder = Path(folder).expanduser()
        if folder not in self.env.ir_cache:
            self.env.ir_cache[folder] = load_irs(folder)
        return self.env.ir_cache[folder]

    # -- models -----------------------------------------------------------------------------------------------------
    def create_model(self, name: str | None = None, seed: int | None = None, state: dict | None = None,
                     **overrides) -> ASCModel:
        """A registry model (``model`` in the config), with ``model_options`` from the config and ``overrides``,
        sized for the stage's classes; seeded, or holding ``state`` (e.g. an earlier stage's weights)."""
        torch.manual_seed(self.seed if seed is None else seed)
        options = {**(self.config.get("model_options") or {}), **overrides} if name is None else dict(overrides)
        model = create_model(name or self.config["model"], n_classes=len(self.classes), **options)
        if state is not None:
            model.load_state_dict(state)
        return model

    # -- training ---------------------------------------------------------------------------------------------------
    def fit(self, task: ClassifierTask, train: ClipSet, val: ClipSet | None = None, name: str = "fit",
            extras: Callable[[ClipSet], dict[str, Any]] | None = None, run_dir: Path | None = None,
            seed: int | None = None) -> ClassifierTask:
        """Train ``task`` on ``train`` with Lightning; reuse a finished fit, resume an interrupted one.

        ``run_dir`` defaults to ``<stage dir>/<name>`` (a shared cache such as the teachers' may pass its own).
        With ``select = "best"`` the epoch with the best ``val_score`` on ``val`` is kept. The optimizer and
        schedule state at the end is ``task.final_optimizer_state`` (for a later fit to resume)."""
        run_dir = run_dir or self.workdir / name
        seed = self.seed if seed is None else seed
        done = run_dir / "weights.pt"
        opt_file = run_dir / "optimizer.pt"
        if done.exists():
            task.load_state_dict(torch.load(done, map_location="cpu", weights_only=True))
            if opt_file.exists():
                task.final_optimizer_state = torch.load(opt_file, map_location="cpu", weights_only=True)
            self.env.console.print(f"  [dim]{self.stage}/{name}: finished earlier, reused[/]")
            self._count_fit(run_dir, name, train)
            return task
        opt = task.optim
        has_val = val is not None and len(val) > 0 and opt.val_every > 0
        if opt.select == "best" and not has_val:
            raise StageError(f"{self.env.spec.name}/{self.stage}/{name}: select = 'best' needs validation clips "
                             "and val_every > 0")
        ckpt_dir = run_dir / "checkpoints"
        last = ckpt_dir / "last.ckpt"
        key_file = run_dir / "key.json"
        key = {"stage_dir": run_dir.parent.name, "fit": name, "n_train": len(train), "seed": seed}
        if last.exists() and (not key_file.exists() or json.loads(key_file.read_text()) != key):
            self.env.console.print(f"  [yellow]{run_dir}: checkpoint belongs to another configuration; starting "
                                   "this fit from scratch[/]")
            shutil.rmtree(ckpt_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(json.dumps(key))
        L.seed_everything(seed, workers=True, verbose=False)
        train_loader = self.loader(train, opt.batch_size, True, extras(train) if extras else None, seed, opt.batches)
        val_loader = self.loader(val, max(opt.batch_size, 64), False, extras(val) if extras else None) \
            if has_val else None
        callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="latest", save_last=True, save_top_k=1,
                                     every_n_epochs=1, enable_version_counter=False)]
        if opt.select == "best":
            best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_score", mode="max", save_top_k=1,
                                   enable_version_counter=False)
            callbacks.append(best)
        if self.env.progress:
            callbacks.append(RichProgressBar(leave=False))
        if self.env.multi_process:
            callbacks.append(_DestroyGlooGroupAtExit())
        governor = None
        if self.env.follow_free_cores and self.env.accelerator == "cpu" and not self.env.multi_process:
            governor = ThreadGovernor(ceiling=usable_cores())
            callbacks.append(_FollowFreeCores(governor, self.env.console, f"{self.stage}/{name}"))
        threads = torch.get_num_threads()
        deterministic = torch.are_deterministic_algorithms_enabled()  # before the Trainer switches it on
        trainer = L.Trainer(
            accelerator=self.env.accelerator, devices=self.env.devices, num_nodes=self.env.num_nodes,
            # find_unused_parameters: PaSST keeps a distillation head its forward never uses (its checkpoints hold it)
            strategy="ddp_spawn_find_unused_parameters_true" if self.env.multi_process else "auto",
            max_epochs=opt.epochs, deterministic=True,
            logger=CSVLogger(run_dir, name="logs", version=0), log_every_n_steps=1, callbacks=callbacks,
            enable_progress_bar=self.env.progress, enable_model_summary=False, num_sanity_val_steps=0,
            check_val_every_n_epoch=max(opt.val_every, 1), limit_val_batches=1.0 if val_loader else 0,
            gradient_clip_val=opt.grad_clip or None, default_root_dir=run_dir,
            use_distributed_sampler=opt.batches == "random")
        if self.env.multi_process:
            blind_all()  # the training code runs in worker processes the dependency hook cannot see
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
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if opt.select == "best":
            # under ddp_spawn the callback's state stays in the worker processes: read the best file and its score
            state = torch.load(best.best_model_path or ckpt_dir / "best.ckpt", map_location="cpu", weights_only=True)
            task.load_state_dict(state["state_dict"])
            score = next(v["best_model_score"] for k, v in state["callbacks"].items()
                         if k.startswith("ModelCheckpoint") and "'monitor': 'val_score'" in k)
            metrics.update(best_epoch=int(state["epoch"]), best_val_score=float(score))
        final = torch.load(last, map_location="cpu", weights_only=True)
        task.final_optimizer_state = {"optimizer": final["optimizer_states"][0],
                                      "scheduler": final["lr_schedulers"][0]}
        torch.save(task.final_optimizer_state, opt_file)
        torch.save(task.state_dict(), done)
        world = self.env.devices * self.env.num_nodes  # every process steps on its own batch
        (run_dir / "metrics.json").write_text(json.dumps({"wall_s": time.perf_counter() - start, **metrics,
                                                          "steps": int(trainer.global_step),
                                                          "samples": int(trainer.global_step) * opt.batch_size
                                                          * world, "threads": threads,
                                                          "thread_changes": governor.changes if governor else []},
                                                         indent=2))
        self._count_fit(run_dir, name, train)
        return task

    def _count_fit(self, run_dir: Path, name: str, train: ClipSet) -> None:
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        self.budget.append({"fit": name, "dataset": train.store.dataset_name, "fingerprint": train.store.fingerprint,
                            "data_seed": train.store.generator_seed, "clips": len(train),
                            "steps": metrics.get("steps"), "samples": metrics.get("samples"),
                            "wall_s": metrics.get("wall_s"), "threads": metrics.get("threads"),
                            "thread_changes": metrics.get("thread_changes") or []})


def _each_fit_once(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Budget items with a fit several stages share (a teachers' pre-training) once."""
    return list({item.get("key") or f"#{i}": item for i, item in enumerate(items)}.values())


def budget_columns(items: list[dict[str, Any]]) -> dict[str, int]:
    """``train_steps`` and ``train_samples``: the optimizer steps and training samples of every fit, once each
    (a pre-training two teachers share counts once)."""
    unique = _each_fit_once(items)
    return {"train_steps": sum(int(i.get("steps") or 0) for i in unique),
            "train_samples": sum(int(i.get("samples") or 0) for i in unique)}


def thread_note(items: list[dict[str, Any]]) -> str | None:
    """The row's note on fits whose thread count followed the free cores (their sums ran in another order than a
    run on a fixed count would take), e.g. ``threads followed the free cores in 1 fit: general/fit 2 -> 1 -> 2``
    (items with their ``stage``)."""
    changed = [i for i in _each_fit_once(items) if i.get("thread_changes")]
    if not changed:
        return None
    fits = ", ".join(f"{'/'.join(filter(None, (i.get('stage'), i['fit'])))} {i['threads']} -> "
                     + " -> ".join(str(c["to"]) for c in i["thread_changes"]) for i in changed)
    return f"threads followed the free cores in {len(changed)} fit{'s' * (len(changed) > 1)}: {fits}"


def external_data(items: list[dict[str, Any]], own_fingerprint: str) -> list[dict[str, Any]] | None:
    """The datasets other than the run's own that fits trained on (external data, as the challenge asks
    participants to declare it): name, fingerprint, generator seed and which fits used them."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if item.get("fingerprint") and item["fingerprint"] != own_fingerprint:
            entry = out.setdefault(item["fingerprint"], {"dataset": item.get("dataset"),
                                                         "fingerprint": item["fingerprint"],
                                                         "seed": item.get("data_seed"), "used_by": []})
            if item["fit"] not in entry["used_by"]:
                entry["used_by"].append(item["fit"])
    return list(out.values()) or None


@dataclass
class StageOutcome:
    artifacts: dict[str, Any]
    reused: bool
    wall_s: float
    key: str               # the resolved key: static inputs plus the harness files the stage's code ran
    entry: CacheEntry
    reasons: list[str]

    @property
    def notes(self) -> list[str]:
        return list((self.entry.info or {}).get("notes", []))

    @property
    def budget(self) -> list[dict[str, Any]]:
        """Every fit the stage counts (its own, its teachers', their pre-training): steps and samples seen."""
        return list((self.entry.info or {}).get("budget", []))


def run_stage(env: RunEnv, stage: str, previous: dict[str, dict[str, Any]], upstream: dict[str, str],
              position: str = "") -> StageOutcome:
    """Run (or reuse) one stage; ``previous`` holds the artifacts and ``upstream`` the resolved keys of the stages
    before it (``position``: e.g. "2/6 ", shown). Two runs needing the same stage at once take turns: the second
    reuses what the first trains."""
    label = {"profile": env.profile, "variant": env.variant, "seed": env.seed}
    entry = CacheEntry(env.cache_root / env.spec.name, stage, env.static_inputs(stage, upstream), label)
    with entry.lock(env.console):
        hit, reasons = entry.lookup()
        if hit:
            return StageOutcome(entry.load_artifacts(), True, entry.info["wall_s"], entry.resolved_key, entry, [])
        env.console.print(f"  stage {position}[bold]{stage}[/]: training ({'; '.join(reasons)})")
        entry.prepare_work(env.console)
        ctx = StageContext(env, stage, entry.dir, previous)
        L.seed_everything(env.seed, workers=True, verbose=False)
        start = time.perf_counter()
        with Recorder() as recorder:
            try:
                artifacts = getattr(env.spec.module, stage)(ctx)
            except (StageError, Interrupted, KeyboardInterrupt):
                entry.note_interrupted(recorder)
                raise
            except Exception as exc:
                entry.note_interrupted(recorder)
                raise StageError(f"{env.spec.name}: stage {stage!r} raised {type(exc).__name__}: {exc} "
                                 f"(work kept in {entry.dir})") from exc
        if not isinstance(artifacts, dict):
            raise StageError(f"{env.spec.name}: stage {stage!r} must return a dict of artifacts, got "
                             f"{type(artifacts).__name__}")
        wall = time.perf_counter() - start
        entry.store(artifacts, recorder, wall, notes=ctx.notes, budget=ctx.budget)
    return StageOutcome(artifacts, False, wall, entry.resolved_key, entry, reasons)
