"""The first call of the compiled CPU kernels (``_cpu.jit_compile``, ``jit_cache``):
a kernel loads from the disk cache without Numba's compiler set-up, and still
compiles (with the set-up) when it is not cached; Python's cyclic garbage
collector is paused while a kernel compiles or loads, and is always given back,
to a forked child too."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
numba = pytest.importorskip("numba")

from numba.core import event  # noqa: E402

from carafe_cupy._cpu import jit_backward, jit_cache, jit_compile, jit_forward, jit_narrow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # a hang fails the test instead of the run
KERNELS = (jit_forward.forward, jit_narrow.forward, jit_backward.gradients)


def _python(code: str, **environment: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if key not in ("NUMBA_DISABLE_JIT", "NUMBA_CACHE_DIR", "CARAFE_CUPY_CPU_WARMUP")}
    env.update(environment, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               CARAFE_CUPY_CPU_KERNEL="numba")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture
def collector_on():
    """The collector on for the test, as it was after it."""
    was_enabled = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was_enabled else gc.disable)()


def test_the_kernels_have_the_light_cache_and_the_paused_compile():
    for dispatcher in KERNELS:
        assert type(dispatcher._cache).__name__ == "KernelCache", dispatcher
        assert isinstance(dispatcher._cache, numba.core.caching.FunctionCache)
        if not jit_cache.user_cache_dir():
            assert Path(dispatcher._cache._cache_path) == jit_cache.cache_dir()
        assert dispatcher.compile.__wrapped__.__self__ is dispatcher


def test_the_collector_is_off_inside_nested_blocks_and_on_after(collector_on):
    with jit_compile.collector_paused():
        assert not gc.isenabled()
        with jit_compile.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_the_program_switched_off_stays_off(collector_on):
    gc.disable()
    with jit_compile.collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_overlapping_blocks_of_two_threads_give_the_collector_back_after_the_last(
        collector_on):
    entered, leave = threading.Event(), threading.Event()

    def other_thread():
        with jit_compile.collector_paused():
            entered.set()
            leave.wait(TIMEOUT)

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert entered.wait(TIMEOUT)
    with jit_compile.collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's block is still open
    leave.set()
    thread.join(TIMEOUT)
    assert gc.isenabled()


def test_a_compile_runs_with_the_collector_paused(collector_on):
    @numba.njit
    def add_one(value):
        return value + 1

    jit_compile._compiled_with_collector_paused(add_one)
    states = []

    class Listener(event.Listener):
        def on_start(self, item):
            states.append(gc.isenabled())

        def on_end(self, item):
            pass

    listener = Listener()
    event.register("numba:compile", listener)
    try:
        assert add_one(1) == 2 and add_one(1.5) == 2.5
    finally:
        event.unregister("numba:compile", listener)
    assert states == [False, False]
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_during_a_paused_block_gets_its_collector_back():
    code = """
    import gc, os, threading
    from carafe_cupy._cpu import jit_compile
    entered, leave = threading.Event(), threading.Event()
    def compiling():
        with jit_compile.collector_paused():
            entered.set()
            leave.wait(60)
    thread = threading.Thread(target=compiling)
    thread.start()
    assert entered.wait(60) and not gc.isenabled()
    pid = os.fork()
    if pid == 0:
        ok = gc.isenabled()
        with jit_compile.collector_paused():  # and the child can pause it again
            ok = ok and not gc.isenabled()
        os._exit(0 if ok and gc.isenabled() else 1)
    child = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    paused_in_parent = not gc.isenabled()
    leave.set()
    thread.join(60)
    print(child, paused_in_parent, gc.isenabled())
    """
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "True", "True"], result.stdout


# One step in a fresh process on an fp32 input: the forward, or the forward then the
# backward, checked against the naive reference. It prints whether any kernel was
# compiled (not loaded), whether Numba's compiler set-up had run (it imports
# numba.np.arraymath) after the forward and at the end, the forward's cache hits and
# misses, and whether a function of the program still compiles after it all.
_STEP = """
import sys, numpy as np, numba, torch, carafe_cupy
from numba.core import event
from cases import assert_close
from naive import naive_carafe, naive_carafe_backward
from carafe_cupy._cpu import jit_forward
steps = sys.argv[1]
features = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(0))
masks = torch.rand(1, 2 * 9, 10, 12, generator=torch.Generator().manual_seed(1))
arrays = features.numpy(), masks.numpy()
with event.install_recorder("numba:compile") as recorder:
    out = carafe_cupy.carafe(features, masks, 3, 2, 2)
    after_forward = "numba.np.arraymath" in sys.modules
    assert_close(out.numpy(), naive_carafe(*arrays, 3, 2, 2), "float32", "forward")
    if steps == "forward,backward":
        grad = torch.ones_like(out)
        got = carafe_cupy.carafe_backward(grad, features, masks, 3, 2, 2)
        want = naive_carafe_backward(grad.numpy(), *arrays, 3, 2, 2)
        for a, b, what in zip(got, want, ("grad_features", "grad_masks")):
            assert_close(a.numpy(), b, "float32", what)
compiled = any(item.is_start for _, item in recorder.buffer)
at_end = "numba.np.arraymath" in sys.modules
stats = jit_forward.forward.stats
later = numba.njit(lambda values: values.sum())(np.ones(3)) == 3
print(compiled, after_forward, at_end, sum(stats.cache_hits.values()),
      sum(stats.cache_misses.values()), later)
"""


def test_cached_kernels_load_without_the_set_up_and_uncached_ones_still_compile(tmp_path):
    cache = {"CARAFE_CUPY_CPU_CACHE": str(tmp_path / "cache")}
    runs = [
        # an empty cache: the forward compiles, after the set-up
        ("forward", "True True True 0 1 True"),
        # the forward loads without the set-up; the backward compiles, after it
        ("forward,backward", "True False True 1 0 True"),
        # all three load: no set-up at all, until the program compiles its own
        ("forward,backward", "False False False 1 0 True"),
    ]
    for steps, expected in runs:
        result = _python(_STEP.replace("sys.argv[1]", repr(steps)), **cache)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == expected.split(), (steps, result.stdout, result.stderr)
