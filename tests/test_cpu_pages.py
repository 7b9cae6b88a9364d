"""A large CPU result's pages are faulted in by all the threads, each over its own
stretch of huge pages, before the kernels write it: the stretches cover the
storage, end on huge-page boundaries, and results keep their bits."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy._cpu import jit_dispatch, pages  # noqa: E402


def test_stretches_cover_the_storage_and_end_on_huge_page_boundaries():
    assert pages.first_touch_ranges(torch.empty(1024), 2) == []  # below MIN_BYTES
    result = torch.empty(3 << 20)[1:]  # 12 MiB, a view starting one element in
    assert pages.first_touch_ranges(result, 1) == []
    size, base = result.untyped_storage().nbytes(), result.untyped_storage().data_ptr()
    for parts in (2, 3, 5):
        stretches = pages.first_touch_ranges(result, parts)
        assert 2 <= len(stretches) <= parts
        assert stretches[0][0] == 0 and stretches[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(stretches, stretches[1:]))
        assert all((base + end) % pages.HUGE_PAGE == 0 for _, end in stretches[:-1])


def test_first_touch_writes_one_zero_byte_per_page_of_its_stretch_only():
    result = torch.full((1 << 20,), -1, dtype=torch.int32)  # 4 MiB of 0xff bytes
    raw = torch.empty(0, dtype=torch.uint8).set_(result.untyped_storage())
    pages.first_touch(result, (8192, 20480))
    touched = (raw == 0).nonzero().flatten().tolist()
    assert touched == [8192, 12288, 16384]


def test_a_large_result_with_threads_is_touched_first_and_keeps_its_bits(monkeypatch):
    monkeypatch.setenv(jit_dispatch.ENVIRONMENT_VARIABLE, "numba")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 128, 64, 64, generator=generator)  # an 8 MiB result
    masks = torch.rand(1, 9, 128, 128, generator=generator)
    touched = []
    first_touch = pages.first_touch
    monkeypatch.setattr(pages, "first_touch", lambda t, r: touched.append(r) or first_touch(t, r))
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2):
            torch.set_num_threads(count)
            runs.append(carafe_cupy.carafe(features, masks, 3, 1, 2))
    finally:
        torch.set_num_threads(threads)
    assert len(touched) >= 2  # only the two-thread call
    assert torch.equal(runs[0], runs[1])
