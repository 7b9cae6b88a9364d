"""The pure planner: no CuPy, plans cached on layout, launches as the kernels expect."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carafe_cupy._plan import planner as _planner

GEOMETRY = _planner.Geometry(2, 16, 13, 21, 5, 1, 2)


def contiguous(shape, pointer=0x1000, dtype="float32"):
    n, c, h, w = shape
    return _planner.TensorRef(pointer, (c * h * w, h * w, w, 1), dtype)


def forward_refs(pointer=0x1000):
    g = GEOMETRY
    features = contiguous((g.batch, g.channels, g.height, g.width), pointer)
    masks = contiguous((g.batch, g.mask_channels, g.out_height, g.out_width), pointer)
    output = contiguous((g.batch, g.channels, g.out_height, g.out_width), pointer)
    return features, masks, output


def test_planner_and_launcher_import_no_cupy():
    code = (
        "import sys\n"
        "from carafe_cupy._runtime import launch\n"
        "from carafe_cupy._plan import planner\n"
        "from carafe_cupy._kernels import sources\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plans_are_cached_per_layout_not_per_pointer():
    first = _planner.plan_forward(GEOMETRY, *forward_refs(0x1000))
    again = _planner.plan_forward(GEOMETRY, *forward_refs(0x2000))
    assert first is again  # same geometry, strides and alignment: the cached plan
    assert [launch.kernel for launch in first] == ["carafe_forward_tiled_k5_p4_float32"]


def test_misaligned_tensors_take_the_one_pixel_variant():
    (launch,) = _planner.plan_forward(GEOMETRY, *forward_refs(0x1004))
    assert launch.kernel == "carafe_forward_tiled_k5_p1_float32"
    assert launch.operands == (0, 1, None, 2) and len(launch.tiling) == 2


def test_backward_plans_only_the_requested_gradients():
    grad_output, features, masks = forward_refs()[2], forward_refs()[0], forward_refs()[1]
    both = _planner.plan_backward(GEOMETRY, grad_output, features, masks, features, masks)
    assert [launch.kernel.split("_k5")[0] for launch in both] == [
        "carafe_backward_features_tiled",
        "carafe_backward_masks_tiled",
    ]
    only_masks = _planner.plan_backward(GEOMETRY, grad_output, features, masks, None, masks)
    assert [launch.operands for launch in only_masks] == [(0, 1, None, 4)]


def test_general_variant_plans_one_thread_per_pixel_and_channel_strip():
    with _planner.forced_variant("general"):
        (launch,) = _planner.plan_forward(GEOMETRY, *forward_refs())
    strips = -(-GEOMETRY.channels // GEOMETRY.group_size // _planner.GENERAL_FORWARD_STRIP)
    total = GEOMETRY.batch * GEOMETRY.group_size * strips * GEOMETRY.out_height * GEOMETRY.out_width
    assert strips * _planner.GENERAL_FORWARD_STRIP >= GEOMETRY.channels // GEOMETRY.group_size
    assert launch.kernel == "carafe_forward_float32" and launch.operands == (0, 1, 2)
    assert launch.blocks * launch.threads_per_block >= total > (launch.blocks - 1) * 256


def test_forced_variant_that_cannot_run_raises():
    geometry = _planner.Geometry(1, 4, 5, 5, 5, 1, 3)  # odd scale: no pairs
    refs = (contiguous((1, 4, 5, 5)), contiguous((1, 25, 15, 15)), contiguous((1, 4, 15, 15)))
    with _planner.forced_variant("tiled_pair"), pytest.raises(ValueError, match="tiled_pair"):
        _planner.plan_forward(geometry, *refs)


def _forward_plan(channels, hw):
    geometry = _planner.Geometry(2, channels, *hw, 5, 1, 2)
    g = geometry
    refs = (
        contiguous((g.batch, g.channels, g.height, g.width)),
        contiguous((g.batch, g.mask_channels, g.out_height, g.out_width)),
        contiguous((g.batch, g.channels, g.out_height, g.out_width)),
    )
    (plan,) = _planner.plan_forward(geometry, *refs)
    return plan


def _dealt_work(tiles, channels, per_block, batch):
    slices = -(-channels // per_block)
    blocks_per_sm = -(-tiles * slices // _planner.PLANNED_SMS)
    return blocks_per_sm * (_planner.FORWARD_PROLOGUE_BATCHES + -(-per_block // batch))


@pytest.mark.parametrize("hw", [(13, 21), (26, 42), (52, 84), (104, 168), (64, 64), (3, 5)])
@pytest.mark.parametrize("channels", [256, 24, 8])
def test_forward_grid_deals_the_least_work_per_sm(hw, channels):
    plan = _forward_plan(channels, hw)
    per_block, batch = plan.tiling
    slices = -(-channels // per_block)
    tiles = plan.blocks // slices
    assert tiles * slices == plan.blocks
    # whole channel batches, at least 16 channels a slice; only the last is shorter
    assert per_block % batch == 0 or per_block == channels
    assert per_block >= min(16, channels) and (slices - 1) * per_block < channels
    # one full wave (2 blocks per SM) wherever 16-channel slices would make one
    assert plan.kernel == "carafe_forward_tiled_k5_p4_float32"  # 2 x 2 pixels a thread
    most = tiles * -(-channels // min(16, channels))
    assert plan.blocks >= min(_planner.FULL_WAVE_BLOCKS, most)
    # no other such split deals an SM less work (blocks per SM x batches per block)
    splits = [n for n in range(min(16, channels), channels + 1) if n % batch == 0 or n == channels]
    wave = min(_planner.FULL_WAVE_BLOCKS, most)
    splits = [n for n in splits if tiles * -(-channels // n) >= wave]
    assert _dealt_work(tiles, channels, per_block, batch) == min(
        _dealt_work(tiles, channels, n, batch) for n in splits
    )


@pytest.mark.parametrize(
    "hw, blocks",
    [((13, 21), 128), ((26, 42), 364), ((52, 84), 390), ((104, 168), 624), ((64, 64), 384)],
)
def test_forward_grid_of_the_fpn_levels(hw, blocks):
    # 64 x 8 pixels a block (2 x 2 a thread). 52x84: 78 tiles x 5 slices of 52
    # channels (the last 48), 3 blocks per SM, its resident blocks in one round,
    # rather than 8 even slices of 32 (5 per SM); the small levels keep a full wave
    assert _forward_plan(256, hw).blocks == blocks
