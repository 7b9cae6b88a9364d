"""Grid fit (``_plan/grid_fit.py``): the busiest SM's issue time of a sliced
grid, the slice count it picks, and grad_features' choice between its one-pixel
and four-pixel tilings per shape and dtype."""

from __future__ import annotations

import dataclasses

import pytest

from carafe_cupy._plan import features_tiles, grid_fit
from carafe_cupy._plan import planner as _planner

FPN = [(13, 21), (26, 42), (52, 84), (104, 168), (64, 64)]
COST = grid_fit.KernelCost(prologue=1000, per_channel=100, warps=4, resident=3,
                           issue_efficiency=0.5)


def refs(geometry, dtype):
    g = geometry

    def contiguous(c, h, w):
        return _planner.TensorRef(0x1000, (c * h * w, h * w, w, 1), dtype)

    grad_output = contiguous(g.channels, g.out_height, g.out_width)
    features = contiguous(g.channels, g.height, g.width)
    masks = contiguous(g.mask_channels, g.out_height, g.out_width)
    return grad_output, features, masks, features, None


def grad_features_plan(hw, dtype="float32", variant="auto", channels=256):
    geometry = _planner.Geometry(2, channels, *hw, 5, 1, 2)
    with _planner.forced_variant(variant):
        (plan,) = _planner.plan_backward(geometry, *refs(geometry, dtype))
    return plan


def test_rounds_of_resident_blocks_and_a_slower_partial_round():
    sms = _planner.DEFAULT_TARGET.sms
    block = COST.block_instructions(8)
    full_round = COST.resident * block / (grid_fit.SCHEDULERS_PER_SM * COST.issue_efficiency)
    for blocks, rounds in [(3 * sms, 1), (6 * sms, 2)]:  # whole rounds
        assert grid_fit.busiest_sm_cycles(COST, blocks, 8) == pytest.approx(rounds * full_round)
    # a partial round: longer than its share of a round, shorter than a round
    for tail in (1, 2):
        cycles = grid_fit.busiest_sm_cycles(COST, 3 * sms + tail * sms, 8) - full_round
        assert tail * full_round / 3 < cycles < full_round
    assert grid_fit.busiest_sm_cycles(COST, 1, 8) == grid_fit.busiest_sm_cycles(COST, sms, 8)
    assert grid_fit.busiest_sm_cycles(COST, 0, 8) == 0


def test_l2_bounds_a_launch_whose_blocks_move_many_bytes():
    light = grid_fit.launch_cycles(COST, 1000, 8)
    heavy = grid_fit.launch_cycles(COST, 1000, 8, traffic=grid_fit.LaunchBytes(1e9, 0))
    assert light == grid_fit.busiest_sm_cycles(COST, 1000, 8) < heavy


@pytest.mark.parametrize("tiles_per_slice", [1, 8, 28, 200, 2000])
@pytest.mark.parametrize("per_group", [7, 16, 44, 256])
def test_slices_minimise_the_launch_time(tiles_per_slice, per_group):
    batch, traffic = 4, grid_fit.LaunchBytes(5e6, 5e7)
    chosen = grid_fit.sliced_channels_per_block(
        COST, per_group, tiles_per_slice, batch, traffic=traffic
    )
    if per_group <= 16:
        assert chosen == per_group
        return
    splits = {min(per_group, n * batch) for n in range(4, per_group // batch + 2)}

    def cycles(per_block):
        slices = -(-per_group // per_block)
        blocks = tiles_per_slice * slices
        return grid_fit.launch_cycles(COST, blocks, per_block, traffic=traffic, slices=slices)

    assert chosen >= 16 and (chosen % batch == 0 or chosen == per_group)
    assert cycles(chosen) == min(cycles(n) for n in splits)
    # ties go to fewer slices
    assert all(-(-per_group // n) >= -(-per_group // chosen) for n in splits
               if cycles(n) == cycles(chosen))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("hw", FPN)
def test_grad_features_takes_the_tiling_with_the_shorter_launch(hw, dtype):
    auto = grad_features_plan(hw, dtype)
    one, quad = (grad_features_plan(hw, dtype, v) for v in ("tiled", "tiled_pair"))
    assert one.kernel_id.pixels == 1 and quad.kernel_id.pixels == 4
    assert auto in (one, quad)
    geometry = _planner.Geometry(2, 256, *hw, 5, 1, 2)

    def cycles(plan, quad):
        size = _planner.ITEMSIZE[dtype]
        one_pixel_tile = (plan.block[0] // 2, plan.block[1] // 2)
        tile = features_tiles.FEATURES_QUAD_TILE if quad else one_pixel_tile
        traffic = grid_fit.features_launch_bytes(geometry, dtype, *tile, quad=quad)
        cost = grid_fit.features_cost(size, 5, quad)
        cost = dataclasses.replace(cost, warps=-(-plan.threads_per_block // 32))
        slices = -(-256 // plan.tiling[0])
        return grid_fit.launch_cycles(cost, plan.blocks, plan.tiling[0], traffic=traffic,
                                      slices=slices)

    assert cycles(auto, auto == quad) == min(cycles(one, False), cycles(quad, True))


def test_the_fpn_levels_choices():
    # fp32: the four-pixel kernel's 8 tiles a slice leave one block of 4 warps
    # per SM at 13 x 21, where the one-pixel kernel runs 2 blocks of 8; fp16 and
    # bf16 run the four-pixel kernel at 2 blocks per SM (its conversions would
    # spill at 3), latency-bound, so they keep one pixel at every level
    pixels = {dtype: [grad_features_plan(hw, dtype).kernel_id.pixels for hw in FPN]
              for dtype in ("float32", "float16")}
    assert pixels == {"float32": [1, 4, 4, 4, 4], "float16": [1, 1, 1, 1, 1]}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_at_least_a_full_wave_at_52x84(dtype):
    plan = grad_features_plan((52, 84), dtype)
    assert plan.blocks >= _planner.FULL_WAVE_BLOCKS


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("hw", FPN)
def test_one_pixel_tiles_take_the_shortest_launch_of_the_shapes(hw, dtype):
    geometry = _planner.Geometry(2, 256, *hw, 5, 1, 2)
    kernel = _planner.KernelId("grad_features", dtype, 5)
    target = _planner.DEFAULT_TARGET
    plans = [features_tiles._input_tile_launch(geometry, dtype, kernel, False, (), target, tile)
             for tile in features_tiles.FEATURES_TILES_S2]
    chosen = features_tiles.input_tile_plan(geometry, dtype, kernel, False, ())
    assert min(cycles for _, cycles in plans) == dict(plans)[chosen]
    # one-row warps (the bank rule of the sub-pixel padding and the partial sums)
    assert chosen.block[0] == 32 and chosen.threads_per_block <= 256


def test_short_images_take_shorter_tiles():
    # 13 x 21: 16 x 4 tiles leave 3 of 16 rows idle, 16 x 3 ones 2 of 15
    plan = grad_features_plan((13, 21), variant="tiled")
    assert (plan.block[0] // 2, plan.block[1] // 2) == (16, 3)


@pytest.mark.parametrize(
    "dtype, blocks",
    [("float32", [260, 364, 390, 1560, 384]), ("float16", [260, 252, 780, 770, 256])],
)
def test_grad_features_grid_of_the_fpn_levels(dtype, blocks):
    # 104 x 168 fp32: 312 tiles x 5 slices of 52 channels (4 full rounds of 3
    # blocks), not 2 slices of 128 (one round of 3 and a partial one of 2): the
    # four-pixel kernel reads its masks by whole sectors, so re-reading them per
    # slice no longer makes L2 the bound; 64 x 64: 64 tiles x 6 slices
    assert [grad_features_plan(hw, dtype).blocks for hw in FPN] == blocks


@pytest.mark.parametrize("quad", [False, True])
def test_every_slice_rereads_the_masks_of_its_tiles(quad):
    # both grad_features kernels load each pixel's k² s² masks once per channel slice;
    # the one-pixel kernel's loads fetch more sectors than they fill
    geometry = _planner.Geometry(2, 256, 52, 84, 5, 1, 2)
    traffic = grid_fit.features_launch_bytes(geometry, "float32", 32, 8, quad=quad)
    masks = 2 * 1 * 52 * 84 * 25 * 4 * 4
    share = 1.0 if quad else grid_fit.MASK_SECTOR_SHARE
    assert traffic.per_slice == pytest.approx(masks * share)
    assert traffic.total(3) - traffic.total(2) == pytest.approx(traffic.per_slice)
