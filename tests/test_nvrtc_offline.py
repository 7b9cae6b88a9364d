"""Every kernel and dtype compiles with NVRTC for each target, without a GPU, and does not spill.

The binaries checked are the ones the runtime loads (``_runtime.binaries``: one option set,
one cache), for sm_75, sm_80 and sm_90, and for sm_100 and sm_120 where the installed NVRTC
targets them.
"""

from __future__ import annotations

import re

import pytest

from carafe_cupy._kernels import sources as _sources
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

pytest.importorskip("cupy")
try:
    from cupy.cuda import nvrtc

    nvrtc.getVersion()
except Exception as error:  # no NVRTC library on this machine
    pytest.skip(f"NVRTC not loadable: {error}", allow_module_level=True)

BASE_ARCHS = ["sm_75", "sm_80", "sm_90"]
# Blackwell, where the installed NVRTC compiles for it (12.8 and later).
NEWER_ARCHS = [f"sm_{arch}" for arch in (100, 120) if arch in nvrtc.getSupportedArchs()]
ARCHS = BASE_ARCHS + NEWER_ARCHS
# Register budget per kernel: more would cut occupancy of these memory-bound kernels.
REGISTER_BUDGET = 96
SHARED_MEMORY_LIMIT = 48 * 1024
# Tiled kernels hold K*K mask values (or K*K sums) per pixel in registers by
# design; budgets per (K, accumulator width), measured with ptxas for sm_75/80/90.
TILED_ARCHS = ARCHS
TILED_REGISTER_BUDGET = {
    (3, "float32"): 128,
    (5, "float32"): 160,
    (7, "float32"): 200,
    (3, "float64"): 160,
    (5, "float64"): 232,
    (7, "float64"): 255,
}
# grad_masks with 2 x 2 pixels per thread holds 4 * K * K sums: one block an SM
# for K = 5 (no spills below 255; batches of four channels), two for K = 3. Its
# one-kernel-row form (_r1) holds 4 * K: two blocks an SM, as its launch bounds ask.
MASKS_QUAD_REGISTER_BUDGET = {3: 128, 5: 255}
MASKS_ROW_REGISTER_BUDGET = 128
# grad_features with four pixels per thread (_p4, 128-thread blocks): 4 K*K masks,
# at three blocks per SM for K = 5 (65536 / 384 registers; fp16 and bf16 two), four
# for K = 3 (the kernels' launch bounds).
FEATURES_QUAD_REGISTER_BUDGET = {
    (3, "float32"): 128,
    (5, "float32"): 168,
    (3, "16-bit"): 128,
    (5, "16-bit"): 255,
}
# The forward with 2 x 2 pixels per thread (_p4, 128-thread blocks): 4 K*K masks,
# at three blocks per SM (its launch bounds: 65536 / 384 registers), every dtype.
FORWARD_QUAD_REGISTER_BUDGET = {3: 128, 5: 168}
THREADS_PER_BLOCK = 256  # every kernel's block (the planner's)


def resident_blocks(registers: int) -> int:
    """Blocks of 256 threads an SM holds with ``registers`` a thread (64K registers an
    SM, allocated 256 a warp, on every architecture here)."""
    per_warp = -(-registers * 32 // 256) * 256
    return 65536 // (per_warp * (THREADS_PER_BLOCK // 32))


def within_budget(arch: str, registers: int, budget: int) -> bool:
    """sm_75-sm_90: the measured budget. sm_100 and sm_120, whose ptxas takes more
    registers where they cost no occupancy: as many resident blocks as the budget gives."""
    if arch in BASE_ARCHS:
        return registers <= budget
    return resident_blocks(registers) >= resident_blocks(budget)


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK = re.compile(r"(\d+) bytes stack frame")
_USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def ptxas_report(log: str) -> dict[str, dict[str, int]]:
    """Per kernel: registers, spill bytes, static shared memory, stack frame bytes."""
    report: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            current = report.setdefault(
                match.group(1), {"registers": 0, "spill": 0, "smem": 0, "stack": 0}
            )
        elif current is not None and (match := _SPILLS.search(line)):
            current["spill"] = int(match.group(1)) + int(match.group(2))
            if stack := _STACK.search(line):
                current["stack"] = int(stack.group(1))
        elif current is not None and (match := _USAGE.search(line)):
            current["registers"] = int(match.group(1))
            current["smem"] = int(match.group(2) or 0)
    return report


@pytest.fixture(scope="module", params=ARCHS)
def compiled(request):
    return request.param, ptxas_report(_cupy_runtime.compile_offline(request.param))


def test_every_kernel_is_built(compiled):
    arch, report = compiled
    assert set(_sources.all_kernel_names()) <= set(report), f"missing kernels for {arch}"


def test_no_spills_and_within_budgets(compiled):
    arch, report = compiled
    for name, usage in report.items():
        assert usage["spill"] == 0, f"{name} spills {usage['spill']} bytes on {arch}"
        assert within_budget(arch, usage["registers"], REGISTER_BUDGET), (
            f"{name}: {usage} on {arch}"
        )
        assert usage["smem"] <= SHARED_MEMORY_LIMIT, f"{name}: {usage} on {arch}"


def tiled_budget(kernel: str) -> int:
    kernel_size = int(re.search(r"_k(\d+)_", kernel).group(1))
    if "_p4_r1_" in kernel:
        return MASKS_ROW_REGISTER_BUDGET
    if "_p4_" in kernel and "masks" in kernel:
        return MASKS_QUAD_REGISTER_BUDGET[kernel_size]
    if "_p4_" in kernel and "forward" in kernel:
        return FORWARD_QUAD_REGISTER_BUDGET[kernel_size]
    width = "float64" if kernel.endswith("float64") else "float32"
    if "_p4_" in kernel:
        storage = "float32" if kernel.endswith("float32") else "16-bit"
        return FEATURES_QUAD_REGISTER_BUDGET[(kernel_size, storage)]
    return TILED_REGISTER_BUDGET[(kernel_size, width)]


@pytest.fixture(scope="module", params=TILED_ARCHS)
def tiled_compiled(request):
    from concurrent.futures import ThreadPoolExecutor

    modules = _sources.all_module_names()[1:]
    with ThreadPoolExecutor(max_workers=2) as pool:
        compile_module = lambda name: _cupy_runtime.compile_offline(request.param, name)  # noqa: E731
        logs = list(pool.map(compile_module, modules))
    return request.param, {name: ptxas_report(log) for name, log in zip(modules, logs)}


def test_tiled_modules_build_every_kernel_within_budget(tiled_compiled):
    arch, reports = tiled_compiled
    for module, report in reports.items():
        assert set(_sources.module_kernel_names(module)) <= set(report), f"{module} on {arch}"
        for name, usage in report.items():
            assert usage["spill"] == 0, f"{name} spills {usage['spill']} bytes on {arch}"
            budget = tiled_budget(name)
            assert within_budget(arch, usage["registers"], budget), f"{name}: {usage} on {arch}"
            assert usage["smem"] <= SHARED_MEMORY_LIMIT, f"{name}: {usage} on {arch}"
            if name.startswith("carafe_backward_features_tiled") and "_p4_" in name:
                # its register tile of masks indexed at run time would sit in local
                # memory, which ptxas counts as a stack frame, not as a spill
                assert usage["stack"] == 0, f"{name}: {usage} on {arch}"


def test_report_parser_sees_spills():
    # the check above must be able to fail: feed it a log line with spills
    log = (
        "ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
        "ptxas         .     8 bytes stack frame, 16 bytes spill stores, 16 bytes spill loads\n"
        "ptxas info    : Used 255 registers, 1024 bytes smem, 360 bytes cmem[0]\n"
    )
    assert ptxas_report(log) == {"k": {"registers": 255, "spill": 32, "smem": 1024, "stack": 8}}


def test_the_budget_rule_of_the_newer_archs():
    assert resident_blocks(96) == resident_blocks(128) == 2
    assert resident_blocks(129) == resident_blocks(255) == 1
    assert within_budget("sm_120", 255, 200) and not within_budget("sm_120", 136, 128)
    assert not within_budget("sm_90", 201, 200)


def test_compile_errors_carry_the_log(monkeypatch, tmp_path):
    monkeypatch.setenv("CARAFE_CUPY_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(_sources, "kernel_source", lambda name="carafe": "this is not C++;")
    with pytest.raises(_sources.KernelCompileError, match="carafe.cu for sm_80"):
        _cupy_runtime.compile_offline("sm_80")
