"""Host overhead per call: planning and argument marshalling in ``_runtime.launch``,
with the kernel launch itself replaced by a no-op."""

from __future__ import annotations

import contextlib
import time

from .._plan.planner import Geometry
from .._runtime import launch as _launch
from .traffic import ROLES, _contiguous, role_shape


@contextlib.contextmanager
def _launch_stubbed():
    original = _launch.launch
    _launch.launch = lambda *args, **kwargs: None
    try:
        yield
    finally:
        _launch.launch = original


def host_overhead_us(geometry: Geometry, dtype: str, calls: int = 2000) -> tuple[float, float]:
    """µs per ``launch_forward`` and per ``launch_backward`` (both gradients): the best of
    five batches, so other load on the machine inflates it least."""
    forward = [_contiguous(role_shape(role, geometry), dtype) for role in ROLES["forward"]]
    backward = [_contiguous(role_shape(role, geometry), dtype) for role in ROLES["backward"]]
    results = []
    with _launch_stubbed():
        for function, refs in (
            (_launch.launch_forward, forward),
            (_launch.launch_backward, backward),
        ):
            function(geometry, *refs)  # the first call plans; later ones hit the cache
            samples = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(calls // 5):
                    function(geometry, *refs)
                samples.append((time.perf_counter() - start) / (calls // 5) * 1e6)
            results.append(min(samples))
    return results[0], results[1]
