"""A second user (uid/gid 65534) for the cache trust tests: files written as it
with ``setpriv``, where the tests run as root (as CI does)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NOBODY = 65534
_SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "writing files as a second user needs root (CI runs as root)"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    probe = subprocess.run([*_SETPRIV, "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"setpriv cannot switch user: {probe.stderr}"


UNAVAILABLE = _unavailable_reason()
needs_second_user = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))


def as_nobody(*command: str, data: bytes | None = None) -> None:
    """Run ``command`` as uid/gid 65534."""
    subprocess.run([*_SETPRIV, *command], input=data, check=True, capture_output=True)


def write_as_nobody(target: Path, data: bytes) -> None:
    """``target`` written by the second user, wherever it lies: written where that
    user can reach, then moved in (a rename keeps the owner)."""
    staging = Path(tempfile.mkdtemp(prefix="carafe_trust_stage_"))
    try:
        os.chmod(staging, 0o1777)
        as_nobody("sh", "-c", 'cat > "$0"', str(staging / "file"), data=data)
        os.rename(staging / "file", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    assert target.stat().st_uid == NOBODY


def folder_of_nobody(mode: int) -> Path:
    """A new folder in the temporary folder, made by the second user with ``mode``."""
    path = Path(tempfile.gettempdir()) / f"carafe_trust_{os.getpid()}_{os.urandom(6).hex()}"
    as_nobody("mkdir", "-m", oct(mode)[2:], str(path))
    return path
