"""Which saved submissions this machine made itself: a seal (HMAC-SHA256) over their files, keyed by a secret in the
data home.

A submission that carries a system's own code (``system/``) runs that code when it is loaded. One sealed here was
trained here and is loaded in-process; any other — downloaded, copied from a colleague, edited after saving — is
foreign and only ever runs in the sandbox (``bench score --submission`` and ``bench check`` route it through the
package path). Submissions without code hold only weights (loaded with ``weights_only=True``) and need no seal.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from bench.paths import data_home

SEAL = "seal"


def _key() -> bytes:
    path = data_home() / "keys" / "submissions.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def _contents(folder: Path) -> bytes:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SEAL and "__pycache__" not in p.parts):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.digest()


def seal(folder: Path) -> None:
    """Mark ``folder`` (a saved submission) as made by this machine."""
    (Path(folder) / SEAL).write_text(hmac.new(_key(), _contents(Path(folder)), "sha256").hexdigest() + "\n")


def is_sealed(folder: Path) -> bool:
    """Whether this machine sealed ``folder`` and nothing in it changed since."""
    path = Path(folder) / SEAL
    if not path.is_file():
        return False
    expected = hmac.new(_key(), _contents(Path(folder)), "sha256").hexdigest()
    return hmac.compare_digest(path.read_text().strip(), expected)


def carries_code(folder: Path) -> bool:
    return (Path(folder) / "system").is_dir()


def is_foreign(folder: Path) -> bool:
    """A submission whose own code must not run in this process."""
    return carries_code(folder) and not is_sealed(folder)
