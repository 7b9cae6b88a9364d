"""Cache folders that no other user can plant files in, and files read only from them.

The caches hold code that is loaded into the process (simulator modules,
scheduler objects linked into them, GPU binaries). A file name there is a hash
of public inputs, so anyone who can write the folder, or rename a folder above
it, could put their own code in its place. The rules, like ssh's and git's
``safe.directory``:

* the cache folder is a real folder (no symlink) owned by the current user that
  neither group nor others can write; new ones are created mode 0700 whatever
  the umask;
* every folder above it is owned by the user or by root, and is not writable
  by group or others unless it has the sticky bit (``/tmp``);
* a file is loaded, linked or read only when it is a regular file (no symlink)
  owned by the user that neither group nor others can write.

A folder that breaks them is never read: the callers fall back to a private
temporary folder (``fallback_dir``, removed at exit) or to no disk cache.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

StatFunction = Callable[[str], os.stat_result]

# Owners and modes are POSIX notions; elsewhere (Windows) only the creation rules apply.
_POSIX = hasattr(os, "geteuid")
_fallbacks: dict[str, Path] = {}
_fallback_lock = threading.Lock()


class UntrustedPathError(OSError):
    """A cache folder or file that another user could have written."""


def _owner_is_user(status: os.stat_result, uid: int) -> bool:
    return status.st_uid == uid


def _writable_by_others(status: os.stat_result) -> bool:
    return bool(status.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def folder_problem(status: os.stat_result, uid: int) -> str | None:
    """Why a folder with this status cannot hold the cache, or None."""
    if not stat.S_ISDIR(status.st_mode):
        return "is not a folder (a symlink or a file)"
    if not _owner_is_user(status, uid):
        return f"is owned by uid {status.st_uid}, not by this user (uid {uid})"
    if _writable_by_others(status):
        return f"is writable by group or others (mode {stat.filemode(status.st_mode)})"
    return None


def parent_problem(status: os.stat_result, uid: int) -> str | None:
    """Why a folder with this status cannot be above the cache, or None."""
    if not stat.S_ISDIR(status.st_mode):
        return "is not a folder (a symlink or a file)"
    if status.st_uid not in (uid, 0):
        return f"is owned by uid {status.st_uid}, neither this user (uid {uid}) nor root"
    if _writable_by_others(status) and not status.st_mode & stat.S_ISVTX:
        return (
            "is writable by group or others without the sticky bit "
            f"(mode {stat.filemode(status.st_mode)})"
        )
    return None


def file_problem(status: os.stat_result, uid: int) -> str | None:
    """Why a cache file with this status must not be loaded, or None."""
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file"
    if not _owner_is_user(status, uid):
        return f"is owned by uid {status.st_uid}, not by this user (uid {uid})"
    if _writable_by_others(status):
        return f"is writable by group or others (mode {stat.filemode(status.st_mode)})"
    return None


def path_problem(
    folder: Path, *, lstat: StatFunction = os.lstat, uid: int | None = None
) -> str | None:
    """Why the absolute ``folder`` is not a safe cache folder (it and every folder
    above it checked), or None. ``lstat`` and ``uid`` are for tests."""
    if uid is None:
        if not _POSIX:
            return None
        uid = os.geteuid()
    try:
        problem = folder_problem(lstat(str(folder)), uid)
        if problem:
            return f"{folder} {problem}"
        for parent in folder.parents:
            problem = parent_problem(lstat(str(parent)), uid)
            if problem:
                return f"{parent}, a folder above it, {problem}"
    except OSError as error:
        return f"{folder} cannot be checked ({error})"
    return None


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(path))))


def _refusal(folder: Path, variable: str, problem: str) -> UntrustedPathError:
    return UntrustedPathError(
        f"cache folder {folder} (from {variable}) is not safe to use: {problem}. Use a "
        f"folder only this user can write (mode 0700), or point {variable} at one"
    )


def _deepest_existing(folder: Path) -> Path:
    existing = folder
    while not os.path.lexists(existing):
        existing = existing.parent
    return existing


def dir_problem(path: str | os.PathLike[str], variable: str) -> str | None:
    """What ``private_dir`` would refuse, without creating anything; None where it
    would succeed (creating the folder if it is missing)."""
    folder = _absolute(path)
    existing = _deepest_existing(folder)
    problem = path_problem(folder) if existing == folder else _parents_problem(existing)
    return None if problem is None else str(_refusal(folder, variable, problem))


def private_dir(path: str | os.PathLike[str], variable: str) -> Path:
    """``path`` made absolute and without symlinks, created (mode 0700) where
    missing, and checked. Raises UntrustedPathError, naming the folder and
    ``variable``, where another user could write it, or OSError where it
    cannot be created."""
    folder = _absolute(path)
    existing = _deepest_existing(folder)
    # Nothing is created under a folder someone else controls.
    problem = path_problem(folder) if existing == folder else _parents_problem(existing)
    if problem is None and existing != folder:
        missing_count = len(folder.parts) - len(existing.parts)
        for missing in reversed([folder, *folder.parents][:missing_count]):
            try:
                os.mkdir(missing, 0o700)
            except FileExistsError:
                continue
            os.chmod(missing, 0o700)  # the umask may have taken bits off
        problem = path_problem(folder)
    if problem is not None:
        raise _refusal(folder, variable, problem)
    return folder


def _parents_problem(existing: Path) -> str | None:
    if not _POSIX:
        return None
    uid = os.geteuid()
    for folder in (existing, *existing.parents):
        try:
            problem = parent_problem(os.lstat(folder), uid)
        except OSError as error:
            return f"{folder} cannot be checked ({error})"
        if problem:
            return f"{folder} {problem}"
    return None


def read_trusted(path: Path) -> bytes:
    """The bytes of a cache file, read only where ``file_problem`` finds nothing
    (checked on the open file, so it cannot be swapped in between). Raises
    FileNotFoundError where there is none, UntrustedPathError otherwise."""
    if not _POSIX:
        return path.read_bytes()
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as error:  # a symlink (ELOOP), a folder, no permission
        raise UntrustedPathError(f"{path} cannot be opened as a cache file ({error})") from None
    try:
        problem = file_problem(os.fstat(descriptor), os.geteuid())
    except BaseException:
        os.close(descriptor)
        raise
    if problem:
        os.close(descriptor)
        raise UntrustedPathError(f"{path} {problem}")
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read()


def trusted_file(path: Path) -> bool:
    """Whether ``path`` exists and ``file_problem`` finds nothing in it (by lstat)."""
    if not _POSIX:
        return path.is_file()
    try:
        return file_problem(os.lstat(path), os.geteuid()) is None
    except OSError:
        return False


def foreign_entry(folder: Path) -> str | None:
    """The first entry of ``folder`` that is not a file of this user's, as a reason, or None."""
    if not _POSIX:
        return None
    uid = os.geteuid()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                status = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(status.st_mode):
                    problem = folder_problem(status, uid)
                else:
                    problem = file_problem(status, uid)
                if problem:
                    return f"{entry.path} {problem}"
    except OSError as error:
        return f"{folder} cannot be listed ({error})"
    return None


def fallback_dir(prefix: str) -> Path:
    """A private temporary folder (mode 0700) for this process, one per ``prefix``,
    removed when the process exits."""
    with _fallback_lock:
        folder = _fallbacks.get(prefix)
        if folder is None or not folder.is_dir():
            folder = Path(tempfile.mkdtemp(prefix=prefix))
            _fallbacks[prefix] = folder
            atexit.register(_remove, folder, os.getpid())
        return folder


def _remove(folder: Path, owner_pid: int) -> None:
    # a forked child that exits normally runs the handlers too: the folder is the parent's
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)
