"""Where untrusted package code runs: a bubblewrap sandbox (https://github.com/containers/bubblewrap).

Why bubblewrap: it is a small, maintained, widely packaged (Debian ``bubblewrap``) tool built for exactly this —
Flatpak runs untrusted applications with it — and it needs no daemon and no root. It builds the process's view of
the file system from explicit bind mounts and puts it in fresh namespaces (docs/packages.md has the alternatives).

What the package process sees (:func:`bwrap_command`):

- read-only: the system's ``/usr`` (and ``/bin``, ``/lib*``), a few ``/etc`` files libraries read, the Python
  environment (interpreter, site-packages and what they point to), the harness package, the package's own folder;
- ``/data/clips``: read-only, only the audio it must classify, as ``000000.wav``, ``000001.wav`` … in a shuffled
  order (no ``meta.csv``, no split files, no labels, no scene names in any path), and ``/data/job.json``;
- a private ``/tmp`` (tmpfs, also its ``HOME`` and working directory); fresh ``/proc`` and ``/dev``;
- nothing else: no network (own network namespace), no ``ASCBENCH_HOME``, board, store, run folders or ``~``, a
  cleared environment; its own PID namespace, so every process it starts — ``setsid`` or not — dies with it.

Results come back over a pipe (the only file descriptor it is handed) and are validated by the parent.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.paths import PACKAGE_ROOT, REPO_ROOT, data_home

CLIPS = "/data/clips"
JOB = "/data/job.json"
ETC_FILES = ("passwd", "group", "ld.so.cache", "localtime", "nsswitch.conf", "hosts")


@functools.lru_cache(maxsize=1)
def bwrap_version() -> str | None:
    """``bubblewrap 0.8.0`` when bwrap is installed and this machine lets it create namespaces, else None."""
    tool = shutil.which("bwrap")
    if tool is None:
        return None
    try:
        probe = subprocess.run([tool, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                               capture_output=True, timeout=30)
        version = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return version if probe.returncode == 0 else None


@dataclass(frozen=True)
class Isolation:
    """Limits of the package process — wall-clock seconds for the whole run, address space in GB (RLIMIT_AS;
    torch itself maps about 3 GB, so stay above 4) — and whether it runs sandboxed (``sandbox=False`` is the
    explicit ``--no-sandbox``)."""

    timeout_s: float = 3600.0
    memory_gb: float = 8.0
    sandbox: bool = True

    def describe(self) -> str:
        """The board's ``isolation`` column."""
        if not self.sandbox:
            return "none (--no-sandbox): the package ran as this user, with its files and network"
        return (f"{bwrap_version()}: read-only system and Python, audio copies under neutral names, private /tmp, "
                "no network, own PID namespace")


class SandboxUnavailable(RuntimeError):
    """Untrusted code was asked to run but no sandbox can be made; the message says how to get one."""


def require_sandbox() -> None:
    if bwrap_version() is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed or cannot create namespaces here, so the "
                                 "package's code cannot be isolated; install it (apt-get install bubblewrap) or "
                                 "pass --no-sandbox to run it unisolated, recorded as such on the board")


def _inside_repo_but_not_harness(path: Path) -> bool:
    try:
        path.relative_to(REPO_ROOT)
    except ValueError:
        return False
    return path != PACKAGE_ROOT and PACKAGE_ROOT not in path.parents


def python_paths() -> list[Path]:
    """What the package's interpreter needs, read-only: the prefixes and site-packages (even inside the checkout,
    e.g. a ``.venv``) and the harness package, plus the other ``sys.path`` folders — except anything under the data
    home, the user's home itself, or the checkout around the harness package."""
    home = data_home().resolve()
    environment = [Path(sys.base_prefix), Path(sys.prefix), Path(sys.exec_prefix), *map(Path, site.getsitepackages()),
                   PACKAGE_ROOT]
    others = [Path(p) for p in sys.path if p]
    out: list[Path] = []
    for path in [*environment, *others]:
        path = path.resolve()
        if not path.exists() or path in out or path == Path("/") or home == path or home in path.parents:
            continue
        if path in [p.resolve() for p in environment] or not (
                path == Path.home().resolve() or _inside_repo_but_not_harness(path)):
            out.append(path)
    return out


def _system_binds() -> list[str]:
    args: list[str] = []
    for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES:
        path = Path("/etc") / name
        if path.exists():
            args += ["--ro-bind", str(path.resolve()), str(path)]
    return args


def bwrap_command(inner: list[str], clips: Path, job: Path, package_folder: Path | None,
                  env: dict[str, str]) -> list[str]:
    """The bwrap command line that runs ``inner`` as described in the module docstring."""
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp", *_system_binds()]
    for path in python_paths():
        args += ["--ro-bind", str(path), str(path)]
    if package_folder is not None:
        args += ["--ro-bind", str(package_folder.resolve()), str(package_folder.resolve())]
    args += ["--ro-bind", str(clips), CLIPS, "--ro-bind", str(job), JOB]
    for key, value in {"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": "/usr/local/bin:/usr/bin:/bin",
                       "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **env}.items():
        args += ["--setenv", key, value]
    return [*args, *inner]
