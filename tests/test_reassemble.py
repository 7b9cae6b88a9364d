"""reassemble with stride and dilation (content-aware downsampling, involution)
against the independent naive loops, on every backend: the CPU path, the real
kernels on the simulator, and a GPU where there is one."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402

from backends import BACKENDS  # noqa: E402
from cases import assert_close, make_exact_inputs, torch_dtypes  # noqa: E402
from naive import naive_carafe, naive_carafe_backward  # noqa: E402

# (s, t, d): every stride and dilation up to 3 at s = 1, and dilation with upsampling
WINDOWS = [(1, t, d) for t, d in itertools.product((1, 2, 3), repeat=2)]
WINDOWS += [(s, 1, d) for s, d in itertools.product((2, 3), (2, 3))]
KERNEL_SIZES = (1, 3, 5, 7)
# (H, W): odd and even, wider and taller, smaller than the dilated window
SPATIAL = ((7, 6), (5, 9), (4, 4), (9, 5), (2, 3))


def window_matrix() -> list[tuple[int, ...]]:
    """(N, C, H, W, k, G, s, t, d) for every window and kernel size; G, the shape and
    N cycle so that every window meets G = 1 and G = 2 and N = 2 and N = 0 somewhere."""
    configs = []
    for index, ((s, t, d), k) in enumerate(itertools.product(WINDOWS, KERNEL_SIZES)):
        g = (1, 2)[index % 2]
        n = (1, 2, 1, 0)[(index // 2) % 4]
        h, w = SPATIAL[index % len(SPATIAL)]
        configs.append((n, g * (1 + index % 3), h, w, k, g, s, t, d))
    return configs


def window_id(config) -> str:
    n, c, h, w, k, g, s, t, d = config
    return f"N{n}C{c}_{h}x{w}_k{k}G{g}s{s}t{t}d{d}"


@functools.cache
def naive_expected(config):
    """float64 (output, grad_features, grad_masks) of make_exact_inputs(config)."""
    k, g, s, t, d = config[4:]
    features, kernels, grad_output = make_exact_inputs(config)
    output = naive_carafe(features, kernels, k, g, s, t, d)
    return output, *naive_carafe_backward(grad_output, features, kernels, k, g, s, t, d)


def run_reassemble(backend, config, dtype, memory_format=torch.contiguous_format):
    """Output and both gradients through autograd, on the backend, as float64 numpy."""
    tensors = [
        torch.from_numpy(a).to(backend.device, dtype).contiguous(memory_format=memory_format)
        for a in make_exact_inputs(config)
    ]
    features, kernels = (t.requires_grad_() for t in tensors[:2])
    with backend.active():
        output = carafe_cupy.reassemble(features, kernels, *config[4:])
        output.backward(tensors[2])
    return [t.detach().cpu().double().numpy() for t in (output, features.grad, kernels.grad)]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
@pytest.mark.parametrize("config", window_matrix(), ids=window_id)
def test_matches_naive_loops_in_every_dtype(backend, config):
    expected = naive_expected(config)
    for dtype_name, dtype in torch_dtypes().items():
        actual = run_reassemble(backend, config, dtype)
        for what, got, want in zip(("output", "grad_features", "grad_kernels"), actual, expected):
            assert_close(got, want, dtype_name, f"{window_id(config)} {what}")


# Group widths 4, 5, 7 and 9 around the general kernels' strips of four (forward) and
# two (grad_features) channels a thread: whole strips, then partial ones at group ends.
WIDE_GROUPS = [
    (2, 8, 7, 6, 3, 2, 1, 2, 1),
    (1, 10, 5, 9, 5, 2, 1, 2, 2),
    (2, 7, 6, 7, 3, 1, 1, 3, 1),
    (1, 18, 4, 5, 3, 2, 2, 1, 2),
]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
@pytest.mark.parametrize("config", WIDE_GROUPS, ids=window_id)
def test_groups_wider_than_a_channel_strip_match_naive_loops(backend, config):
    test_matches_naive_loops_in_every_dtype(backend, config)


def test_window_matrix_covers_every_window_kernel_size_and_group():
    configs = window_matrix()
    assert {(k, *c[6:]) for c in configs for k in [c[4]]} == {
        (k, *window) for window in WINDOWS for k in KERNEL_SIZES
    }
    for window in WINDOWS:
        met = [c for c in configs if c[6:] == window]
        assert {c[5] for c in met} == {1, 2}, window
        assert max(c[0] for c in met) >= 1, window


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
def test_channels_last_inputs_give_the_same_values(backend):
    config = (2, 4, 7, 6, 3, 2, 1, 2, 2)
    expected = naive_expected(config)
    actual = run_reassemble(backend, config, torch.float64, torch.channels_last)
    for what, got, want in zip(("output", "grad_features", "grad_kernels"), actual, expected):
        assert_close(got, want, "float64", what)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_carafe_is_reassemble_at_stride_1_bit_for_bit(backend, layout):
    memory_format = getattr(torch, f"{layout}_format" if layout == "contiguous" else layout)
    generator = torch.Generator().manual_seed(5)
    for k, g, s in ((3, 2, 2), (5, 1, 3), (7, 2, 1)):
        features = torch.randn(2, 4, 5, 6, generator=generator).to(backend.device)
        masks = torch.rand(2, g * k * k, 5 * s, 6 * s, generator=generator).to(backend.device)
        features = features.contiguous(memory_format=memory_format)
        grad_output = torch.randn(2, 4, 5 * s, 6 * s, generator=generator).to(backend.device)
        results = []
        with backend.active():
            for call, args, kwargs in (
                (carafe_cupy.carafe, (k, g, s), {}),
                (carafe_cupy.reassemble, (k, g, s), {"stride": 1, "dilation": 1}),
                (carafe_cupy.reassemble, (k,), {"group_size": g, "scale_factor": s}),
            ):
                f, m = features.clone().requires_grad_(), masks.clone().requires_grad_()
                output = call(f, m, *args, **kwargs)
                output.backward(grad_output)
                results.append((output, f.grad, m.grad))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert torch.equal(a, b) and a.stride() == b.stride()


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
@pytest.mark.parametrize("window", [(1, 2, 1), (1, 3, 2), (2, 1, 2)], ids=str)
def test_gradcheck_and_gradgradcheck(backend, window):
    s, t, d = window
    height, width = (5, 4) if s == 1 else (3, 2)
    generator = torch.Generator().manual_seed(sum(window))
    features = torch.randn(1, 2, height, width, dtype=torch.float64, generator=generator)
    out_h, out_w = -(-height // t) * s, -(-width // t) * s
    kernels = torch.randn(1, 9, out_h, out_w, dtype=torch.float64, generator=generator)
    inputs = tuple(x.to(backend.device).requires_grad_() for x in (features, kernels))

    def op(f, m):
        return carafe_cupy.reassemble(f, m, 3, 1, s, t, d)

    with backend.active():
        assert torch.autograd.gradcheck(op, inputs)
        if window == (1, 3, 2):  # the second derivative is the same two ops again
            assert torch.autograd.gradgradcheck(op, inputs)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
def test_involution_shape_and_downsampling_sizes(backend):
    """RedNet-style stride 2, k = 7, G = C/16, and ceil sizes on odd inputs."""
    channels, k = 32, 7
    features = torch.randn(1, channels, 9, 7, device=backend.device)
    kernels = torch.randn(1, channels // 16 * k * k, 5, 4, device=backend.device)
    with backend.active():
        output = carafe_cupy.reassemble(features, kernels, k, channels // 16, stride=2)
    assert output.shape == (1, channels, 5, 4)
    expected = naive_carafe(
        features.cpu().double().numpy(), kernels.cpu().double().numpy(), k, 2, 1, 2, 1
    )
    assert_close(output.cpu().numpy(), expected, "float32", "involution")


def test_array_front_end_on_the_simulator_matches_torch(monkeypatch):
    """numpy arrays run the kernels under the simulator: reassemble and its backward."""
    if not any(backend.name == "simulator" for backend in BACKENDS):
        pytest.skip("no C++ compiler for the simulator")
    config = (1, 4, 7, 5, 3, 2, 1, 2, 2)
    features, kernels, grad_output = make_exact_inputs(config)
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    output = carafe_cupy.reassemble(features, kernels, 3, 2, stride=2, dilation=2)
    grads = carafe_cupy.reassemble_backward(
        grad_output, features, kernels, 3, 2, stride=2, dilation=2
    )
    assert isinstance(output, np.ndarray)
    for got, want in zip((output, *grads), naive_expected(config)):
        assert_close(got, want, "float64", "arrays")


def test_backward_of_tensors_gives_plain_values_equal_to_autograd():
    config = (2, 4, 6, 7, 5, 1, 1, 2, 1)
    features, kernels, grad_output = (torch.from_numpy(a) for a in make_exact_inputs(config))
    features.requires_grad_()
    kernels.requires_grad_()
    grads = carafe_cupy.reassemble_backward(grad_output, features, kernels, 5, 1, 1, 2, 1)
    assert not any(grad.requires_grad for grad in grads)
    carafe_cupy.reassemble(features, kernels, 5, 1, 1, 2, 1).backward(grad_output)
    assert torch.equal(grads[0], features.grad) and torch.equal(grads[1], kernels.grad)


def test_foreign_dlpack_arrays_and_torch_tensors_through_the_array_front_end(monkeypatch):
    """Any DLPack array reaches the array front end and comes back as its own kind;
    carafe_cupy.arrays takes torch tensors too (without autograd)."""
    if not any(backend.name == "simulator" for backend in BACKENDS):
        pytest.skip("no C++ compiler for the simulator")
    from test_dlpack import ForeignArray

    from carafe_cupy import arrays

    config = (2, 4, 6, 5, 3, 1, 1, 3, 1)
    features, kernels, grad_output = make_exact_inputs(config)
    expected = naive_expected(config)
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    output = carafe_cupy.reassemble(ForeignArray(features), ForeignArray(kernels), 3, stride=3)
    assert isinstance(output, ForeignArray)
    assert_close(output.data, expected[0], "float64", "foreign output")
    tensors = [torch.from_numpy(a) for a in (grad_output, features, kernels)]
    grads = arrays.reassemble_backward(*tensors, 3, 1, 1, 3)
    assert all(isinstance(grad, torch.Tensor) for grad in grads)
    for got, want in zip(grads, expected[1:]):
        assert_close(got.numpy(), want, "float64", "array front end gradients")
