"""The compiled CPU kernels (Numba): reassembly in every dtype against the naive
reference, one rounding for fp16/bf16, the same bits for any thread count or
layout, double backward, and the switch, the cache and the lines that report them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy._cpu import jit_cache, jit_dispatch  # noqa: E402

from cases import assert_close, make_inputs, torch_dtypes  # noqa: E402
from naive import naive_carafe, naive_carafe_backward  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIABLE = jit_dispatch.ENVIRONMENT_VARIABLE

# (N, C, H, W, k, G, s, t, d): CARAFE, downsampling strides, dilations, k = 1 and 7;
# the backward kernels' several-channel passes with channels left over (6 per group)
# and an odd scale, and work items of more rows than one pass takes (N*G = 16)
RESHAPES = [
    (2, 4, 5, 7, 3, 2, 2, 1, 1),
    (1, 6, 6, 5, 5, 3, 1, 1, 1),
    (1, 4, 7, 6, 3, 1, 1, 2, 2),
    (2, 2, 9, 8, 5, 1, 1, 3, 1),
    (1, 2, 6, 6, 3, 2, 2, 1, 2),
    (1, 3, 4, 5, 7, 1, 3, 1, 1),
    (1, 2, 5, 5, 1, 2, 1, 1, 1),
    (1, 6, 5, 6, 3, 1, 3, 1, 2),
    (2, 32, 17, 3, 3, 8, 1, 1, 1),
]


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    monkeypatch.setenv(VARIABLE, "numba")


def reassembly(features, masks, grad_output, config):
    params = config[4:]
    output = carafe_cupy.reassemble(features, masks, *params)
    grads = carafe_cupy.reassemble_backward(grad_output, features, masks, *params)
    return output, *grads


@pytest.mark.parametrize("config", RESHAPES, ids=lambda c: "-".join(map(str, c)))
def test_reassembly_matches_naive_in_every_dtype(config):
    arrays = make_inputs(config)
    for name, dtype in torch_dtypes().items():
        tensors = [torch.from_numpy(array).to(dtype) for array in arrays]
        # the reference sees the inputs after rounding to the storage dtype
        rounded = [tensor.double().numpy() for tensor in tensors]
        expected = (naive_carafe(*rounded[:2], *config[4:]),
                    *naive_carafe_backward(rounded[2], *rounded[:2], *config[4:]))
        for what, got, want in zip(("output", "grad_features", "grad_masks"),
                                   reassembly(*tensors, config), expected):
            assert got.dtype == dtype
            assert_close(got.double(), want, name, what)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_fp32_and_rounds_once(dtype):
    config = (2, 6, 7, 9, 5, 3, 2, 1, 1)
    tensors = [torch.from_numpy(array).to(dtype) for array in make_inputs(config)]
    in_fp32 = reassembly(*(tensor.float() for tensor in tensors), config)
    for got, wide in zip(reassembly(*tensors, config), in_fp32):
        assert torch.equal(got, wide.to(dtype))  # the fp32 sums in the same order, rounded


def test_results_do_not_depend_on_the_thread_count():
    config = (3, 8, 21, 13, 5, 2, 2, 1, 1)  # more work items than threads
    tensors = [torch.from_numpy(array).float() for array in make_inputs(config)]
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            runs.append(reassembly(*tensors, config))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


# Shapes where the forward's blocks do not divide evenly: groups of 13, 12 and 9
# channels (the last block of 8 overlaps the one before it), rows of several
# 16-column blocks with a partial last one, items of 18 and 6 center rows (N*G = 16
# items of the whole height) read a few rows at a time, the last chunk shorter, and
# rows so long that fewer rows' masks fit the scratch budget.
FORWARD_BLOCKS = [
    (1, 13, 9, 21, 3, 1, 2, 1, 1),
    (1, 24, 7, 40, 5, 2, 1, 2, 1),
    (2, 72, 18, 10, 3, 8, 2, 1, 1),
    (1, 9, 6, 17, 5, 1, 3, 1, 2),
    (1, 16, 6, 21, 7, 16, 4, 1, 1),
]


@pytest.mark.parametrize("config", FORWARD_BLOCKS, ids=lambda c: "-".join(map(str, c)))
def test_forward_blocks_of_channels_columns_and_rows_match_naive(config):
    features, masks, _ = make_inputs(config)
    want = naive_carafe(features, masks, *config[4:])
    for name in ("float64", "float32"):
        dtype = torch_dtypes()[name]
        got = carafe_cupy.reassemble(torch.from_numpy(features).to(dtype),
                                     torch.from_numpy(masks).to(dtype), *config[4:])
        assert_close(got.double(), want, name, "output")


def test_huge_page_advice_names_only_whole_pages_inside_the_result(monkeypatch):
    from carafe_cupy._cpu import pages

    calls = []
    monkeypatch.setattr(pages, "_madvise", [lambda *args: calls.append(args) or 0])
    pages.advise_huge_pages(torch.empty(1024))  # too small to hold a huge page
    assert calls == []
    result = torch.empty(5 << 20)  # 20 MiB
    pages.advise_huge_pages(result)
    ((address, length, advice),) = calls
    start, end = result.data_ptr(), result.data_ptr() + result.numel() * 4
    assert address % pages.HUGE_PAGE == 0 and length % pages.HUGE_PAGE == 0
    assert start <= address and address + length <= end
    assert address - start < pages.HUGE_PAGE and end - (address + length) < pages.HUGE_PAGE


def test_a_result_on_huge_pages_matches_the_pure_pytorch_path(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 64, 64, 64, generator=generator)  # an 8 MiB result
    masks = torch.rand(1, 9, 128, 128, generator=generator)
    compiled = carafe_cupy.carafe(features, masks, 3, 1, 2)
    monkeypatch.setenv(VARIABLE, "torch")
    torch.testing.assert_close(compiled, carafe_cupy.carafe(features, masks, 3, 1, 2),
                               rtol=1e-5, atol=1e-5)


def test_any_layout_gives_the_same_bits_without_copies():
    config = (2, 8, 6, 7, 5, 2, 2, 1, 1)
    features, masks, grad_output = (torch.from_numpy(a).float() for a in make_inputs(config))
    dense = reassembly(features, masks, grad_output, config)
    channels_last = [t.contiguous(memory_format=torch.channels_last)
                     for t in (features, masks, grad_output)]
    strided = (
        torch.zeros(2, 16, 6, 14)[:, ::2, :, ::2].copy_(features),  # strided slices
        masks.transpose(2, 3).contiguous().transpose(2, 3),
        grad_output[:, :, :1, :1].expand_as(grad_output),  # stride 0, like out.sum()
    )
    assert torch.equal(reassembly(*channels_last, config)[0], dense[0])
    out = carafe_cupy.carafe(*channels_last[:2], 5, 2, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    got = reassembly(*strided, config)
    want = reassembly(strided[0].contiguous(), strided[1].contiguous(),
                      strided[2].contiguous(), config)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_taps_outside_the_input_are_skipped_not_multiplied_by_zero():
    features = torch.ones(1, 1, 3, 3)
    masks = torch.full((1, 9, 6, 6), float("inf"))
    masks[:, 4] = 1.0  # the center tap, always inside; the rest only partly
    masks[:, :, 2:4, 2:4] = 1.0  # the middle outputs read no padding at all
    out = carafe_cupy.carafe(features, masks, 3, 1, 2)
    assert not out.isnan().any()
    grad_features, grad_masks = carafe_cupy.carafe_backward(
        torch.full((1, 1, 6, 6), float("inf")), features, masks, 3, 1, 2
    )
    assert grad_masks[0, 0, 0, 0] == 0  # tap (0, 0) of the corner lies outside


@pytest.mark.parametrize("params", [(3, 1, 2, 1, 1), (3, 2, 1, 2, 2), (5, 1, 1, 1, 2)])
def test_double_backward_float64(params):
    k, g, s, t, d = params
    generator = torch.Generator().manual_seed(0)
    h = w = 5
    rows = -(-h // t) * s
    features = torch.randn(1, 2 * g, h, w, dtype=torch.float64, generator=generator)
    masks = torch.rand(1, g * k * k, rows, rows, dtype=torch.float64, generator=generator)
    inputs = (features.requires_grad_(), masks.requires_grad_())
    assert torch.autograd.gradgradcheck(
        lambda a, b: carafe_cupy.reassemble(a, b, *params), inputs
    )


def test_fused_carafepack_path_matches_the_pure_pytorch_path(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 5, 6, generator=generator).requires_grad_()
    logits = torch.randn(2, 2 * 9 * 4, 5, 6, generator=generator).requires_grad_()

    def run():
        out = carafe_cupy.carafe_from_logits(features, logits, 3, 2, 2)
        grads = torch.autograd.grad(out.square().sum(), (features, logits))
        return out, *grads

    compiled = run()
    monkeypatch.setenv(VARIABLE, "torch")
    for got, want in zip(compiled, run()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_switch_is_parsed_strictly(monkeypatch):
    for value in ("Numba", "jit", "1", "numba torch"):
        monkeypatch.setenv(VARIABLE, value)
        with pytest.raises(ValueError, match=f"{VARIABLE} must be one of auto, numba, torch"):
            carafe_cupy.carafe(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), 1, 1, 1)
    monkeypatch.setenv(VARIABLE, " torch ")  # spaces around, as for every variable
    assert jit_dispatch.describe() == f"pure PyTorch ({VARIABLE}=torch)"
    monkeypatch.setenv(VARIABLE, "")  # empty is unset: auto
    assert jit_dispatch.requested() == "auto"
    monkeypatch.setenv(VARIABLE, "auto")
    assert jit_dispatch.describe().startswith("CPU kernels compiled by Numba")


def test_without_numba_auto_falls_back_and_numba_says_what_is_missing(monkeypatch):
    missing = {"loaded": True, "kernels": None, "error": "numba is not installed (test)"}
    monkeypatch.setattr(jit_dispatch, "_state", missing)
    features, masks = torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    monkeypatch.setenv(VARIABLE, "auto")
    assert torch.equal(carafe_cupy.carafe(features, masks, 1, 1, 1), features)
    assert jit_dispatch.describe().startswith("pure PyTorch (numba is not installed")
    monkeypatch.setenv(VARIABLE, "numba")
    with pytest.raises(RuntimeError, match="numba is not installed.*carafe_cupy\\[cpu\\]"):
        carafe_cupy.carafe(features, masks, 1, 1, 1)


def test_info_and_check_name_the_cpu_path(monkeypatch):
    from carafe_cupy._cli.check import available_backends, info_lines

    monkeypatch.setenv(VARIABLE, "torch")
    assert f"torch CPU tensors use: pure PyTorch ({VARIABLE}=torch)" in info_lines()
    monkeypatch.setenv(VARIABLE, "auto")
    expected = f"torch CPU tensors use: {jit_dispatch.describe()}"
    assert expected in info_lines()
    assert expected in available_backends()[1]


def test_kernels_are_cached_in_the_package_cache_folder():
    from carafe_cupy._cpu import jit_forward

    if jit_cache.user_cache_dir():
        pytest.skip("NUMBA_CACHE_DIR is set, so Numba's own folder holds the kernels")
    folder = jit_forward.forward._cache._cache_path
    assert Path(folder).parent == jit_cache.configured_dir()
    assert Path(folder).name.startswith("numba-")
    from carafe_cupy._cpu import jit_backward

    assert jit_backward.gradients._cache._cache_path == folder


def _import_kernels(environment: dict) -> subprocess.CompletedProcess:
    code = "from carafe_cupy._cpu import jit_forward; print(jit_forward.forward._cache._cache_path)"
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    env.update(environment, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True, timeout=300)


def test_an_unusable_cache_folder_warns_once_and_uses_a_temporary_one(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    result = _import_kernels({"CARAFE_CUPY_CPU_CACHE": str(blocked / "cache")})
    assert result.stderr.count("CPU kernel cache") == 1, result.stderr
    assert "carafe_cupy_cpu-" in result.stdout


def test_a_cache_folder_others_can_write_is_not_used(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = _import_kernels({"CARAFE_CUPY_CPU_CACHE": str(shared)})
    assert "not safe to use" in result.stderr, result.stderr
    assert "carafe_cupy_cpu-" in result.stdout


def test_a_users_numba_cache_dir_is_left_in_charge(tmp_path):
    result = _import_kernels({"NUMBA_CACHE_DIR": str(tmp_path)})
    assert result.stdout.strip().startswith(str(tmp_path))


def test_no_extra_copies_of_the_inputs(monkeypatch):
    """The kernels read the caller's memory: the flat views share its storage."""
    features = torch.randn(2, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    flat, strides = jit_dispatch._flat(features)
    assert flat.ctypes.data == features.data_ptr()
    assert tuple(strides) == features.stride()
    bfloat = torch.randn(3, 4, dtype=torch.bfloat16)[:, ::2]
    flat, _ = jit_dispatch._flat(bfloat)
    assert flat.dtype == np.uint16 and flat.ctypes.data == bfloat.data_ptr()


def test_numba_with_its_compiler_switched_off_is_not_used(monkeypatch):
    import numba

    monkeypatch.setattr(jit_dispatch, "_state", {"kernels": None, "error": None, "loaded": False})
    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    monkeypatch.setenv(VARIABLE, "auto")
    assert jit_dispatch.describe().startswith("pure PyTorch (Numba's compiler is switched off")
    assert not jit_dispatch.use_jit(torch.device("cpu"))
