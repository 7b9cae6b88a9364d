"""Sizes no memory could hold are refused before anything is allocated, naming what
sets them and the bytes; index arithmetic that would overflow is refused; the
pure-PyTorch path's memory stays O(input + output) at any dilation, and its work
follows the taps that can touch the image, not k*k. CuPy arrays (a fake CuPy on
numpy memory) take the same size and layout checks."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy import arrays  # noqa: E402
from carafe_cupy._core import limits  # noqa: E402
from carafe_cupy._cpu import path as cpu_path  # noqa: E402

from backends import BACKENDS  # noqa: E402
from naive import naive_carafe, naive_carafe_backward  # noqa: E402

# A pretend machine: its host memory, and that of any GPU on it.
CAPACITY = 16 * 10**9
HUGE = 10**6  # s = 10**6 on a 1x1 image: an output of 10**12 elements


@pytest.fixture
def pretend_machine(monkeypatch):
    monkeypatch.setattr(limits, "host_memory_bytes", lambda: CAPACITY)
    monkeypatch.setattr(cpu_path, "_cuda_memory_bytes", lambda index: CAPACITY)


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def backend(request, pretend_machine):
    with request.param.active():
        yield request.param


def expanded(*shape, dtype=torch.float32, device="cpu"):
    """A tensor of ``shape`` that holds one element (every stride 0)."""
    return torch.ones((1,) * len(shape), dtype=dtype, device=device).expand(*shape)


# ---------------------------------------------------------------- the memory there is


def test_host_memory_is_the_physical_memory_or_a_lower_cgroup_limit(monkeypatch, tmp_path):
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < limits.host_memory_bytes() <= physical
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(limits, "_CGROUP_LIMITS", (limit,))
    limit.write_text("max\n")
    assert limits.host_memory_bytes() == physical
    limit.write_text(f"{physical // 3}\n")
    assert limits.host_memory_bytes() == physical // 3


def test_bytes_are_written_in_decimal_units():
    assert limits.format_bytes(999) == "999 bytes"
    assert limits.format_bytes(57_600_000_000) == "57.6 GB"
    assert limits.format_bytes(8 * 10**12) == "8.0 TB"


# ---------------------------------------------------------------- outputs


def test_an_output_no_memory_holds_is_refused_before_it_is_allocated(backend):
    """carafe(f(1,1,1,1), ones(1,1,1,1).expand(1,1,10**6,10**6), 1, 1, 10**6):
    4 TB of output, refused with the bytes and the argument behind them."""
    features = torch.randn(1, 1, 1, 1, device=backend.device)
    masks = expanded(1, 1, HUGE, HUGE, device=backend.device)
    output_bytes = HUGE * HUGE * 4
    for call in (
        lambda: carafe_cupy.carafe(features, masks, 1, 1, HUGE),
        lambda: torch.ops.carafe_cupy.carafe_forward(features, masks, 1, 1, HUGE),
    ):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"carafe: the output (1, 1, {HUGE}, {HUGE})"), message
        assert f"{output_bytes} bytes" in message and "scale_factor=1000000" in message
        assert f"more than all the memory of the host (cpu) ({CAPACITY} bytes" in message


def test_a_cast_of_an_expanded_input_counts_at_its_full_size(backend):
    """float64 features promote the expanded float32 masks: a full-size copy."""
    features = torch.randn(1, 1, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"masks cast to float64 \({HUGE * HUGE * 8} bytes\)"):
        carafe_cupy.carafe(features, expanded(1, 1, HUGE, HUGE), 1, 1, HUGE)


def test_gradients_no_memory_holds_are_refused(backend):
    features = torch.randn(1, 1, 1, 1)
    masks, grad_output = expanded(1, 1, HUGE, HUGE), expanded(1, 1, HUGE, HUGE)
    with pytest.raises(ValueError) as info:
        carafe_cupy.carafe_backward(grad_output, features, masks, 1, 1, HUGE)
    assert f"grad_masks (1, 1, {HUGE}, {HUGE}) ({HUGE * HUGE * 4} bytes)" in str(info.value)
    with pytest.raises(ValueError, match=rf"grad_kernels \(1, 1, {HUGE}, {HUGE}\)"):
        carafe_cupy.reassemble_backward(grad_output, features, masks, 1, 1, HUGE)


def test_logits_no_memory_holds_are_refused(backend):
    features = torch.randn(1, 1, 1, 1)
    logits = expanded(1, HUGE * HUGE, 1, 1)
    with pytest.raises(ValueError, match=rf"^carafe_from_logits: .*{HUGE * HUGE * 4} bytes"):
        carafe_cupy.carafe_from_logits(features, logits, 1, 1, HUGE)


def test_arrays_no_memory_holds_are_refused(monkeypatch, pretend_machine):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    features = np.ones((1, 1, 1, 1), np.float32)
    masks = np.broadcast_to(np.ones((1, 1, 1, 1), np.float32), (1, 1, HUGE, HUGE))
    with pytest.raises(ValueError, match=rf"^carafe: the output .* {HUGE * HUGE * 4} bytes"):
        arrays.carafe(features, masks, 1, 1, HUGE)
    with pytest.raises(ValueError, match=r"^reassemble_backward: .*grad_kernels"):
        arrays.reassemble_backward(masks, features, masks, 1, 1, HUGE)


def test_the_limit_is_all_the_memory_there_is():
    limits.check_fits("where", [("a", 10), ("b", 5)], 15, "the device", "cause")
    limits.check_fits("where", [("a", 10)], None, "the device", "cause")  # unknown: allowed
    with pytest.raises(ValueError) as info:
        limits.check_fits("where", [("a", 10), ("b", 5)], 14, "the device", "cause")
    assert str(info.value) == (
        "where: a (10 bytes) and b (5 bytes) would take 15 bytes (15 bytes) in all, more "
        "than all the memory of the device (14 bytes, 14 bytes); cause"
    )


def test_calls_run_until_the_memory_runs_out(monkeypatch, backend):
    features, masks = torch.randn(1, 2, 3, 3), torch.rand(1, 9, 6, 6)
    output_bytes = 2 * 6 * 6 * 4
    monkeypatch.setattr(limits, "host_memory_bytes", lambda: 10**9)
    assert carafe_cupy.carafe(features, masks, 3, 1, 2).shape == (1, 2, 6, 6)
    monkeypatch.setattr(limits, "host_memory_bytes", lambda: output_bytes - 1)
    with pytest.raises(ValueError, match=r"the output \(1, 2, 6, 6\)"):
        carafe_cupy.carafe(features, masks, 3, 1, 2)


# ---------------------------------------------------------------- index arithmetic


@pytest.mark.parametrize("front_end", ["torch", "arrays"])
def test_a_dilation_past_64_bit_offsets_is_refused(monkeypatch, front_end):
    """dilation = 2**62 with k = 3: the window reaches 2**63 pixels."""
    features, kernels = np.ones((1, 4, 8, 8), np.float32), np.ones((1, 9, 8, 8), np.float32)
    if front_end == "arrays":
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
        call = arrays.reassemble
    else:
        features, kernels = torch.from_numpy(features), torch.from_numpy(kernels)
        call = carafe_cupy.reassemble
    with pytest.raises(ValueError, match=r"dilation \(4611686018427387904\) is too large"):
        call(features, kernels, 3, 1, 1, 1, 2**62)
    with pytest.raises(
        ValueError,
        match=rf"dilation \(3\) with stride \({2**62}\) is too large: .* = {3 * 2**62}, more",
    ):
        call(features, kernels[..., :1, :1], 3, 1, 1, 2**62, 3)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
def test_the_largest_dilation_that_fits_gives_the_center_tap(backend):
    """k = 3 on a 1x3 image with (k - 1)*d + max(H, W) = 2**63 - 1 exactly: the side
    taps lie 2**62 - 2 pixels away, outside; the center tap alone remains."""
    dilation = 2**62 - 2
    rng = np.random.default_rng(0)
    config = (rng.standard_normal((1, 2, 1, 3)), rng.random((1, 9, 1, 3)))
    grad_output = rng.standard_normal((1, 2, 1, 3))
    features, kernels = (torch.tensor(a, requires_grad=True) for a in config)
    with backend.active():
        output = carafe_cupy.reassemble(features, kernels, 3, 1, 1, 1, dilation)
        output.backward(torch.from_numpy(grad_output))
    np.testing.assert_allclose(output.detach(), naive_carafe(*config, 3, 1, 1, 1, dilation))
    expected = naive_carafe_backward(grad_output, *config, 3, 1, 1, 1, dilation)
    np.testing.assert_allclose(features.grad, expected[0])
    np.testing.assert_allclose(kernels.grad, expected[1])


# ---------------------------------------------------------------- module weights


@pytest.mark.parametrize(
    "make, arguments",
    [
        (lambda: carafe_cupy.CARAFEPack(8, 1000), "scale_factor, up_kernel, up_group"),
        (lambda: carafe_cupy.Involution(64, 10001), "kernel_size, or raise group_channels"),
        (lambda: carafe_cupy.CARAFEDownPack(8, 2, down_kernel=4001), "down_kernel, down_group"),
    ],
    ids=["CARAFEPack", "Involution", "CARAFEDownPack"],
)
def test_modules_refuse_weights_no_memory_holds(pretend_machine, make, arguments):
    with pytest.raises(ValueError, match=f"more than all the memory of .*; lower {arguments}"):
        make()


def test_carafepack_names_its_encoder_weight_and_the_bytes(pretend_machine):
    """CARAFEPack(8, 1000): a 64 x (5*5*1*1000*1000) x 3 x 3 encoder weight."""
    values = 64 * 5 * 5 * 1000 * 1000 * 3 * 3
    with pytest.raises(ValueError) as info:
        carafe_cupy.CARAFEPack(8, 1000)
    assert (
        "the content encoder's weight, compressed_channels*up_kernel**2*up_group"
        f"*scale_factor**2*encoder_kernel**2 = 64*5**2*1*1000**2*3**2 = {values} float32 "
        f"values, ({values * 4} bytes)"
    ) in str(info.value)


def test_modules_that_fit_are_built(pretend_machine):
    assert carafe_cupy.CARAFEPack(8, 2).content_encoder.out_channels == 100
    assert carafe_cupy.Involution(64, 7).conv2.conv.out_channels == 4 * 49
    assert carafe_cupy.CARAFEDownPack(8, 2).content_encoder.out_channels == 25


# ---------------------------------------------------------------- the PyTorch path's work


def test_the_tap_span_is_exactly_the_taps_that_can_touch_the_input():
    for k, d, size, t in itertools.product((1, 3, 5, 9), (1, 2, 3, 7), range(1, 9), (1, 2, 3)):
        radius = (k - 1) // 2
        touching = [
            i
            for i in range(k)
            if (lambda span: span[0] < span[1])(cpu_path._tap_ranges((i - radius) * d, size, t))
        ]
        assert cpu_path._tap_span(k, d, size, t) == (touching[0], touching[-1] + 1), (k, d, size, t)
        assert touching == list(range(touching[0], touching[-1] + 1))


@pytest.mark.parametrize("kernel_size, dilation", [(1001, 1), (3, 10**4)])
def test_work_follows_the_taps_that_touch_the_image(monkeypatch, kernel_size, dilation):
    """k = 1001 on a 1x1 image (or taps 10**4 apart on 5x5): a handful of taps can
    read it, and only those are visited, forward and backward."""
    visited = []
    tap_ranges = cpu_path._tap_ranges

    def counted(offset, size, stride=1):
        visited.append(offset)
        return tap_ranges(offset, size, stride)

    monkeypatch.setattr(cpu_path, "_tap_ranges", counted)
    size = 1 if kernel_size > 5 else 5
    features = torch.randn(1, 2, size, size, dtype=torch.float64, requires_grad=True)
    kernels = torch.rand(1, kernel_size**2, size, size, dtype=torch.float64, requires_grad=True)
    output = carafe_cupy.reassemble(features, kernels, kernel_size, 1, 1, 1, dilation)
    output.sum().backward()
    assert set(visited) == {0}, sorted(set(visited))[:10]
    radius = (kernel_size - 1) // 2
    expected = features.detach() * kernels.detach()[:, radius * kernel_size + radius, None]
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    center = torch.zeros(kernel_size**2, dtype=torch.bool)
    center[radius * kernel_size + radius] = True
    assert (kernels.grad[:, ~center] == 0).all()


PEAK_MEMORY = """
import resource, sys, torch, carafe_cupy
k, dilation = 3, int(sys.argv[1])
features = torch.randn(1, 4, 8, 8, requires_grad=True)
kernels = torch.rand(1, 9, 8, 8, requires_grad=True)
for d in (1, dilation):  # the first call loads and warms everything up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    carafe_cupy.reassemble(features, kernels, k, 1, 1, 1, d).sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_backward_memory_does_not_grow_with_the_dilation():
    """Padding the input by (k - 1)*d/2 on every side, as the backward once did,
    takes (H + (k-1)*d)**2 * C floats, twice: 514 MB at d = 2000 for 4 x 8 x 8
    features. Peak memory (a child process's max RSS) grows by far less."""
    dilation, channels, height = 2000, 4, 8
    padded_bytes = 2 * (height + 2 * dilation) ** 2 * channels * 4
    budget = cpu_path.BACKWARD_TILE_ELEMENTS * 4 * torch.get_num_threads()
    allowed = budget + 64 * 2**20  # the tiles of every worker, and allocator slack
    assert padded_bytes > 4 * allowed, "the test must tell the two apart"
    env = {**os.environ, "CARAFE_CUPY_SIMULATOR": "0"}
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PEAK_MEMORY), str(dilation)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    grown = int(child.stdout.split()[-1])
    assert grown < allowed, f"peak RSS grew {grown} bytes; padding would take {padded_bytes}"


def fake_cupy(monkeypatch):
    """CuPy's array front end on numpy memory, with one 80 GB GPU."""
    from test_launch_device_stream import FakeCupy

    from carafe_cupy._runtime import cupy_runtime

    fake = FakeCupy(streams={0: 0x100})
    monkeypatch.setitem(sys.modules, "cupy", fake)  # is_cupy_array looks here
    monkeypatch.setattr(cupy_runtime, "_import_cupy", lambda: fake)
    return fake


def test_cupy_arrays_no_gpu_memory_holds_are_refused(monkeypatch):
    fake = fake_cupy(monkeypatch)
    features = fake.ndarray(np.ones((1, 1, 1, 1), np.float32), 0)
    masks = fake.ndarray(np.broadcast_to(np.ones((1, 1, 1, 1), np.float32), (1, 1, HUGE, HUGE)), 0)
    with pytest.raises(ValueError) as info:
        arrays.carafe(features, masks, 1, 1, HUGE)
    assert str(info.value).startswith(
        f"carafe: the output (1, 1, {HUGE}, {HUGE}) would take {HUGE * HUGE * 4} bytes (4.0 TB), "
        f"more than all the memory of cuda:0 ({80 * 10**9} bytes, 80.0 GB); "
    )


def test_cupy_arrays_with_uneven_strides_are_refused_naming_them(monkeypatch):
    fake = fake_cupy(monkeypatch)
    records = np.zeros(1 * 4 * 3 * 5, dtype=[("tag", "u1"), ("value", "<f4")])
    features = fake.ndarray(records["value"].reshape(1, 4, 3, 5), 0)
    masks = fake.ndarray(np.ones((1, 9, 6, 10), np.float32), 0)
    with pytest.raises(TypeError, match=r"^carafe: features has byte strides \(300, 75, 25, 5\)"):
        arrays.carafe(features, masks, 3, 1, 2)
    with pytest.raises(TypeError, match=r"pass cupy\.ascontiguousarray\(features\) instead$"):
        arrays.carafe(features, masks, 3, 1, 2)
