"""Clips per second into training batches: packed store vs decoding the WAV files.

``python -m bench.benchmarks.store_throughput [--data DIR]`` (default: the embedded benchmark).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.data.audio import read_clip
from bench.data.loaders import ClipDataset, make_loader
from bench.data.manifest import load_manifest
from bench.data.sources import resolve
from bench.data.tau import open_dataset


def store_rate(store, clips, batch_size: int, epochs: int) -> float:
    loader = make_loader(ClipDataset(store, clips, []), batch_size, shuffle=True)
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["wave"])
    return n / (time.perf_counter() - start)


def wav_rate(root, clips, batch_size: int, sample_rate: int, limit: int) -> float:
    """The public baselines' path: decode and resample each file, then stack into batches."""
    names = clips["filename"].to_numpy()[np.random.default_rng(0).permutation(len(clips))[:limit]]
    start = time.perf_counter()
    for i in range(0, len(names), batch_size):
        torch.from_numpy(np.stack([read_clip(root / f, sample_rate)[0] for f in names[i:i + batch_size]]))
    return len(names) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--wav-clips", type=int, default=1000)
    args = parser.parse_args()
    store = resolve(args.data).store
    manifest = load_manifest(store.info["manifest"])
    clips = store.split(manifest.train_split)
    fast = store_rate(store, clips, args.batch_size, args.epochs)
    slow = wav_rate(open_dataset(store.info["source"]).root, clips, args.batch_size, manifest.sample_rate,
                    args.wav_clips)
    print(f"{manifest.name}, batch {args.batch_size}, {torch.get_num_threads()} threads: store {fast:,.0f} clips/s, "
          f"WAV decode+resample {slow:,.0f} clips/s, ratio {fast / slow:.0f}x")


if __name__ == "__main__":
    main()
