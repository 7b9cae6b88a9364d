"""Preparing the compiled CPU kernels on a background thread before a call needs them.

``jit_dispatch`` starts it on two occasions:

* after a CPU forward whose inputs require grad, for the backward kernels of that
  dtype: compiled (an empty cache) or loaded while the rest of the network's
  forward, and its backward down to this op, run. Numba's compiler lock allows
  one compile at a time, so this only helps when the caller has other work.
* when the package is imported, if ``CARAFE_CUPY_CPU_WARMUP`` is on: Numba's
  one-time set-up of a process (most of a first call's cost when the kernels
  are cached) and the fp32 kernels. Off by default: it imports numba, and what
  numba imports (scipy among them), on a second thread while the program may be
  importing on its own, and CPython fails one of two threads that import
  modules of one import cycle at the same time (``_DeadlockError``); it would
  also cost every process that never computes on CPU tensors.

Neither runs when the pure-PyTorch path is asked for (``CARAFE_CUPY_CPU_KERNEL=
torch``), when numba is not installed or its compiler is switched off
(``NUMBA_DISABLE_JIT``). A task runs the real dispatch on a tiny input, so it
prepares exactly the kernels a call will use; anything it raises is dropped,
for the real call to meet and report. A fork waits for running tasks (a child
would inherit their locks held, by threads it does not have).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Hashable

from .._core import env as _env
from .jit_choice import requested

ENVIRONMENT_VARIABLE = "CARAFE_CUPY_CPU_WARMUP"
THREAD_NAME = "carafe_cupy_cpu_warmup"
# how long a fork waits for a running task before it goes ahead regardless (a cold
# compile on a busy 2-core machine has taken over a minute)
FORK_WAIT_SECONDS = 300.0

_lock = threading.Lock()
_tasks: dict[Hashable, threading.Thread] = {}


def at_import_requested() -> bool:
    """Whether ``CARAFE_CUPY_CPU_WARMUP`` asks for the warm-up at import (default
    off); ValueError for a value that is not a boolean."""
    return _env.flag(ENVIRONMENT_VARIABLE)


def allowed() -> bool:
    """Whether a warm-up may start: the kernels could be chosen, and numba is
    there with its compiler on. Decided without importing numba."""
    try:
        if requested() == "torch":
            return False
    except ValueError:  # the real call reports a bad setting
        return False
    numba = _imported_numba()
    if numba is not None:
        return not numba.config.DISABLE_JIT
    if os.environ.get("NUMBA_DISABLE_JIT", "0").strip() not in ("", "0"):
        return False
    return importlib.util.find_spec("numba") is not None


def _imported_numba():
    import sys

    return sys.modules.get("numba")


def start(key: Hashable, task: Callable[[], object]) -> threading.Thread | None:
    """Run ``task`` on a daemon thread, once per ``key`` in this process; None when
    it ran before or may not run (``allowed``)."""
    with _lock:
        if key in _tasks or not allowed():
            return None
        thread = threading.Thread(target=_quietly, args=(task,), name=THREAD_NAME, daemon=True)
        _tasks[key] = thread
    thread.start()
    return thread


def _quietly(task: Callable[[], object]) -> None:
    try:
        task()
    except BaseException:  # noqa: BLE001  (the real call meets it again and reports it)
        pass


def running() -> list[threading.Thread]:
    """The tasks still running."""
    with _lock:
        return [thread for thread in _tasks.values() if thread.is_alive()]


def wait(timeout: float | None = None) -> bool:
    """Wait for the running tasks (not the calling one); True when none is left."""
    for thread in running():
        if thread is not threading.current_thread():
            thread.join(timeout)
    return not [thread for thread in running() if thread is not threading.current_thread()]


def _before_fork() -> None:
    wait(FORK_WAIT_SECONDS)


def _after_fork_in_child() -> None:
    # the child has none of the threads; a key stays spent, as the parent prepared it
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
