"""Every stride product the kernels form, past 2**31 elements, by behaviour.

test_kernel_large_offsets.py puts image 1 past 2**32 and channel 1 past 2**31
(n * stride_n, c * stride_c). Here each other product an offset is built from
passes 2**31 in turn, in every kernel family (general, tiled, pairs, fused with
one and 2 x 2 pixels per thread), forward and backward:

* rows: every tensor's row stride is about 2**30, so row * stride_h passes 2**31
  (input row 2, output row 2 on): halo slots, grad_masks' feature rows,
  grad_features' grad_output halo, output and mask rows, logit rows, and
  the fused grad_features' tap steps, which subtract a row stride.
* columns: the same for column * stride_w (no pair kernels: they need unit
  column strides).
* taps: the masks' (and grad_masks') channel stride is about 2**28.6, so the
  products tap * stride_c and kernel row * k * stride_c pass 2**31 from kernel
  row 2 on, and group * k*k * stride_c at group 1, though the stride itself is
  small. For the logits the channel stride is about 2**29: the fused kernels'
  tap step, s*s times it, passes 2**31 (and k times that, their row step,
  2**32), as does channel * stride_c in the logit address and the grad_logits
  store.

Each tensor lies in a sparse mapping (tests/sparse_memory.py), so an offset
wrapped to 32 bits reads or writes the wrong element rather than crashing.
Results must equal, bit for bit, the same kernels on compact copies.
"""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402
from sparse_memory import SparseArena  # noqa: E402

from carafe_cupy._kernels import sources as _sources  # noqa: E402
from carafe_cupy._plan import planner as _planner  # noqa: E402
from carafe_cupy._plan import record as _launch_record  # noqa: E402
from carafe_cupy._runtime import launch as _launch  # noqa: E402
from carafe_cupy._torch import common as _torch_common  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

ROW = 2**30 + 2**12  # row 2 (and output row 2 on) past 2**31
COLUMN = 2**30 + 2**12  # column 2 on past 2**31
MASK_CHANNEL = 3 * 2**27 + 2**12  # taps 6-8 of a group (kernel row 2), and group 1, past 2**31
LOGIT_CHANNEL = 2**29 + 2**12  # s * s = 4 of them (one tap) past 2**31
CONFIGS = {  # (N, C, H, W, k, G, s)
    "rows": (1, 2, 3, 4, 3, 2, 2),
    "columns": (1, 2, 3, 4, 3, 2, 2),
    "taps": (1, 2, 3, 4, 3, 2, 2),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16}
MASK_ROLES = ("masks", "grad_masks")


def far_strides(case: str, role: str, shape, fused: bool):
    """The element strides of one tensor in ``case``; None keeps it compact."""
    n, c, h, w = shape
    pitch = w + 2 + w % 2  # even: pair kernels need even strides
    if case == "rows":
        return (c * pitch, pitch, ROW, 1)
    if case == "columns":
        return (c * h, h, 1, COLUMN)
    if role not in MASK_ROLES:
        return None
    return (h * pitch, LOGIT_CHANNEL if fused else MASK_CHANNEL, pitch, 1)


def launch_all(make, dtype, config, variant):
    """(output, grad_features, grad_masks or grad_logits) of one variant's kernels
    on tensors made by ``make(role, values, shape)``."""
    n, c, h, w, k, g, s = config
    fused = variant.startswith("fused")
    second = (n, g * k * k * s * s, h, w) if fused else (n, g * k * k, h * s, w * s)
    shapes = {"features": (n, c, h, w), "masks": second, "grad_output": (n, c, h * s, w * s)}
    generator = torch.Generator().manual_seed(k + s)
    values = {
        role: torch.randn(shape, generator=generator).to(dtype) for role, shape in shapes.items()
    }
    inputs = {role: make(role, values[role], shape) for role, shape in shapes.items()}
    output = make("output", None, shapes["grad_output"])
    grad_features = make("grad_features", None, shapes["features"])
    grad_masks = make("grad_masks", None, second)
    refs = {
        role: _torch_common.tensor_ref(tensor)
        for role, tensor in {
            **inputs,
            "output": output,
            "grad_features": grad_features,
            "grad_masks": grad_masks,
        }.items()
    }
    geometry = _launch.Geometry(n, c, h, w, k, g, s)
    if fused:
        # "tiled" makes the fused forward take one pixel per thread, "auto" 2 x 2
        with _planner.forced_variant("auto" if variant == "fused_pair" else "tiled"):
            _launch.launch_fused_forward(geometry, refs["features"], refs["masks"], refs["output"])
            _launch.launch_fused_backward(
                geometry,
                refs["grad_output"],
                refs["features"],
                refs["masks"],
                refs["grad_features"],
                refs["grad_masks"],
            )
    else:
        with _planner.forced_variant(variant):
            _launch.launch_forward(geometry, refs["features"], refs["masks"], refs["output"])
            _launch.launch_backward(
                geometry,
                refs["grad_output"],
                refs["features"],
                refs["masks"],
                refs["grad_features"],
                refs["grad_masks"],
            )
    return [t.clone() for t in (output, grad_features, grad_masks)]


def variants(case: str, dtype: str, k: int) -> list[str]:
    pairs = case != "columns" and _sources.pairs_instantiated(dtype, k)
    names = ["general", "tiled"] + (["tiled_pair"] if pairs else [])
    if _sources.fused_instantiated(dtype, k):
        names += ["fused"] + (["fused_pair"] if pairs else [])
    return names


RUNS = [
    (case, dtype, variant)
    for case, config in CONFIGS.items()
    for dtype in DTYPES
    for variant in variants(case, dtype, config[4])
]


@pytest.fixture
def arena(tmp_path):
    tensors = SparseArena(tmp_path)
    yield tensors
    tensors.close()


@pytest.mark.parametrize("case, dtype, variant", RUNS, ids=["-".join(run) for run in RUNS])
def test_stride_products_past_2_to_the_31(arena, case, dtype, variant):
    torch_dtype = DTYPES[dtype]
    config = CONFIGS[case]
    fused = variant.startswith("fused")

    def compact(role, values, shape):
        return torch.full(shape, float("nan"), dtype=torch_dtype) if values is None else values

    def far(role, values, shape):
        strides = far_strides(case, role, shape, fused)
        if strides is None:
            return compact(role, values, shape)
        return arena.tensor(values, shape, strides, torch_dtype)

    with harness.simulator():
        with _launch_record.recording() as compact_records:
            want = launch_all(compact, torch_dtype, config, variant)
        with _launch_record.recording() as far_records:
            got = launch_all(far, torch_dtype, config, variant)
    # the same kernels ran on both, and the variant asked for
    kernels = [record.kernel for record in far_records]
    assert kernels == [record.kernel for record in compact_records]
    # pair kernels: two or 2 x 2 pixels a thread (grad_features' four pixels run
    # in both tiled variants)
    pairs = [name for name in kernels if ("_p2_" in name or "_p4_" in name)
             and "backward_features" not in name]
    assert bool(pairs) == variant.endswith("pair"), kernels
    assert all(("tiled" in name or "fused" in name) != (variant == "general") for name in kernels)
    bits = harness.BITS[torch_dtype]
    for name, a, b in zip(("output", "grad_features", "grad_masks/logits"), got, want):
        assert torch.equal(a.view(bits), b.view(bits)), f"{case} {variant} {name}"
