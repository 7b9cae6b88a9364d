"""Tiled and fused kernels on the CPU simulator: every variant, edges of tiles,
and the fused CARAFEPack normaliser against the unfused composition."""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest

from cases import assert_close, config_id, config_matrix, make_exact_inputs, torch_dtypes
from naive import naive_carafe, naive_carafe_backward

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy._kernels import sources as _sources  # noqa: E402
from carafe_cupy._plan import planner as _planner  # noqa: E402
from carafe_cupy._sim import runtime as sim_runtime  # noqa: E402
from carafe_cupy._torch import common as _torch_common  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

DTYPES = torch_dtypes()
TILED_CONFIGS = [c for c in config_matrix() if c[4] in _sources.TILED_KERNEL_SIZES]


@pytest.fixture(params=("forward", "reverse"))
def simulator(request, monkeypatch):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    runtime = sim_runtime.SimRuntime(request.param)
    monkeypatch.setattr(sim_runtime, "_runtime", runtime)
    launched = []
    original = runtime.launch

    def recording_launch(*args, **kwargs):
        launched.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(runtime, "launch", recording_launch)
    runtime.launched = launched
    return runtime


@functools.cache
def expected(config):
    *_, k, g, s = config
    features, masks, grad_output = make_exact_inputs(config)
    return naive_carafe(features, masks, k, g, s), *naive_carafe_backward(
        grad_output, features, masks, k, g, s
    )


def check_variant(config, variant, dtype_names=tuple(DTYPES)):
    *_, k, g, s = config
    want = expected(config)
    for dtype_name in dtype_names:
        features, masks, grad_output = (
            torch.from_numpy(a).to(DTYPES[dtype_name]) for a in make_exact_inputs(config)
        )
        with _planner.forced_variant(variant):
            output = carafe_cupy.carafe(features, masks, k, g, s)
            grads = carafe_cupy.carafe_backward(grad_output, features, masks, k, g, s)
        for got, wanted, what in zip((output, *grads), want, ("output", "gf", "gm")):
            assert_close(got.double(), wanted, dtype_name, f"{variant} {what}")


@pytest.mark.parametrize("config", TILED_CONFIGS, ids=config_id)
def test_tiled_kernels_match_naive(simulator, config):
    check_variant(config, "tiled")
    if config[0] * config[1] and simulator.launched:
        assert any("tiled" in name for name in simulator.launched)


PAIR_CONFIGS = [
    (1, 4, 5, 6, 3, 2, 2),
    (2, 3, 3, 17, 5, 1, 2),  # output width 34: a partial second pair tile
    (1, 2, 2, 3, 5, 2, 4),
    (1, 9, 4, 4, 3, 1, 2),  # 9 channels: two full batches and a partial one
    # 20 channels: grad_masks' warps take 3 each (a batch, then a partial one
    # loaded while the first is summed; restaged over a full tile of 64 columns),
    # one takes 2 and one none
    (1, 20, 2, 32, 3, 1, 2),
]


@pytest.mark.parametrize("config", PAIR_CONFIGS, ids=config_id)
def test_pair_variant_matches_naive(simulator, config):
    check_variant(config, "tiled_pair", ("float32", "float16", "bfloat16"))
    assert any(name.startswith("carafe_forward_tiled") and "_p4_" in name
               for name in simulator.launched)


EDGE_CONFIGS = [
    (1, 3, 9, 35, 3, 1, 1),  # H, W past one tile, not multiples of it
    (1, 2, 2, 2, 7, 2, 3),  # H, W < k
    (1, 40, 3, 3, 3, 1, 2),  # many channels: slices and batches
    (2, 108, 2, 2, 3, 2, 2),  # 54 channels a group: a last slice shorter than the rest
    (1, 4, 3, 4, 5, 1, 5),  # s = 5: odd sub-pixel blocks in grad_features
]


@pytest.mark.parametrize("config", EDGE_CONFIGS, ids=config_id)
def test_tile_edges(simulator, config):
    check_variant(config, "tiled", ("float64", "float32"))


def test_auto_picks_pairs_when_aligned_and_single_otherwise(simulator):
    config = (1, 4, 3, 4, 3, 1, 2)
    features, masks, _ = (torch.from_numpy(a).float() for a in make_exact_inputs(config))
    carafe_cupy.carafe(features, masks, 3, 1, 2)
    odd_view = torch.zeros(1, 9, 6, 9)[..., 1:]  # x offset 1: pairs misaligned
    odd_view.copy_(masks)
    carafe_cupy.carafe(features, odd_view, 3, 1, 2)
    assert simulator.launched == [
        "carafe_forward_tiled_k3_p4_float32",
        "carafe_forward_tiled_k3_p1_float32",
    ]


def test_general_variant_and_large_kernel_fall_back(simulator):
    check_variant((1, 2, 3, 3, 3, 1, 2), "general", ("float32",))
    assert all("tiled" not in name for name in simulator.launched)
    simulator.launched.clear()
    check_variant((1, 2, 3, 3, 9, 1, 2), "auto", ("float32",))  # k = 9 is not specialised
    assert simulator.launched[0] == "carafe_forward_float32"


def test_forcing_a_variant_that_cannot_run_is_an_error(simulator):
    features = torch.zeros(1, 2, 3, 3)
    masks = torch.zeros(1, 9, 9, 9)
    with _planner.forced_variant("tiled_pair"), pytest.raises(ValueError, match="tiled_pair"):
        carafe_cupy.carafe(features, masks, 3, 1, 3)  # odd s: no pairs
    with pytest.raises(ValueError, match="variant"):
        with _planner.forced_variant("fastest"):
            pass


def test_tiled_equals_general_bitwise_on_exact_inputs(simulator):
    config = (2, 6, 5, 7, 5, 2, 2)
    features, masks, grad_output = (torch.from_numpy(a).float() for a in make_exact_inputs(config))
    results = {}
    for variant in ("general", "tiled", "tiled_pair"):
        with _planner.forced_variant(variant):
            results[variant] = (
                carafe_cupy.carafe(features, masks, 5, 2, 2),
                *carafe_cupy.carafe_backward(grad_output, features, masks, 5, 2, 2),
            )
    for variant in ("tiled", "tiled_pair"):
        assert all(torch.equal(a, b) for a, b in zip(results["general"], results[variant]))


# ---------------------------------------------------------------- fused normaliser

FUSED_CONFIGS = [(1, 4, 3, 5, 3, 2, 2), (2, 3, 2, 3, 5, 1, 3), (1, 2, 4, 2, 7, 1, 1)]


def unfused(features, logits, k, g, s):
    masks = _torch_common.normalize_logits(logits, k, s)
    return carafe_cupy.carafe(features, masks, k, g, s)


@pytest.mark.parametrize("config", FUSED_CONFIGS, ids=config_id)
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
def test_fused_matches_unfused(simulator, config, dtype_name, monkeypatch):
    n, c, h, w, k, g, s = config
    generator = torch.Generator().manual_seed(1)
    dtype = DTYPES[dtype_name]
    features = torch.randn(n, c, h, w, generator=generator, dtype=torch.float64)
    logits = 2 * torch.randn(n, g * k * k * s * s, h, w, generator=generator, dtype=torch.float64)
    grad_output = torch.randn(n, c, h * s, w * s, generator=generator, dtype=torch.float64)

    def run(function, enable_simulator):
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1" if enable_simulator else "0")
        f = features.to(dtype).requires_grad_()
        lg = logits.to(dtype).requires_grad_()
        output = function(f, lg, k, g, s)
        output.backward(grad_output.to(dtype))
        return output.detach().double(), f.grad.double(), lg.grad.double()

    fused = run(carafe_cupy.carafe_from_logits, True)
    fused_kernels = any("fused" in name for name in simulator.launched)
    assert fused_kernels == _sources.fused_instantiated(dtype_name, k)
    reference = run(unfused, False)  # pure PyTorch composition on the CPU
    for got, wanted, what in zip(fused, reference, ("output", "grad_features", "grad_logits")):
        assert_close(got, wanted.numpy(), dtype_name, f"fused {what}")
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")


def test_fused_cpu_path_matches_composition():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 4, 3, 4, generator=generator, dtype=torch.float64)
    logits = torch.randn(1, 2 * 9 * 4, 3, 4, generator=generator, dtype=torch.float64)
    assert torch.allclose(
        carafe_cupy.carafe_from_logits(features, logits, 3, 2, 2),
        unfused(features, logits, 3, 2, 2),
    )
    torch.autograd.gradcheck(
        lambda f, lg: carafe_cupy.carafe_from_logits(f, lg, 3, 2, 2),
        (features.requires_grad_(), logits.requires_grad_()),
    )


def test_carafepack_uses_fused_path_and_matches(simulator, monkeypatch):
    torch.manual_seed(0)
    pack = carafe_cupy.CARAFEPack(4, 2, up_kernel=3, up_group=2, compressed_channels=4).double()
    torch.nn.init.normal_(pack.content_encoder.weight, std=0.5)
    x = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    fused = pack(x)
    assert any("fused" in name for name in simulator.launched)
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "0")
    assert torch.allclose(fused, pack(x), atol=1e-12)


def test_carafepack_unfused_on_request(simulator):
    torch.manual_seed(0)
    pack = carafe_cupy.CARAFEPack(4, 2, up_kernel=3, up_group=2, compressed_channels=4).double()
    torch.nn.init.normal_(pack.content_encoder.weight, std=0.5)
    x = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    fused = pack(x)
    simulator.launched.clear()
    pack.fuse_normalizer = False
    unfused = pack(x)
    assert simulator.launched and not any("fused" in name for name in simulator.launched)
    assert torch.allclose(fused, unfused, atol=1e-12)


def test_from_logits_checks_the_logit_channels():
    expected = r"logits must have shape \(N, G\*k\*k\*s\*s, H, W\) = \(1, 36, 3, 3\)"
    expected += r".*got \(1, 9, 3, 3\)"
    with pytest.raises(ValueError, match=expected):
        carafe_cupy.carafe_from_logits(torch.zeros(1, 2, 3, 3), torch.zeros(1, 9, 3, 3), 3, 1, 2)


def test_numpy_inputs_still_work(simulator):
    config = (1, 2, 3, 3, 3, 1, 2)
    features, masks, _ = (a.astype(np.float32) for a in make_exact_inputs(config))
    assert_close(carafe_cupy.carafe(features, masks, 3, 1, 2), expected(config)[0], "float32", "o")
