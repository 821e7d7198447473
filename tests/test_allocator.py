"""The memory allocator a `bench` process runs under (bench/allocator.py): chosen once, at start, by re-executing
the command; `$ASCBENCH_ALLOCATOR` overrides; the allocator changes no result."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import allocator

REPORT = ("from bench import allocator; allocator.ensure(); import os; print(allocator.active(), "
          "os.environ.get('LD_PRELOAD', ''), os.environ.get('GLIBC_TUNABLES', ''), sep='|')")


def _env(**env: str) -> dict[str, str]:
    """This environment without any allocator setting (the suite's own, tests/conftest.py), plus ``env``."""
    return {**{k: v for k, v in os.environ.items()
               if not k.startswith("ASCBENCH_ALLOCATOR") and k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}, **env}


def _active(**env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", REPORT], env=_env(**env), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split("|")


def test_the_command_is_re_executed_under_the_chosen_allocator():
    name, preload, tunables = _active()
    if allocator.find_tcmalloc() is not None:
        assert name == "tcmalloc" and preload.endswith(allocator.TCMALLOC)
    else:
        assert name == "glibc-tuned" and "mmap_max=0" in tunables
    name, preload, tunables = _active(ASCBENCH_ALLOCATOR="glibc-tuned")
    assert name == "glibc-tuned" and "glibc.malloc.mmap_max=0" in tunables and not preload
    assert _active(ASCBENCH_ALLOCATOR="system")[0] == "system"


def test_a_bad_choice_is_a_one_line_error():
    out = subprocess.run([sys.executable, "-m", "bench", "--help"], env=_env(ASCBENCH_ALLOCATOR="jemalloc"),
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == "error: $ASCBENCH_ALLOCATOR='jemalloc': choose one of auto, tcmalloc, glibc-tuned, system"


def test_user_settings_are_kept_beside_the_allocator():
    _, env = allocator.allocator_env("glibc-tuned", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + allocator.GLIBC_KEEP
    if allocator.find_tcmalloc() is None:
        with pytest.raises(allocator.AllocatorError, match="apt-get install libtcmalloc-minimal4"):
            allocator.allocator_env("tcmalloc", {})
    else:
        _, env = allocator.allocator_env("tcmalloc", {"LD_PRELOAD": "libmine.so"})
        assert env["LD_PRELOAD"] == f"{allocator.find_tcmalloc()} libmine.so"


TRAIN = """
import hashlib, torch
from bench import allocator
allocator.ensure()
from bench.models import create_model
torch.manual_seed(0)
model = create_model("cpmobile_baseline")
opt = torch.optim.AdamW(model.parameters(), 1e-3)
for _ in range(2):
    loss = torch.nn.functional.cross_entropy(model(0.05 * torch.randn(16, 32_000)), torch.arange(16) % 10)
    opt.zero_grad(); loss.backward(); opt.step()
print(allocator.active(), hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""


def test_the_allocator_changes_no_result():
    """Two training steps give bit-identical weights under every allocator: only where memory comes from changes."""
    results = {}
    for choice in ("system", "glibc-tuned", "auto"):
        out = subprocess.run([sys.executable, "-c", TRAIN], env=_env(ASCBENCH_ALLOCATOR=choice),
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        name, digest = out.stdout.split()
        results[name] = digest
    assert len(results) == 3 - (allocator.find_tcmalloc() is None)
    assert len(set(results.values())) == 1, results
