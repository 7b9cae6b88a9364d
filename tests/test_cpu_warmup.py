"""The compiled CPU kernels prepared on a background thread (``_cpu.jit_warmup``):
the backward after a forward that needs grad, the fp32 kernels at import when
asked; never for the pure-PyTorch path or with Numba's compiler off; never a
deadlock, and a fork waits for it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
numba = pytest.importorskip("numba")

from numba.core import event  # noqa: E402

import carafe_cupy  # noqa: E402
from carafe_cupy._cpu import jit_dispatch, jit_warmup  # noqa: E402

from cases import assert_close  # noqa: E402
from naive import naive_carafe_backward  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # a hang fails the test instead of the run


@pytest.fixture(autouse=True)
def fresh_tasks(monkeypatch):
    """Each test starts with no warm-up run in this process, and the kernels on."""
    monkeypatch.setenv(jit_dispatch.ENVIRONMENT_VARIABLE, "numba")
    monkeypatch.setattr(jit_warmup, "_tasks", {})
    yield
    assert jit_warmup.wait(TIMEOUT)


def _compiles(call) -> int:
    """How many functions Numba compiles (or loads from its cache) during call()."""
    with event.install_recorder("numba:compile") as recorder:
        call()
    return sum(1 for _, item in recorder.buffer if item.is_start)


def test_a_forward_that_needs_grad_prepares_its_backward():
    features = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(1, 2 * 9, 10, 12, dtype=torch.float64)
    out = carafe_cupy.carafe(features, masks, 3, 2, 2)
    assert ("backward", torch.float64) in jit_warmup._tasks
    assert jit_warmup.wait(TIMEOUT)
    grad = torch.randn_like(out)
    grads = []
    assert _compiles(lambda: grads.extend(
        carafe_cupy.carafe_backward(grad, features.detach(), masks, 3, 2, 2))) == 0
    expected = naive_carafe_backward(grad, features.detach(), masks, 3, 2, 2)
    for got, want, what in zip(grads, expected, ("grad_features", "grad_masks")):
        assert_close(got.numpy(), want, "float64", what)


def test_a_forward_without_grad_starts_nothing():
    features, masks = torch.randn(1, 2, 4, 4), torch.rand(1, 9, 8, 8)
    carafe_cupy.carafe(features, masks, 3, 1, 2)
    with torch.no_grad():
        carafe_cupy.carafe(features.requires_grad_(False), masks, 3, 1, 2)
    assert jit_warmup._tasks == {}


def test_no_warm_up_for_the_pytorch_path_or_with_numbas_compiler_off(monkeypatch):
    task = []
    monkeypatch.setenv(jit_dispatch.ENVIRONMENT_VARIABLE, "torch")
    assert not jit_warmup.allowed()
    assert jit_warmup.start("torch", lambda: task.append(1)) is None
    features = torch.randn(1, 2, 4, 4, requires_grad=True)
    carafe_cupy.carafe(features, torch.rand(1, 9, 8, 8), 3, 1, 2)
    monkeypatch.setenv(jit_dispatch.ENVIRONMENT_VARIABLE, "auto")
    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    assert jit_warmup.start("disabled", lambda: task.append(1)) is None
    monkeypatch.setenv(jit_dispatch.ENVIRONMENT_VARIABLE, "no such path")
    assert jit_warmup.start("bad setting", lambda: task.append(1)) is None
    assert task == [] and jit_warmup._tasks == {}


def test_a_failing_task_is_dropped_and_runs_once_per_key():
    runs = []

    def failing():
        runs.append(1)
        raise RuntimeError("left for the real call")

    thread = jit_warmup.start("key", failing)
    assert thread is not None and thread.daemon
    assert jit_warmup.wait(TIMEOUT)
    assert jit_warmup.start("key", failing) is None
    assert runs == [1]


def _python(code: str, **environment: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if key not in ("NUMBA_DISABLE_JIT", "CARAFE_CUPY_CPU_KERNEL")}
    env.update(environment, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


# what a warm-up at import would leave: numba imported, a thread started
_STARTED = """
import sys
from carafe_cupy._cpu import jit_dispatch, jit_warmup
print("numba" in sys.modules, len(jit_warmup._tasks))
"""


@pytest.mark.parametrize("environment", [
    {"CARAFE_CUPY_CPU_KERNEL": "torch"},
    {"NUMBA_DISABLE_JIT": "1"},
    {"CARAFE_CUPY_CPU_WARMUP": "0"},
], ids=["torch-path", "jit-disabled", "not-asked"])
def test_the_warm_up_at_import_only_runs_when_asked_and_allowed(environment):
    result = _python(_STARTED, **{"CARAFE_CUPY_CPU_WARMUP": "1", **environment})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "0"], result.stdout
    asked = _python(_STARTED, CARAFE_CUPY_CPU_WARMUP="1")
    assert asked.stdout.split()[1] == "1", asked.stderr


def test_a_bad_warmup_value_warns_and_the_import_goes_on():
    result = _python(_STARTED, CARAFE_CUPY_CPU_WARMUP="maybe")
    assert result.returncode == 0, result.stderr
    assert "CARAFE_CUPY_CPU_WARMUP must be a boolean" in result.stderr
    assert result.stdout.split() == ["False", "0"]


def test_calls_racing_the_warm_up_at_import_finish_and_agree():
    """Forward and backward from two threads at once, while the warm-up runs."""
    code = """
    import threading, torch, carafe_cupy
    from carafe_cupy._cpu import jit_warmup
    features, masks = torch.randn(1, 4, 5, 5), torch.rand(1, 9, 10, 10)
    results = []
    def step():
        out = carafe_cupy.carafe(features, masks, 3, 1, 2)
        results.append((out, *carafe_cupy.carafe_backward(out, features, masks, 3, 1, 2)))
    threads = [threading.Thread(target=step) for _ in range(2)]
    [thread.start() for thread in threads]
    step()
    [thread.join() for thread in threads]
    assert jit_warmup.wait(60) and len(jit_warmup._tasks) == 1
    assert all(torch.equal(a, b) for other in results[1:] for a, b in zip(results[0], other))
    print("ok")
    """
    result = _python(code, CARAFE_CUPY_CPU_WARMUP="1", CARAFE_CUPY_CPU_KERNEL="numba")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_fork_waits_for_the_warm_up_so_the_child_can_compile(tmp_path):
    """Forked while the warm-up compiles (an empty cache), the child can still compile:
    without the wait it would inherit Numba's compiler lock held by a thread it lacks."""
    code = """
    import os, signal, threading, time, numba
    from numba.core import event
    compiling = threading.Event()
    class Listener(event.Listener):
        def on_start(self, item): compiling.set()
        def on_end(self, item): pass
    event.register("numba:compile", Listener())
    from carafe_cupy._cpu import jit_dispatch, jit_warmup
    assert compiling.wait(120) and jit_warmup.running()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if numba.njit(lambda x: x + 1)(1) == 2 else 1)
    deadline, finished = time.monotonic() + 120, (0, 0)
    while finished == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
        finished = os.waitpid(pid, os.WNOHANG)
    if finished == (0, 0):
        os.kill(pid, signal.SIGKILL)
        print("hung")
    else:
        print(os.waitstatus_to_exitcode(finished[1]), jit_warmup.running())
    """
    result = _python(code, CARAFE_CUPY_CPU_WARMUP="1", CARAFE_CUPY_CPU_KERNEL="numba",
                     CARAFE_CUPY_CPU_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "[]"], result.stdout
