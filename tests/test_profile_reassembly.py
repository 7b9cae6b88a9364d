"""The cost model on strided and dilated reassembly: the named shape sets, the
general kernels' loop trips, the unfold formulation's floor, and the CLI."""

from __future__ import annotations

import json

import pytest
from test_profile import _nvrtc_and_nvdisasm

from carafe_cupy._plan import planner as _planner
from carafe_cupy._profile import model, shape_sets, static, traffic


def test_shape_sets_are_rednet_involution_and_the_carafepp_downsampler():
    rednet = shape_sets.rednet()
    assert {(g.kernel_size, g.scale_factor, g.dilation) for g in rednet} == {(7, 1, 1)}
    assert all(g.group_size == g.channels // 16 for g in rednet)
    assert sorted(g.channels for g in rednet if g.stride == 1) == [64, 128, 256, 512]
    assert sorted(g.channels for g in rednet if g.stride == 2) == [128, 256, 512]
    assert (8, 128, 56, 56, 28) in {(*g.sizes[:4], g.out_height) for g in rednet}
    downsampler = shape_sets.carafepp()
    assert {(g.channels, g.kernel_size, g.group_size, g.stride) for g in downsampler} == {
        (256, 5, 1, 2)
    }
    assert [(g.out_height, g.out_width) for g in downsampler][0] == (52, 84)


def test_unfold_floor_counts_the_unfolded_windows():
    geometry = _planner.Geometry(1, 2, 4, 6, 3, 1, 1, 2)  # out 2 x 3, 9 taps
    features, kernels, out, unfolded = 48, 54, 12, 108
    forward, both = shape_sets.unfold_floor_bytes(geometry, 4)
    assert forward == 4 * (features + kernels + out + 4 * unfolded)
    assert both - forward == 4 * (features + 2 * kernels + 2 * out + 5 * unfolded)
    assert shape_sets.unfold_peak_bytes(geometry, 2) == 2 * 2 * unfolded


@pytest.mark.parametrize(
    "stride, dilation, tap_trips", [(1, 2, 7), (2, 1, 4), (2, 2, 7), (3, 2, 3)]
)
def test_general_grad_features_loops_all_have_trip_counts(stride, dilation, tap_trips):
    """Every SASS loop of the strided grad_features is one the model knows; the tap
    loops run ceil(k / (t / gcd(d, t))) times."""
    _nvrtc_and_nvdisasm()
    geometry = _planner.Geometry(1, 16, 20, 20, 7, 2, 1, stride, dilation)
    (launch,) = [
        launch
        for launch in traffic.planned("backward", geometry, "float32")
        if "features" in launch.kernel
    ]
    kernel_static = static.module_static(launch.module, "sm_90")[launch.kernel]
    work = model.execution(kernel_static, launch, geometry)
    assert not work.unknown_loops
    tap_loops = [trips for loop, trips, _ in work.loops if "= first_" in loop.source]
    assert tap_loops and set(tap_loops) == {tap_trips}


def test_profile_cli_models_a_strided_dilated_problem(tmp_path, capsys):
    _nvrtc_and_nvdisasm()
    from carafe_cupy.__main__ import main

    path = tmp_path / "profile.json"
    argv = ["profile", "--shapes", "2,32,41,37", "--k", "3", "--groups", "2", "--stride", "2",
            "--dilation", "2", "--json", str(path)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Against the unfold formulation" in printed
    data = json.loads(path.read_text())
    kernels = {record["kernel"] for record in data["records"]}
    assert kernels == {
        "carafe_forward_float32",
        "carafe_backward_features_float32",
        "carafe_backward_masks_float32",
    }
    (row,) = data["summary"]
    assert row["shape"] == "2,32,41,37 k3 G2 s1 t2 d2"
    assert 0 < row["forward_est_us"] < row["fwd_bwd_est_us"]
    assert 0 < row["unfold_forward_floor_us"] < row["unfold_fwd_bwd_floor_us"]
    assert row["unfold_extra_mb"] > 0
