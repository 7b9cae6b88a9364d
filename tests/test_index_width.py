"""The kernels index with 64-bit integers, so tensors past 2**31 elements work.

Static checks that need no GPU, each shown to fail on a 32-bit variant: the
general kernels' source declares every size, stride and index as the 64-bit
``index_t``; no module (tiled ones included) mixes a stride with a narrow
integer type; and the PTX NVRTC makes of every module does its index math in
64 bits.
Plus the launch side: the grid is capped (the kernels loop grid-stride) and
sizes reach the kernels unchanged as int64.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from carafe_cupy._kernels import sources as _sources
from carafe_cupy._plan import planner as _planner
from carafe_cupy._runtime import launch as _launch

SIXTY_FOUR_BIT_TYPEDEF = re.compile(r"typedef\s+(long\s+long|int64_t|std::int64_t)\s+index_t\s*;")
# integer types that must not appear in kernel code (all index math is index_t)
NARROW_INTEGER = re.compile(r"\b(unsigned|signed|int|short|long|char|size_t|ptrdiff_t|auto)\b")


def _code_only(source: str) -> str:
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", source)


def _struct_body(source: str, name: str) -> str:
    match = re.search(r"struct\s+" + name + r"\s*\{(.*?)\};", source, re.DOTALL)
    assert match, f"struct {name} not found"
    return match.group(1)


def source_index_problems(common_header: str, kernels: str) -> list[str]:
    """What in the source would make sizes, strides or indices narrower than 64 bits."""
    problems = []
    header = _code_only(common_header)
    if not SIXTY_FOUR_BIT_TYPEDEF.search(header):
        problems.append("index_t is not a 64-bit typedef")
    for struct in ("carafe_geometry", "strides4"):
        body = _struct_body(header, struct)
        declared_types = re.findall(r"(?:^|;)\s*([A-Za-z_][\w:]*)\s+\w", body)
        for declared in declared_types:
            if declared != "index_t":
                problems.append(f"struct {struct} has a {declared} field")
    for number, line in enumerate(_code_only(kernels).splitlines(), start=1):
        if match := NARROW_INTEGER.search(line):
            problems.append(f"carafe.cu:{number}: {match.group(0)} in {line.strip()!r}")
    return problems


# A strides4 parameter or local, and a member access on one (a stride).
_STRIDES_NAME = re.compile(r"\bstrides4\s*&?\s*(\w+)")
_NARROW_TYPE = re.compile(r"\b(int|unsigned|short|char)\b")


def narrowed_stride_math(source: str) -> list[str]:
    """Statements that mix a stride with a narrow integer type (a cast or a
    declaration): the offset they compute would wrap past 2**31. For the tiled
    kernels, which use int for tile-local indices but must reach memory in 64 bits."""
    code = _code_only(source)
    names = set(_STRIDES_NAME.findall(code))
    if not names:
        return []
    stride = re.compile(r"\b(" + "|".join(sorted(names)) + r")\.[nchw]\b")
    return [
        " ".join(statement.split())
        for statement in re.split(r"[;{}]", code)
        if stride.search(statement) and _NARROW_TYPE.search(statement)
    ]


def read_sources() -> tuple[str, str]:
    directory = _sources.cuda_source_dir()
    return (directory / "carafe_common.cuh").read_text(), (directory / "carafe.cu").read_text()


def test_source_declares_every_size_stride_and_index_as_index_t():
    assert source_index_problems(*read_sources()) == []


def test_source_check_flags_32_bit_variants():
    header, kernels = read_sources()
    narrowed_typedef = SIXTY_FOUR_BIT_TYPEDEF.sub("typedef int index_t;", header)
    assert "index_t is not a 64-bit typedef" in source_index_problems(narrowed_typedef, kernels)
    narrowed_field = header.replace("index_t n, c, h, w;", "int n, c, h, w;")
    assert narrowed_field != header
    assert any("strides4" in p for p in source_index_problems(narrowed_field, kernels))
    first_local = "const index_t x = index % out_width;"
    assert first_local in kernels
    narrowed_local = kernels.replace(first_local, "const int x = index % out_width;", 1)
    assert any("carafe.cu" in p for p in source_index_problems(header, narrowed_local))


def test_every_module_does_stride_math_in_64_bits():
    for module in _sources.all_module_names():
        assert narrowed_stride_math(_sources.kernel_source(module)) == [], module


def test_stride_math_check_flags_a_32_bit_output_offset():
    source = _sources.kernel_source(_sources.tiled_module_name("float32", 3))
    offset = "p.n * os.n + c_begin * os.c + y * os.h + x * os.w"
    assert offset in source
    narrowed = source.replace(offset, f"(int)({offset})")
    assert any("(int)" in statement for statement in narrowed_stride_math(narrowed))


# ------------------------------------------------------------ PTX


_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(")
_INTEGER_OP = re.compile(
    r"^\s*(?:@!?%p\d+\s+)?((?:mul|mad)\.(?:lo|wide)\.[su]\d+|(?:div|rem)\.[su]\d+)"
)
_BY_CONSTANT = re.compile(r",\s*-?\d+;")


def ptx_integer_ops(ptx: str) -> dict[str, Counter]:
    """Per kernel entry: how often each integer multiply / divide / remainder occurs."""
    kernels: dict[str, Counter] = {}
    current = None
    for line in ptx.splitlines():
        if match := _ENTRY.search(line):
            current = kernels.setdefault(match.group(1), Counter())
        elif current is not None and (match := _INTEGER_OP.match(line)):
            op = match.group(1)
            if op.startswith("mul.lo.") and op.endswith("64") and _BY_CONSTANT.search(line):
                # a register times a literal: address scaling (element size times an
                # unrolled step), emitted for 32- and 64-bit indices alike
                op += ".constant"
            current[op] += 1
    return kernels


def narrow_index_math(ops: Counter) -> list[str]:
    """Signs that a kernel's index math is 32-bit.

    With 64-bit indices: the flat index is split with 64-bit div/rem (NVRTC
    may add an unsigned 32-bit fast path, ``div.u32``, behind a range check,
    but never a signed 32-bit division), and 64-bit multiplies dominate.
    """
    problems = []
    wide_divisions = sum(ops[op] for op in ("div.s64", "div.u64", "rem.s64", "rem.u64"))
    if wide_divisions == 0:
        problems.append("no 64-bit division")
    if ops["div.s32"] or ops["rem.s32"]:
        problems.append(f"{ops['div.s32'] + ops['rem.s32']} signed 32-bit div/rem")
    wide_multiplies = sum(ops[f"{op}.lo.{sign}64"] for op in ("mul", "mad") for sign in "su")
    narrow_multiplies = sum(ops[f"{op}.lo.{sign}32"] for op in ("mul", "mad") for sign in "su")
    if wide_multiplies <= narrow_multiplies:
        problems.append(f"{wide_multiplies} 64-bit vs {narrow_multiplies} 32-bit multiplies")
    return problems


def compile_to_ptx(source: str) -> str:
    pytest.importorskip("cupy")
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as error:
        pytest.skip(f"NVRTC not loadable: {error}")
    program = nvrtc.createProgram(source, "carafe.cu", [], [])
    try:
        nvrtc.compileProgram(program, ["--gpu-architecture=compute_80", *_sources.NVRTC_OPTIONS])
        ptx = nvrtc.getPTX(program)
    finally:
        nvrtc.destroyProgram(program)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def narrow_tiled_index_math(ops: Counter) -> list[str]:
    """Signs that a tiled kernel's offsets are 32-bit. Tile-local indices, sizes and
    the block position are 32-bit by design (every factor of the grid is below
    gridDim.x's 2^31 limit, and the launcher checks the forward's sizes), so only
    the presence of 64-bit offset math is required: 64-bit multiplies."""
    problems = []
    if not sum(ops[f"{op}.lo.{sign}64"] for op in ("mul", "mad") for sign in "su"):
        problems.append("no 64-bit multiply")
    return problems


@pytest.fixture(scope="module")
def kernel_ptx():
    return ptx_integer_ops(compile_to_ptx(_sources.kernel_source()))


@pytest.fixture(scope="module")
def tiled_ptx():
    from concurrent.futures import ThreadPoolExecutor

    modules = _sources.all_module_names()[1:]
    with ThreadPoolExecutor(max_workers=2) as pool:
        sources = [_sources.kernel_source(name) for name in modules]
        ptx = list(pool.map(compile_to_ptx, sources))
    return {module: ptx_integer_ops(text) for module, text in zip(modules, ptx)}


def test_ptx_index_math_is_64_bit(kernel_ptx):
    assert set(_sources.all_kernel_names()) <= set(kernel_ptx)
    problems = {name: narrow_index_math(ops) for name, ops in kernel_ptx.items()}
    assert not any(problems.values()), problems


def test_ptx_of_every_tiled_module_indexes_in_64_bits(tiled_ptx):
    for module, kernels in tiled_ptx.items():
        assert set(_sources.module_kernel_names(module)) == set(kernels), module
        problems = {name: narrow_tiled_index_math(ops) for name, ops in kernels.items()}
        assert not any(problems.values()), problems


def test_tiled_ptx_check_flags_a_32_bit_index_t():
    source = _sources.kernel_source(_sources.tiled_module_name("float16", 5))
    narrowed = SIXTY_FOUR_BIT_TYPEDEF.sub("typedef int index_t;", source)
    assert narrowed != source
    flagged = ptx_integer_ops(compile_to_ptx(narrowed))
    assert flagged and all(narrow_tiled_index_math(ops) for ops in flagged.values())


def test_ptx_check_flags_a_32_bit_index_t():
    source = _sources.kernel_source()
    narrowed = SIXTY_FOUR_BIT_TYPEDEF.sub("typedef int index_t;", source)
    assert narrowed != source
    flagged = {
        name: narrow_index_math(ops)
        for name, ops in ptx_integer_ops(compile_to_ptx(narrowed)).items()
    }
    assert set(_sources.all_kernel_names()) <= set(flagged)
    assert all(flagged.values()), {name: p for name, p in flagged.items() if not p}


# ------------------------------------------------------------ launch side


def test_grid_is_capped_for_huge_problems():
    for total in (1, 255, 256, 257, 2**31 * 256, 2**62, _validate_max()):
        blocks, rows, layers = _planner.grid_for(total)
        assert 1 <= blocks <= min(_planner.MAX_BLOCKS, 2**31 - 1) and rows == layers == 1
        assert blocks == min(_planner.MAX_BLOCKS, -(-total // _planner.THREADS_PER_BLOCK))


def _validate_max() -> int:
    from carafe_cupy._core import validate as _validate

    return _validate.INDEX_MAX


def record_launches(monkeypatch) -> list[tuple]:
    launches: list[tuple] = []

    def record(kernel_name, grid, block, args, shared_mem, device, stream, module_name=None):
        launches.append((kernel_name, grid, block, args))

    monkeypatch.setattr(_launch, "launch", record)
    return launches


# 2**40 output elements: far past 32 bits, nothing allocated
HUGE = _planner.Geometry(2, 2**14, 2**12, 2**11, 5, 4, 2)
HUGE_STRIDES = (2**37, 2**23, 2**11, 1)


# the same, downsampled with stride 2 and dilation 3 (auto: only the general kernels run it)
HUGE_STRIDED = _planner.Geometry(2, 2**14, 2**13, 2**12, 7, 4, 1, 2, 3)


@pytest.mark.parametrize("geometry", [HUGE, HUGE_STRIDED], ids=["carafe", "strided"])
def test_huge_sizes_reach_the_general_kernels_as_exact_int64(monkeypatch, geometry):
    launches = record_launches(monkeypatch)
    ref = _planner.TensorRef(0x1000, HUGE_STRIDES, "float16")
    variant = "general" if geometry.is_carafe else "auto"
    with _planner.forced_variant(variant):
        _launch.launch_forward(geometry, ref, ref, ref)
        _launch.launch_backward(geometry, ref, ref, ref, ref, ref)
    assert [launch[0] for launch in launches] == list(_sources.kernel_names("float16"))
    for _, grid, block, args in launches:
        assert grid[0] == _planner.MAX_BLOCKS and block == (_planner.THREADS_PER_BLOCK, 1, 1)
        assert all(isinstance(value, np.int64) for value in args[3:])
        # nine sizes: CARAFE's seven, then stride and dilation
        assert [int(value) for value in args[3:12]] == list(geometry.general_sizes)
        assert [int(value) for value in args[12:16]] == list(HUGE_STRIDES)


def test_huge_sizes_reach_the_tiled_kernels_as_exact_int64(monkeypatch):
    launches = record_launches(monkeypatch)
    ref = _planner.TensorRef(0x1000, HUGE_STRIDES, "float16")
    with _planner.forced_variant("tiled"):
        _launch.launch_forward(HUGE, ref, ref, ref)
        _launch.launch_backward(HUGE, ref, ref, ref, ref, ref)
    assert len(launches) == 3
    for name, grid, _, args in launches:
        assert "tiled" in name
        assert 1 <= grid[0] <= 2**31 - 1 and grid[1] <= 65535 and grid[2] <= 65535
        # 4 pointers, then the sizes and every stride as exact 64-bit values
        assert [int(value) for value in args[4:11]] == [2, 2**14, 2**12, 2**11, 5, 4, 2]
        assert all(isinstance(value, np.int64) for value in args[4:11])
        assert list(HUGE_STRIDES) == [int(value) for value in args[11:15]]


def test_tiled_plans_larger_than_a_grid_fall_back_to_general(monkeypatch):
    launches = record_launches(monkeypatch)
    # 2**33 x 2**20 input pixels: the tiled grid would need more than 2**31 blocks
    geometry = _planner.Geometry(1, 1, 2**33, 2**20, 5, 1, 2)
    ref = _planner.TensorRef(0x1000, (2**53, 2**53, 2**20, 1), "float32")
    _launch.launch_forward(geometry, ref, ref, ref)
    assert [launch[0] for launch in launches] == ["carafe_forward_float32"]
