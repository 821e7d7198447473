"""Turn a ``--data`` argument into a prepared store: ``synth`` (or nothing) means the embedded benchmark, ``events``
the embedded sound-event pre-training corpus, each generated and prepared once under the data home; anything else
is a dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bench.data.store import PrepareReport, prepare
from bench.data.synth import events
from bench.data.synth.generate import generate, is_complete
from bench.paths import corpus_dir, synth_dir

SYNTH = "synth"
EVENTS = "events"
Progress = Callable[[str, int, int], None]


def ensure_synth(profile: str = "default", data_seed: int = 0, progress: Progress | None = None) -> Path:
    """The embedded benchmark for ``profile``/``seed``, generated on first use only."""
    out = synth_dir(profile, data_seed)
    name = f"synth-{profile}"
    if not is_complete(out, name, data_seed):
        out.parent.mkdir(parents=True, exist_ok=True)
        generate(name, data_seed, out, progress=(lambda i, n: progress("generate", i, n)) if progress else None)
    return out


def ensure_events(profile: str = "default", data_seed: int = 0, progress: Progress | None = None) -> Path:
    """The sound-event corpus for ``profile``/``seed`` (``events-<profile>``), generated on first use only."""
    out = corpus_dir(EVENTS, profile, data_seed)
    name = f"events-{profile}"
    if not events.is_complete(out, name, data_seed):
        out.parent.mkdir(parents=True, exist_ok=True)
        events.generate_events(name, data_seed, out,
                               progress=(lambda i, n: progress("generate", i, n)) if progress else None)
    return out


def resolve(data: str | None, profile: str = "default", data_seed: int = 0, splits_dir: str | None = None,
            progress: Progress | None = None) -> PrepareReport:
    """Dataset folder (or an embedded corpus) -> prepared store (reused when up to date). The embedded corpora have
    two sizes: the ``smoke`` profile gets the smoke one, every other profile the default one."""
    size = "smoke" if profile == "smoke" else "default"
    if data in (None, "", SYNTH):
        root = ensure_synth(size, data_seed, progress)
    elif data == EVENTS:
        root = ensure_events(size, data_seed, progress)
    else:
        root = Path(data)
    return prepare(root, splits_dir=splits_dir, progress=(lambda i, n: progress("prepare", i, n)) if progress else None)
