"""The compiled CPU forward for narrow images (``jit_narrow``: channels in the vector
lanes): against the naive reference through the public op, the same bits as the
column-blocked forward (``jit_forward``) for every k, G, s, stride, dilation, dtype
and layout, Inf/NaN masks at taps outside the input, the same bits for any thread
count, and the dispatcher choosing it by shape."""

from __future__ import annotations

import itertools
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

import carafe_cupy  # noqa: E402
from carafe_cupy._cpu import jit_dispatch  # noqa: E402

from cases import assert_close, make_inputs, torch_dtypes  # noqa: E402
from naive import naive_carafe  # noqa: E402

# (N, C, H, W, k, G, s, t, d) the dispatcher sends to jit_narrow (s = 1, at least 8
# channels per group, rows of at most NARROW_CENTERS centers): involution-like
# groups of 16, groups of 8 and 20 (one partial block, one overlapping block), a
# ring of input rows that wraps (H > 2*r*d + 1), strides, dilations, k = 1, a row
# of more than one block of pixels with a partial last one, and items that are
# runs of groups (N*G >= 16) or bands of rows (N*G < 16).
NARROW = [
    (2, 64, 7, 7, 7, 4, 1, 1, 1),
    (1, 16, 14, 14, 7, 1, 1, 2, 1),
    (1, 24, 19, 11, 5, 3, 1, 1, 2),
    (1, 40, 23, 5, 3, 2, 1, 3, 1),
    (2, 128, 6, 9, 3, 8, 1, 1, 1),
    (1, 16, 9, 20, 1, 1, 1, 1, 1),
    (1, 32, 13, 30, 7, 2, 1, 2, 2),
]


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    monkeypatch.setenv(jit_dispatch.ENVIRONMENT_VARIABLE, "numba")


@pytest.fixture
def narrow_calls(monkeypatch):
    """Counts the work items jit_narrow computes."""
    from carafe_cupy._cpu import jit_narrow

    calls = []
    kernel = jit_narrow.forward

    def counted(*args):
        calls.append(args[-5:])
        return kernel(*args)

    monkeypatch.setattr(jit_narrow, "forward", counted)
    return calls


@pytest.mark.parametrize("config", NARROW, ids=lambda c: "-".join(map(str, c)))
def test_narrow_shapes_match_naive_in_every_dtype_and_take_jit_narrow(config, narrow_calls):
    features, masks, _ = make_inputs(config)
    for name, dtype in torch_dtypes().items():
        f, m = torch.from_numpy(features).to(dtype), torch.from_numpy(masks).to(dtype)
        want = naive_carafe(f.double().numpy(), m.double().numpy(), *config[4:])
        for layout in (torch.contiguous_format, torch.channels_last):
            got = carafe_cupy.reassemble(f.contiguous(memory_format=layout), m, *config[4:])
            assert got.dtype == dtype
            assert_close(got.double(), want, name, f"output ({layout})")
    assert narrow_calls, "the dispatcher did not choose jit_narrow"
    batch, groups = config[0], config[5]
    covered = {(n, g) for n, first, last, _, _ in narrow_calls for g in range(first, last)}
    assert covered == set(itertools.product(range(batch), range(groups)))


def test_wide_or_upsampling_shapes_keep_the_column_blocked_forward(narrow_calls):
    for config in [(1, 16, 4, 70, 3, 1, 1, 1, 1), (1, 16, 5, 6, 3, 1, 2, 1, 1),
                   (1, 12, 5, 6, 3, 2, 1, 1, 1)]:  # 70 centers; s = 2; 6 channels a group
        features, masks, _ = make_inputs(config)
        carafe_cupy.reassemble(torch.from_numpy(features), torch.from_numpy(masks), *config[4:])
    assert not narrow_calls


def _run(kernel, features, masks, out, params, items):
    (f, fs), (m, ms), (o, os_) = (jit_dispatch._flat(t) for t in (features, masks, out))
    dims = jit_dispatch._dims(features, params)
    for item in items:
        kernel(f, m, o, fs, ms, os_, dims, *item)
    return out


def _both_kernels(features, masks, params, layout):
    """(jit_forward's output, jit_narrow's), each computed item by item."""
    from carafe_cupy._cpu import jit_forward, jit_narrow

    batch, channels, height, width = features.shape
    k, groups, scale, stride, _ = params
    rows, cols = -(-height // stride), -(-width // stride)
    shape = (batch, channels, rows * scale, cols * scale)
    fresh = [torch.full(shape, float("nan"), dtype=features.dtype).contiguous(
        memory_format=layout) for _ in range(2)]
    column_blocked = _run(jit_forward.forward, features, masks, fresh[0], params,
                          jit_dispatch._items(batch, groups, rows))
    narrow = _run(jit_narrow.forward, features, masks, fresh[1], params,
                  jit_dispatch._group_items(batch, groups, rows, k))
    return column_blocked, narrow


def _bits(tensor):
    return tensor.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def test_the_same_bits_as_the_column_blocked_forward_over_random_configurations():
    draw = random.Random(22)
    dtypes = list(torch_dtypes().values())
    for _ in range(40):
        k, groups = draw.choice([1, 3, 5, 7]), draw.choice([1, 2, 3])
        per_group = draw.choice([1, 5, 8, 16, 17, 33])
        scale, stride = draw.choice([(1, 1), (2, 1), (3, 1), (1, 2), (1, 3)])
        dilation = draw.choice([1, 1, 2, 3])
        batch, height, width = draw.choice([1, 2]), draw.randint(1, 12), draw.randint(1, 20)
        dtype, layout = draw.choice(dtypes), draw.choice([torch.contiguous_format,
                                                          torch.channels_last])
        generator = torch.Generator().manual_seed(draw.randrange(1 << 30))
        features = torch.randn(batch, groups * per_group, height, width, generator=generator)
        masks = torch.randn(batch, groups * k * k, -(-height // stride) * scale,
                            -(-width // stride) * scale, generator=generator)
        if draw.random() < 0.3:  # Inf and NaN masks, some at taps outside the input
            flat = masks.view(-1)
            flat[torch.randint(0, flat.numel(), (3,), generator=generator)] = torch.tensor(
                [float("inf"), float("nan"), -float("inf")])
        features = features.to(dtype).contiguous(memory_format=layout)
        params = (k, groups, scale, stride, dilation)
        column_blocked, narrow = _both_kernels(features, masks.to(dtype), params, layout)
        assert torch.equal(_bits(column_blocked), _bits(narrow)), (params, features.shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_infinite_masks_at_taps_outside_are_skipped(dtype):
    features = torch.ones(1, 16, 5, 5, dtype=dtype)
    masks = torch.ones(1, 9, 5, 5, dtype=dtype)
    masks[:, 0, 0, :] = float("inf")  # tap (0, 0) reads above the input on row 0
    masks[:, 2, :, 4] = float("nan")  # tap (0, 2) reads right of it in column 4
    got = carafe_cupy.reassemble(features, masks, 3, 1)
    want = naive_carafe(features.double().numpy(), masks.double().numpy(), 3, 1, 1, 1, 1)
    assert torch.isfinite(got).all()  # each Inf or NaN mask lies only where its tap is outside
    assert_close(got.double(), want, str(dtype).replace("torch.", ""), "output")


def test_results_do_not_depend_on_the_thread_count():
    for config in [(2, 512, 7, 7, 7, 32, 1, 1, 1), (1, 64, 21, 9, 5, 1, 1, 1, 2)]:
        features, masks, _ = (torch.from_numpy(a).float() for a in make_inputs(config))
        threads = torch.get_num_threads()
        try:
            runs = []
            for count in (1, 2, 3):
                torch.set_num_threads(count)
                runs.append(carafe_cupy.reassemble(features, masks, *config[4:]))
        finally:
            torch.set_num_threads(threads)
        assert all(torch.equal(runs[0], other) for other in runs[1:])
