"""The compiled CPU backward (``_cpu/jit_backward.py``: both gradients from one
read of grad_output) where its register blocks do not divide the work evenly,
against the naive reference: channel blocks with channels left over (the last
block overlapping the one before it), groups smaller than a block, tap lists
padded to whole blocks, odd scales (a row paired with a spare), partial column
blocks, strides split into phases, dilations, and items of several chunks of
rows (rows so long that few center rows' masks fit the scratch budget), against
the pure-PyTorch path. Also: the same bits for any thread count and layout, one
rounding for fp16/bf16, a non-finite grad_output kept out of the mask gradients
of taps outside the input, and each gradient asked for alone."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

import carafe_cupy  # noqa: E402
from carafe_cupy._cpu import jit_backward, jit_dispatch  # noqa: E402

from cases import assert_close, make_inputs, torch_dtypes  # noqa: E402
from naive import naive_carafe_backward  # noqa: E402

# (N, C, H, W, k, G, s, t, d). N*G = 16 makes a work item the whole height.
BLOCKS = [
    # 37 channels a group: the last block of 8 overlaps the one before by 3
    (1, 37, 6, 21, 5, 1, 2, 1, 1),
    # 5 channels a group (fewer than a gather block), 9 center rows an item, 3 blocks
    (2, 40, 9, 21, 5, 8, 2, 1, 1),
    # an odd scale: the last row of each center row paired with a spare
    (2, 48, 5, 5, 3, 16, 3, 1, 2),
    # strides split into phases, with dilation
    (1, 18, 11, 13, 5, 2, 1, 2, 2),
    (1, 4, 9, 17, 7, 1, 1, 3, 1),
    # k = 7 (49 taps: 7 groups, the last padded), scale 4
    (1, 2, 3, 70, 7, 1, 4, 1, 1),
    # k = 1, scale 4, dilation wider than the image
    (2, 32, 3, 4, 1, 16, 4, 1, 1),
    (1, 3, 4, 5, 3, 1, 2, 1, 9),
]


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    monkeypatch.setenv(jit_dispatch.ENVIRONMENT_VARIABLE, "numba")


def backward(config, dtype=torch.float64, seed=0, channels_last=False):
    tensors = [torch.from_numpy(array).to(dtype) for array in make_inputs(config, seed)]
    if channels_last:
        tensors = [t.contiguous(memory_format=torch.channels_last) for t in tensors]
    features, masks, grad_output = tensors
    return carafe_cupy.reassemble_backward(grad_output, features, masks, *config[4:])


def test_the_shapes_reach_the_blocks_edges():
    per_group = [c[1] // c[5] for c in BLOCKS]
    assert any(c > jit_backward.CHANNELS and c % jit_backward.CHANNELS for c in per_group)
    assert min(per_group) < jit_backward.CHANNELS  # a block larger than the group
    assert any(c[6] % 2 for c in BLOCKS if c[6] > 1)  # a spare row
    assert any(c[4] ** 2 % jit_backward.MASK_TAPS for c in BLOCKS)  # a padded tap list
    assert any(c[0] * c[5] >= 16 and c[2] > 1 for c in BLOCKS)  # items of several rows


@pytest.mark.parametrize("config", BLOCKS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("name", ["float64", "float32"])
def test_gradients_match_naive(config, name):
    features, masks, grad_output = make_inputs(config)
    want = naive_carafe_backward(grad_output, features, masks, *config[4:])
    got = backward(config, torch_dtypes()[name])
    for what, actual, expected in zip(("grad_features", "grad_masks"), got, want):
        assert_close(actual.double(), expected, name, what)


# Rows so long that one center row's masks (taps x s x padded row) take more than half
# the gather's budget: one input row a chunk, two chunks an item (32 rows, 16 items),
# and with stride 2 chunks that own no center row. Checked against the pure-PyTorch
# path (the naive reference is too slow here).
LONG_ROWS = [(1, 3, 32, 170, 5, 1, 4, 1, 1), (1, 2, 8, 5300, 5, 1, 1, 2, 1)]


@pytest.mark.parametrize("config", LONG_ROWS, ids=lambda c: "-".join(map(str, c)))
def test_chunks_of_one_row_match_the_pure_pytorch_path(config, monkeypatch):
    k, s, width = config[4], config[6], -(-config[3] // config[7]) * config[6]
    per_center = k * k * s * width  # at least: the padded rows are longer
    assert 2 * per_center > jit_backward.GATHER_BUDGET
    got = backward(config)
    monkeypatch.setenv(jit_dispatch.ENVIRONMENT_VARIABLE, "torch")
    want = backward(config)
    for what, actual, expected in zip(("grad_features", "grad_masks"), got, want):
        assert_close(actual, expected.numpy(), "float64", what)


@pytest.mark.parametrize("config", BLOCKS[:4], ids=lambda c: "-".join(map(str, c)))
def test_same_bits_for_any_thread_count_and_layout(config):
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            runs.append(backward(config, torch.float32))
        runs.append(backward(config, torch.float32, channels_last=True))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_the_fp32_sum_rounded_once(dtype):
    config = BLOCKS[0]
    tensors = [torch.from_numpy(array).to(dtype) for array in make_inputs(config)]
    features, masks, grad_output = tensors
    wide = carafe_cupy.reassemble_backward(grad_output.float(), features.float(),
                                           masks.float(), *config[4:])
    narrow = carafe_cupy.reassemble_backward(grad_output, features, masks, *config[4:])
    for got, fp32 in zip(narrow, wide):
        assert got.dtype == dtype
        assert torch.equal(got, fp32.to(dtype))


def test_a_non_finite_grad_output_stays_out_of_taps_outside_the_input():
    config = (1, 3, 4, 5, 3, 1, 2, 1, 1)
    features, masks, grad_output = (torch.from_numpy(a) for a in make_inputs(config))
    finite = naive_carafe_backward(grad_output.numpy(), features.numpy(), masks.numpy(),
                                   *config[4:])[1]
    grad_output[0, 1, 0, 0] = float("inf")  # an output of the corner's window
    _, grad_masks = carafe_cupy.reassemble_backward(grad_output, features, masks, *config[4:])
    corner = grad_masks[0, :, 0, 0]
    outside, inside = [0, 1, 2, 3, 6], [4, 5, 7, 8]  # taps of the corner's window
    assert torch.all(corner[outside] == 0)  # never summed, so no Inf * 0
    assert torch.all(torch.isinf(corner[inside]))
    rest = np.ones(finite.shape, dtype=bool)
    rest[0, :, 0, 0] = False  # every other output's sums do not read the changed value
    assert_close(grad_masks.numpy()[rest], finite[rest], "float64", "grad_masks")


@pytest.mark.parametrize("wanted", ["features", "masks"])
def test_each_gradient_asked_alone(wanted):
    config = BLOCKS[1]
    features, masks, grad_output = (torch.from_numpy(a) for a in make_inputs(config))
    features.requires_grad_(wanted == "features")
    masks.requires_grad_(wanted == "masks")
    carafe_cupy.reassemble(features, masks, *config[4:]).backward(grad_output)
    want = naive_carafe_backward(grad_output.numpy(), features.detach().numpy(),
                                 masks.detach().numpy(), *config[4:])
    if wanted == "features":
        assert masks.grad is None
        assert_close(features.grad, want[0], "float64", "grad_features")
    else:
        assert features.grad is None
        assert_close(masks.grad, want[1], "float64", "grad_masks")
