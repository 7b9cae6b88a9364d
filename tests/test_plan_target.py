"""The planner's per-GPU inputs: the SM count it deals blocks to and the forward's
prologue per architecture, which the cost model derives from the SASS."""

from __future__ import annotations

import pytest
from test_profile import _nvrtc_and_nvdisasm

from carafe_cupy._plan import planner as _planner
from carafe_cupy._plan.target import FORWARD_PROLOGUE_BATCHES, PlanTarget
from carafe_cupy._plan.types import TensorRef


@pytest.mark.parametrize("arch", sorted(FORWARD_PROLOGUE_BATCHES))
def test_prologue_table_matches_the_sass(arch):
    _nvrtc_and_nvdisasm()
    from carafe_cupy._profile.model import forward_prologue_batches

    assert FORWARD_PROLOGUE_BATCHES[arch] == pytest.approx(
        forward_prologue_batches(arch), abs=0.006
    )


def _forward(target, channels=256, hw=(52, 84)):
    geometry = _planner.Geometry(2, channels, *hw, 5, 1, 2)
    g = geometry
    refs = [
        TensorRef(0x10000, (c * h * w, h * w, w, 1), "float32")
        for c, h, w in ((g.channels, g.height, g.width),
                        (g.mask_channels, g.out_height, g.out_width),
                        (g.channels, g.out_height, g.out_width))
    ]
    (plan,) = _planner.plan_forward(geometry, *refs, target)
    return plan


@pytest.mark.parametrize(
    "sms, arch", [(132, "sm_90"), (108, "sm_80"), (40, "sm_75"), (114, "sm_90")]
)
@pytest.mark.parametrize("hw", [(13, 21), (52, 84), (104, 168)])
def test_forward_slices_are_dealt_to_the_target_sms(sms, arch, hw):
    """The chosen split deals the target's busiest SM the least work (blocks per SM
    times prologue plus batches per block) among splits that fill one wave."""
    target = PlanTarget(sms, arch)
    plan = _forward(target, hw=hw)
    per_block, batch = plan.tiling
    slices = -(-256 // per_block)
    tiles = plan.blocks // slices

    def dealt(n):
        return -(-tiles * -(-256 // n) // sms) * (target.prologue_batches + -(-n // batch))

    assert plan.kernel == "carafe_forward_tiled_k5_p4_float32"
    wave = min(target.full_wave_blocks, tiles * 16)
    splits = [n for n in range(16, 257, batch) if tiles * -(-256 // n) >= wave]
    assert dealt(per_block) == min(dealt(n) for n in splits)


def test_plans_follow_the_target_gpu():
    # fewer SMs, fewer slices: 52x84 on a T4 needs no more blocks than one wave of 40 SMs
    assert _forward(PlanTarget(40, "sm_75")).blocks < _forward(PlanTarget(132, "sm_90")).blocks
    assert _planner.plan_forward.__defaults__ == (_planner.DEFAULT_TARGET,)
    assert _planner.DEFAULT_TARGET == PlanTarget(132, "sm_90")
    with pytest.raises(ValueError, match="sms must be a positive int"):
        PlanTarget(0)


def test_the_simulator_plans_for_the_default_gpu(monkeypatch):
    from carafe_cupy._runtime import launch as _launch

    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    assert _launch.plan_target(0) == _planner.DEFAULT_TARGET


def test_a_device_that_cannot_be_asked_plans_for_the_default_gpu(monkeypatch):
    from carafe_cupy._runtime import cupy_runtime as _cupy_runtime
    from carafe_cupy._runtime import launch as _launch

    def unavailable(device):
        raise RuntimeError("no CUDA driver")

    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    monkeypatch.setattr(_cupy_runtime, "device_sms_and_arch", unavailable)
    _launch._device_target.cache_clear()
    try:
        assert _launch.plan_target(7) == _planner.DEFAULT_TARGET
        monkeypatch.setattr(_cupy_runtime, "device_sms_and_arch", lambda device: (108, "sm_80"))
        _launch._device_target.cache_clear()
        assert _launch.plan_target(7) == PlanTarget(108, "sm_80")
    finally:
        _launch._device_target.cache_clear()
