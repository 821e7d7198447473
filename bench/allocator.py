"""A memory allocator that keeps freed memory, chosen before the first tensor exists.

Why: a training step at the recipes' batch size 256 allocates and frees activations of 100 MB and more in every
layer. glibc's malloc hands each such block back to the kernel when it is freed (``mmap``/``munmap``), so the next
step faults every page in again, and the page faults cost more than the arithmetic: the baseline's CP-Mobile at batch
256 trained 27.2 clips/s with glibc's defaults, 81.9 with tcmalloc (``python -m bench.benchmarks.training_step``;
docs/performance.md). The allocator cannot be changed inside a running process, so :func:`ensure` re-executes the
``bench`` command once, with the same arguments, under:

- ``tcmalloc`` — gperftools' ``libtcmalloc_minimal`` preloaded (Debian/Ubuntu: ``apt-get install
  libtcmalloc-minimal4``), when it is installed;
- ``glibc-tuned`` — otherwise glibc itself, told never to ``mmap`` a block and never to trim its heap
  (``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...``);
- ``system`` — nothing changed, when ``$ASCBENCH_ALLOCATOR=system``.

``$ASCBENCH_ALLOCATOR`` (``auto`` | ``tcmalloc`` | ``glibc-tuned`` | ``system``) chooses; the run says which one
it got. The arithmetic is the same under each: only where the memory comes from changes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "ASCBENCH_ALLOCATOR"
ACTIVE_ENV = "ASCBENCH_ALLOCATOR_ACTIVE"  # set in the re-executed process: what it runs under
CHOICES = ("auto", "tcmalloc", "glibc-tuned", "system")
TCMALLOC = "libtcmalloc_minimal.so.4"
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                "/usr/local/lib")
GLIBC_KEEP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


class AllocatorError(RuntimeError):
    pass


def find_tcmalloc() -> Path | None:
    return next((Path(d) / TCMALLOC for d in LIBRARY_DIRS if (Path(d) / TCMALLOC).is_file()), None)


def allocator_env(choice: str, environ: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(the allocator ``choice`` resolves to on this machine, the environment variables that select it)."""
    if choice not in CHOICES:
        raise AllocatorError(f"${ENV}={choice!r}: choose one of {', '.join(CHOICES)}")
    if choice == "system":
        return "system", {}
    tcmalloc = find_tcmalloc()
    if choice == "tcmalloc" and tcmalloc is None:
        raise AllocatorError(f"${ENV}=tcmalloc but {TCMALLOC} is not installed in {', '.join(LIBRARY_DIRS)}; "
                             "install it (apt-get install libtcmalloc-minimal4) or set it to auto")
    if tcmalloc is not None and choice in ("auto", "tcmalloc"):
        preload = " ".join(p for p in (str(tcmalloc), environ.get("LD_PRELOAD", "")) if p)
        return "tcmalloc", {"LD_PRELOAD": preload}
    tunables = ":".join(t for t in (environ.get("GLIBC_TUNABLES", ""), GLIBC_KEEP) if t)
    return "glibc-tuned", {"GLIBC_TUNABLES": tunables}


def active() -> str:
    """The allocator this process runs under (``system`` unless :func:`ensure` re-executed it)."""
    return os.environ.get(ACTIVE_ENV, "system")


def ensure() -> None:
    """Re-execute this command under the chosen allocator, once; a no-op when it already runs under it."""
    if ACTIVE_ENV in os.environ:
        return
    try:
        name, changes = allocator_env(os.environ.get(ENV, "auto"), dict(os.environ))
    except AllocatorError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not changes:
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **changes, ACTIVE_ENV: name})
