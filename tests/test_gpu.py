"""The NVRTC kernels on a real GPU: skipped (with the reason) where there is none."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime  # noqa: E402

from cases import assert_close, config_id, config_matrix, make_inputs, torch_dtypes  # noqa: E402
from naive import naive_carafe, naive_carafe_backward  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
    pytest.mark.skipif(
        not _cupy_runtime.gpu_kernels_available(), reason="CuPy with NVRTC and a GPU not available"
    ),
]

DTYPES = torch_dtypes()


def run(inputs, params, device):
    features, masks, grad_output = (t.detach().to(device).clone() for t in inputs)
    features.requires_grad_()
    masks.requires_grad_()
    output = carafe_cupy.carafe(features, masks, *params)
    output.backward(grad_output)
    return output.detach(), features.grad, masks.grad


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("config", config_matrix(), ids=config_id)
def test_kernels_match_naive(config, dtype):
    *_, k, g, s = config
    inputs = [torch.from_numpy(a).to(DTYPES[dtype]) for a in make_inputs(config)]
    output, grad_features, grad_masks = run(inputs, (k, g, s), "cuda")
    f, m, go = (t.double().numpy() for t in inputs)
    assert output.dtype == DTYPES[dtype]
    assert_close(output.double().cpu(), naive_carafe(f, m, k, g, s), dtype, "output")
    expected_gf, expected_gm = naive_carafe_backward(go, f, m, k, g, s)
    assert_close(grad_features.double().cpu(), expected_gf, dtype, "grad_features")
    assert_close(grad_masks.double().cpu(), expected_gm, dtype, "grad_masks")


@pytest.mark.parametrize("config", config_matrix()[::5], ids=config_id)
def test_kernels_match_cpu_path(config):
    *_, k, g, s = config
    inputs = [torch.from_numpy(a).float() for a in make_inputs(config)]
    on_gpu = run(inputs, (k, g, s), "cuda")
    on_cpu = run(inputs, (k, g, s), "cpu")
    for gpu, cpu in zip(on_gpu, on_cpu):
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)


def test_non_contiguous_and_channels_last():
    config = (2, 8, 5, 6, 5, 2, 2)
    f, m, go = make_inputs(config)
    features = torch.from_numpy(f).cuda().to(memory_format=torch.channels_last)
    masks = torch.from_numpy(m).cuda().transpose(2, 3).contiguous().transpose(2, 3)
    output = carafe_cupy.carafe(features, masks, 5, 2, 2)
    assert output.is_contiguous(memory_format=torch.channels_last)
    assert_close(output.cpu(), naive_carafe(f, m, 5, 2, 2), "float64", "output")
    expanded = torch.ones(1, 1, 1, 1, dtype=torch.float64, device="cuda").expand(2, 8, 10, 12)
    grads = carafe_cupy.carafe_backward(expanded, features, masks, 5, 2, 2)
    expected = naive_carafe_backward(np.ones((2, 8, 10, 12)), f, m, 5, 2, 2)
    for got, want in zip(grads, expected):
        assert_close(got.cpu(), want, "float64", "grad")


def test_empty_batch():
    features = torch.randn(0, 4, 3, 3, device="cuda", requires_grad=True)
    masks = torch.rand(0, 50, 6, 6, device="cuda", requires_grad=True)
    output = carafe_cupy.carafe(features, masks, 5, 2, 2)
    output.sum().backward()
    assert output.shape == (0, 4, 6, 6) and features.grad.shape == features.shape


def test_backward_is_bitwise_deterministic():
    config = (2, 16, 12, 10, 5, 4, 2)
    inputs = [torch.from_numpy(a).float().cuda() for a in make_inputs(config)]
    runs = [carafe_cupy.carafe_backward(inputs[2], inputs[0], inputs[1], 5, 4, 2) for _ in range(5)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def test_side_stream():
    config = (2, 8, 16, 16, 5, 2, 2)
    inputs = [torch.from_numpy(a).float().cuda() for a in make_inputs(config)]
    expected = carafe_cupy.carafe(inputs[0], inputs[1], 5, 2, 2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # a long op on the side stream first: a launch on the wrong stream would race it
        features = inputs[0] * 1.0
        for _ in range(20):
            features = features * 1.0
        output = carafe_cupy.carafe(features, inputs[1], 5, 2, 2)
    side.synchronize()
    torch.testing.assert_close(output, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device_while_current_is_first():
    config = (1, 4, 6, 6, 3, 2, 2)
    f, m, _ = make_inputs(config)
    torch.cuda.set_device(0)
    features = torch.from_numpy(f).float().to("cuda:1").requires_grad_()
    masks = torch.from_numpy(m).float().to("cuda:1").requires_grad_()
    output = carafe_cupy.carafe(features, masks, 3, 2, 2)
    output.sum().backward()
    assert output.device == torch.device("cuda:1")
    assert_close(output.detach().cpu(), naive_carafe(f, m, 3, 2, 2), "float32", "output")


def test_cupy_arrays_forward_and_backward():
    cupy = pytest.importorskip("cupy")
    config = (2, 8, 5, 4, 5, 2, 3)
    f, m, go = make_inputs(config)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        features, masks, grad_output = (cupy.asarray(a, dtype=cupy.float32) for a in (f, m, go))
        output = carafe_cupy.carafe(features, masks, 5, 2, 3)
        grad_features, grad_masks = carafe_cupy.carafe_backward(
            grad_output, features, masks, 5, 2, 3
        )
    stream.synchronize()
    assert isinstance(output, cupy.ndarray) and output.dtype == cupy.float32
    assert_close(cupy.asnumpy(output), naive_carafe(f, m, 5, 2, 3), "float32", "output")
    expected_gf, expected_gm = naive_carafe_backward(go, f, m, 5, 2, 3)
    assert_close(cupy.asnumpy(grad_features), expected_gf, "float32", "grad_features")
    assert_close(cupy.asnumpy(grad_masks), expected_gm, "float32", "grad_masks")


def test_mixing_torch_and_cupy_is_refused():
    cupy = pytest.importorskip("cupy")
    features = torch.randn(1, 4, 3, 3, device="cuda")
    masks = cupy.random.rand(1, 18, 6, 6, dtype=cupy.float32)
    with pytest.raises(TypeError, match="masks is cupy"):
        carafe_cupy.carafe(features, masks, 3, 2, 2)


def test_without_cupy_falls_back_to_pytorch_with_a_warning(monkeypatch):
    from carafe_cupy._torch import common as _torch_common

    monkeypatch.setattr(_cupy_runtime, "gpu_kernels_available", lambda device=None: False)
    _torch_common._gpu_kernels_available.cache_clear()
    try:
        features = torch.randn(1, 4, 3, 3, device="cuda")
        masks = torch.rand(1, 18, 6, 6, device="cuda")
        with pytest.warns(RuntimeWarning, match="pip install"):
            output = carafe_cupy.carafe(features, masks, 3, 2, 2)
        expected = naive_carafe(features.cpu().numpy(), masks.cpu().numpy(), 3, 2, 2)
        assert_close(output.cpu(), expected, "float32", "output")
    finally:
        _torch_common._gpu_kernels_available.cache_clear()


def _free_gpu_bytes() -> int:
    free, _ = torch.cuda.mem_get_info()
    return free


@pytest.mark.skipif(
    not torch.cuda.is_available() or _free_gpu_bytes() < 12 * 2**30,
    reason="needs a GPU with 12 GiB free",
)
def test_forward_past_2_31_output_elements_in_fp16():
    """64-bit indexing for real: the last output elements sit past 2**31."""
    from carafe_cupy._cpu import path as _reference

    n, c, h, w, k, g, s = 1, 64, 2900, 2900, 5, 1, 2
    r = (k - 1) // 2
    assert n * c * (h * s) * (w * s) > 2**31
    generator = torch.Generator(device="cuda").manual_seed(0)
    features = torch.randn(n, c, h, w, device="cuda", dtype=torch.float16, generator=generator)
    masks = torch.rand(
        n, g * k * k, h * s, w * s, device="cuda", dtype=torch.float16, generator=generator
    )
    output = carafe_cupy.carafe(features, masks, k, g, s)
    torch.cuda.synchronize()
    # Compare bands of rows (first, middle, last) with the pure-PyTorch path on a crop
    # that holds every input row those outputs read.
    for top in (0, h // 2, h - 8):
        bottom = top + 8
        low, high = max(0, top - r), min(h, bottom + r)
        for channel in (0, c - 1):
            crop = features[:, channel : channel + 1, low:high].float()
            crop_masks = masks[:, :, low * s : high * s].float()
            expected = _reference.cpu_forward(crop, crop_masks, k, g, s)
            expected = expected[:, :, (top - low) * s : (bottom - low) * s]
            got = output[:, channel : channel + 1, top * s : bottom * s].float()
            torch.testing.assert_close(got, expected, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("hw", [(13, 21), (26, 42)])
def test_both_grad_features_kernels_give_the_same_bits(hw):
    # The planner picks the one-pixel or the four-pixel grad_features per shape and
    # dtype, which is exact only while both compile to the same FMA chains.
    from carafe_cupy._plan import planner as _planner

    n, c, k, g, s = 2, 16, 5, 1, 2
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(n, c, *hw, generator=generator)
    masks = torch.rand(n, g * k * k, hw[0] * s, hw[1] * s, generator=generator)
    grad_output = torch.randn(n, c, hw[0] * s, hw[1] * s, generator=generator)
    got = {}
    for dtype in (torch.float32, torch.float16):
        tensors = [t.to(dtype).cuda() for t in (grad_output, features, masks)]
        for variant in ("tiled", "tiled_pair"):
            with _planner.forced_variant(variant):
                got[dtype, variant] = carafe_cupy.carafe_backward(*tensors, k, g, s)[0].cpu()
    assert torch.equal(got[torch.float32, "tiled"].view(torch.int32),
                       got[torch.float32, "tiled_pair"].view(torch.int32))
    # fp16 on the one-pixel kernel: the rounding of the fp32 four-pixel result, on the
    # fp16 inputs' (exact) fp32 values
    tensors = [t.to(torch.float16).float().cuda() for t in (grad_output, features, masks)]
    with _planner.forced_variant("tiled_pair"):
        wide = carafe_cupy.carafe_backward(*tensors, k, g, s)[0].cpu()
    assert torch.equal(got[torch.float16, "tiled"].view(torch.int16),
                       wide.half().view(torch.int16))
