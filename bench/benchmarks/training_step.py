"""Where a training step's time goes, for each reference network at the batch sizes its recipes use.

``python -m bench.benchmarks.training_step [--nets baseline dsflexinet-sm2 ...] [--batch-sizes 32 256]
[--steps 3] [--threads N] [--memory-format declared|contiguous|channels_last ...]``

For each network the step of :class:`bench.train.task.ClassifierTask` is taken apart and timed phase by phase on
real 1-s clips of the embedded default data, with the recipe's augmentations: waveform augmentation (time roll,
device impulse responses), front-end (STFT, mel, log, and the frequency masking inside it), feature augmentation
(Freq-MixStyle; mixup of features), forward with the loss, backward, optimizer step; and, before the step, reading
the batch from the packed store. Median over ``--steps`` steps after one warm-up step, in ms per step and clips/s.

As in ``bench``'s fits: deterministic algorithms on, without filling new tensors with NaN
(:meth:`bench.train.task.ClassifierTask.setup`), and the network in the memory layout it declares
(``memory_format``: ``declared``); ``--memory-format contiguous channels_last`` measures each layout instead.

The memory allocator is chosen as ``bench`` chooses it (``bench/allocator.py``); ``ASCBENCH_ALLOCATOR=system``
measures glibc's defaults instead.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import allocator
from bench.augment import DeviceImpulseResponse, FreqMixStyle, TimeRoll
from bench.data.irs import load_irs
from bench.data.manifest import load_manifest
from bench.data.sources import resolve
from bench.models import create_model
from bench.models.base import SAMPLE_RATE, declared_memory_format
from bench.provenance import cpu_model


@dataclass(frozen=True)
class Recipe:
    """A network and the augmentations and optimizer its recipe trains it with (``systems/*/system.toml``)."""

    model: str
    batch_sizes: tuple[int, ...]
    model_options: dict[str, Any] = field(default_factory=dict)
    roll_seconds: float = 0.0
    dir_p: float = 0.0
    fms: tuple[float, float] | None = None   # Freq-MixStyle (p, alpha)
    mixup_alpha: float = 0.0
    optimizer: str = "adam"


NETS = {
    # the official baseline (train_base.py): batch 256 in the paper profile, 32 in the default one
    "baseline": Recipe("cpmobile_baseline", (32, 256), {"freqm": 48}, roll_seconds=0.1, fms=(0.4, 0.3),
                       optimizer="adamw"),
    "dsflexinet-sm2": Recipe("dsflexinet_sm2", (32, 256), {"freqm": 48}, roll_seconds=0.1, dir_p=0.6,
                             fms=(0.4, 0.3), optimizer="adamw"),
    "cpresnet-teacher": Recipe("cpresnet_128k", (32,), roll_seconds=0.1, dir_p=0.6, fms=(0.4, 0.3)),
    "adaptive-kd-student": Recipe("cpmobile_passt_mel", (32, 256), fms=(0.4, 0.3), mixup_alpha=0.3,
                                  optimizer="adamw"),
    "passt-teacher": Recipe("passt_tiny", (32,), fms=(0.4, 0.3), mixup_alpha=0.3),
    "tfsepnet": Recipe("tfsepnet_64", (32, 256), {"n_mels": 128}, dir_p=0.4, fms=(0.4, 0.8), mixup_alpha=0.3),
    "beats-teacher": Recipe("beats_tiny", (16,), mixup_alpha=0.3),
}
PHASES = ("read batch", "wave augment", "front-end", "feature augment", "forward + loss", "backward", "optimizer")


def _timed(times: dict[str, list[float]], phase: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    times[phase].append(time.perf_counter() - start)
    return out


LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def profile_step(recipe: Recipe, batch_size: int, steps: int, store, manifest,
                 irs: list[torch.Tensor], layout: str = "declared") -> dict[str, float]:
    """Median seconds per phase of one training step (the phases of ``PHASES``)."""
    torch.manual_seed(0)
    model = create_model(recipe.model, **recipe.model_options).train()
    model.net.to(memory_format=LAYOUTS.get(layout) or declared_memory_format(model.net))
    wave_aug: list[torch.nn.Module] = []
    if recipe.roll_seconds:
        wave_aug.append(TimeRoll(int(recipe.roll_seconds * SAMPLE_RATE)))
    if recipe.dir_p:
        wave_aug.append(DeviceImpulseResponse(irs, 0, recipe.dir_p).train())
    fms = FreqMixStyle(*recipe.fms).train() if recipe.fms else None
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[recipe.optimizer]
    opt = cls(model.parameters(), lr=1e-4)
    rows = store.split(manifest.train_split)["row"].to_numpy()
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for _ in range(steps + 1):
        batch = np.sort(rng.choice(rows, batch_size, replace=False))
        wave = _timed(times, "read batch", lambda: torch.from_numpy(store.waveforms(batch)))
        devices = torch.from_numpy(rng.integers(0, 2, batch_size))
        labels = torch.from_numpy(rng.integers(0, 10, batch_size))

        def augment(w=wave):
            for aug in wave_aug:
                w = aug(w, devices) if getattr(aug, "needs_device", False) else aug(w)
            return w
        wave = _timed(times, "wave augment", augment)
        x = _timed(times, "front-end", lambda: model.features(wave))
        lam = float(torch.distributions.Beta(recipe.mixup_alpha, recipe.mixup_alpha).sample()) \
            if recipe.mixup_alpha else 1.0
        perm = torch.randperm(batch_size)

        def feature_augment(x=x):
            x = fms(x) if fms is not None else x
            return lam * x + (1 - lam) * x[perm] if recipe.mixup_alpha else x
        x = _timed(times, "feature augment", feature_augment)

        def forward():
            logits = model.net(x)
            if not recipe.mixup_alpha:
                return F.cross_entropy(logits, labels)
            return lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[perm])
        loss = _timed(times, "forward + loss", forward)
        opt.zero_grad()
        _timed(times, "backward", loss.backward)
        _timed(times, "optimizer", opt.step)
    return {phase: statistics.median(values[1:]) for phase, values in times.items()}


def _layout_name(model: str) -> str:
    fmt = declared_memory_format(create_model(model).net)
    return next(name for name, f in LAYOUTS.items() if f == fmt)


def main() -> None:
    allocator.ensure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    parser.add_argument("--batch-sizes", nargs="*", type=int, help="instead of each recipe's own")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory-format", nargs="*", default=["declared"], choices=["declared", *LAYOUTS],
                        help="the network's layout: the one it declares (as bench trains it), or each one given")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    store = resolve(None).store  # the embedded default data
    manifest = load_manifest(store.info["manifest"])
    irs = load_irs(Path(store.info["source"]) / manifest.irs["folder"])
    print(f"{cpu_model()}; torch {torch.__version__}, {args.threads} thread{'s' * (args.threads > 1)}; allocator "
          f"{allocator.active()}; median of "
          f"{args.steps} steps after one warm-up; real clips of {store.info['manifest']}")
    header = f"{'network':22s} {'layout':>13s} {'batch':>5s} " + " ".join(f"{p:>15s}" for p in PHASES) + f" {'step':>8s} {'clips/s':>8s}"
    print("ms per step (share of the step)\n" + header)
    for name in args.nets:
        recipe = NETS[name]
        for batch_size in args.batch_sizes or recipe.batch_sizes:
            for layout in args.memory_format:
                phases = profile_step(recipe, batch_size, args.steps, store, manifest, irs, layout)
                total = sum(phases.values())
                cells = " ".join(f"{1e3 * v:8.0f} ({100 * v / total:2.0f}%)" for v in phases.values())
                shown = layout if layout != "declared" else f"{_layout_name(recipe.model)}*"
                print(f"{name:22s} {shown:>13s} {batch_size:5d} {cells} {1e3 * total:8.0f} {batch_size / total:8.1f}")
    if "declared" in args.memory_format:
        print("* the layout the network declares (memory_format), the one bench trains it in")


if __name__ == "__main__":
    main()
