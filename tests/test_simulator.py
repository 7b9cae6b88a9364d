"""The real cuda_src kernels, through the real launch code, on the CPU simulator.

``CARAFE_CUPY_SIMULATOR=1`` swaps only the final launch call; kernel choice,
grid, argument marshalling and output allocation are the GPU path's own.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cases import (
    assert_close,
    config_id,
    config_matrix,
    exact_expected,
    make_exact_inputs,
    torch_dtypes,
)

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy._sim import cache as sim_cache  # noqa: E402
from carafe_cupy._sim import runtime as sim_runtime  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

DTYPES = torch_dtypes()
ORDERS = ("forward", "reverse", "warp-serial", "random-warp")


@pytest.fixture(params=ORDERS)
def simulator(request, monkeypatch):
    """The simulator, scheduling threads in the given order between barriers."""
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    runtime = sim_runtime.SimRuntime(request.param)
    monkeypatch.setattr(sim_runtime, "_runtime", runtime)
    return runtime


@pytest.mark.parametrize("config", config_matrix(), ids=config_id)
def test_kernels_match_naive_in_every_dtype(simulator, config):
    *_, k, g, s = config
    want_output, want_grad_features, want_grad_masks = exact_expected(config)
    for dtype_name, dtype in DTYPES.items():
        features, masks, grad_output = (
            torch.from_numpy(a).to(dtype) for a in make_exact_inputs(config)
        )
        features.requires_grad_()
        masks.requires_grad_()
        output = carafe_cupy.carafe(features, masks, k, g, s)
        output.backward(grad_output)
        assert output.dtype == features.grad.dtype == masks.grad.dtype == dtype
        assert_close(output.detach().double(), want_output, dtype_name, "output")
        assert_close(features.grad.double(), want_grad_features, dtype_name, "grad_features")
        assert_close(masks.grad.double(), want_grad_masks, dtype_name, "grad_masks")


def test_golden_data(simulator):
    from test_golden import GROUP_SIZE, KERNEL_SIZE, SCALE_FACTOR, load

    features = load("feat").requires_grad_()
    masks = load("mask").requires_grad_()
    output = carafe_cupy.carafe(features, masks, KERNEL_SIZE, GROUP_SIZE, SCALE_FACTOR)
    output.sum().backward()
    torch.testing.assert_close(output.detach(), load("output"), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.grad, load("feat_grad"), atol=1e-5, rtol=0)
    torch.testing.assert_close(masks.grad, load("mask_grad"), atol=1e-5, rtol=0)


def test_launch_goes_through_the_simulator(simulator, monkeypatch):
    calls = []
    original = simulator.launch

    def counting_launch(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(simulator, "launch", counting_launch)
    features = torch.randn(1, 4, 3, 3, requires_grad=True)
    masks = torch.rand(1, 18, 6, 6, requires_grad=True)
    carafe_cupy.carafe(features, masks, 3, 2, 2).sum().backward()
    assert calls == [
        "carafe_forward_tiled_k3_p4_float32",  # 2 x 2 pixels a thread at even s
        # one pixel a thread: one tile, where a lone four-pixel block would run
        # at a quarter of its SM's issue rate (the planner's grid fit)
        "carafe_backward_features_tiled_k3_float32",
        "carafe_backward_masks_tiled_k3_p1_float32",  # autograd's grad of sum() is expanded
    ]


def test_non_contiguous_and_channels_last(simulator):
    config = (2, 8, 5, 6, 5, 2, 2)
    features, masks, grad_output = make_exact_inputs(config)
    want_output, want_gf, want_gm = exact_expected(config)
    f = torch.from_numpy(features).float().to(memory_format=torch.channels_last)
    m = torch.from_numpy(masks).float().transpose(2, 3).contiguous().transpose(2, 3)
    go = torch.from_numpy(grad_output).float()[:, :, :, :].transpose(0, 1).contiguous()
    go = go.transpose(0, 1)
    output = carafe_cupy.carafe(f, m, 5, 2, 2)
    assert output.is_contiguous(memory_format=torch.channels_last)
    assert_close(output, want_output, "float32", "output")
    grad_features, grad_masks = carafe_cupy.carafe_backward(go, f, m, 5, 2, 2)
    assert_close(grad_features, want_gf, "float32", "grad_features")
    assert_close(grad_masks, want_gm, "float32", "grad_masks")


def test_numpy_arrays_take_the_array_front_end(simulator):
    config = (2, 4, 3, 5, 3, 2, 3)
    features, masks, grad_output = (a.astype(np.float32) for a in make_exact_inputs(config))
    want_output, want_gf, want_gm = exact_expected(config)
    output = carafe_cupy.carafe(features, masks, 3, 2, 3)
    assert isinstance(output, np.ndarray) and output.dtype == np.float32
    assert_close(output, want_output, "float32", "output")
    grad_features, grad_masks = carafe_cupy.carafe_backward(grad_output, features, masks, 3, 2, 3)
    assert_close(grad_features, want_gf, "float32", "grad_features")
    assert_close(grad_masks, want_gm, "float32", "grad_masks")


def test_empty_batch_launches_nothing(simulator, monkeypatch):
    monkeypatch.setattr(simulator, "launch", lambda *a, **k: pytest.fail("launched"))
    features = torch.randn(0, 4, 3, 3, requires_grad=True)
    masks = torch.rand(0, 18, 6, 6, requires_grad=True)
    output = carafe_cupy.carafe(features, masks, 3, 2, 2)
    output.sum().backward()
    assert output.shape == (0, 4, 6, 6)


def test_backward_is_bitwise_deterministic(simulator):
    config = (1, 8, 4, 4, 5, 4, 2)
    features, masks, grad_output = (torch.from_numpy(a).float() for a in make_exact_inputs(config))
    features += 1e-3 * torch.randn_like(features)  # inexact sums: order would matter
    first = carafe_cupy.carafe_backward(grad_output, features, masks, 5, 4, 2)
    second = carafe_cupy.carafe_backward(grad_output, features, masks, 5, 4, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_eight_concurrent_first_calls_compile_once(tmp_path, monkeypatch):
    """Compile-on-first-use through the launch layer: one build, eight right answers."""
    import threading

    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    monkeypatch.setenv("CARAFE_CUPY_SIM_CACHE", str(tmp_path))  # empty: a real compile
    monkeypatch.setattr(sim_runtime, "_runtime", sim_runtime.SimRuntime("random", seed=3))
    monkeypatch.setattr(sim_cache, "_modules", {})  # forget what this process loaded
    monkeypatch.setattr(sim_cache, "_memo", {})
    before = sim_runtime.get_runtime().compile_count()

    config = (1, 4, 3, 4, 3, 2, 2)
    features, masks, _ = (torch.from_numpy(a).float() for a in make_exact_inputs(config))
    want_output = exact_expected(config)[0]
    start = threading.Barrier(8)
    outputs: list = [None] * 8
    errors: list = []

    def first_call(index: int) -> None:
        try:
            start.wait()
            outputs[index] = carafe_cupy.carafe(features, masks, 3, 2, 2)
        except Exception as error:  # reported below with the thread's index
            errors.append((index, error))

    threads = [threading.Thread(target=first_call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert sim_runtime.get_runtime().compile_count() - before == 1
    for output in outputs:
        assert_close(output, want_output, "float32", "output")


@pytest.mark.parametrize(
    ("weak_barriers", "order"),
    [
        # no barrier waits: threads run ahead of each other in any order
        (2, "forward"),
        (2, "reverse"),
        # block barriers wait for the warp only: a warp must run ahead
        (1, "warp-serial"),
        (1, "random-warp"),
    ],
)
def test_weakened_barriers_in_the_tiled_kernels_give_wrong_answers(
    weak_barriers, order, monkeypatch
):
    """The simulator (threads scheduled in ``order``, shared memory starting as
    garbage) turns barriers that do not wait for the whole block into wrong
    answers in every tiled kernel. The scheduler weakens them when built with
    -DCARAFE_SIM_WEAK_BARRIERS; the kernel source is not touched."""
    from carafe_cupy._plan import planner as _planner

    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    monkeypatch.setenv("CARAFE_CUPY_SIM_CXXFLAGS", f"-DCARAFE_SIM_WEAK_BARRIERS={weak_barriers}")
    monkeypatch.setattr(sim_runtime, "_runtime", sim_runtime.SimRuntime(order))
    config = (1, 4, 5, 6, 3, 1, 2)
    features, masks, grad_output = (torch.from_numpy(a) for a in make_exact_inputs(config))
    with _planner.forced_variant("tiled"):
        output = carafe_cupy.carafe(features, masks, 3, 1, 2)
        grads = carafe_cupy.carafe_backward(grad_output, features, masks, 3, 1, 2)
    for got, want in zip((output, *grads), exact_expected(config)):
        assert not np.allclose(got.numpy(), want)
