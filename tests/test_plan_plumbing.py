"""The planner's plumbing, which the plan-space coverage cannot see: which input each
decision reads, which tensor each kernel argument is, and how a forced variant nests.

The coverage test (test_kernel_plan_space.py) demands that every plan branch is taken
somewhere; a branch that reads the wrong tensor is still taken, and with every tensor
laid out alike its results stay right. Here each input is changed alone.
"""

from __future__ import annotations

import pytest
import recording_runtime

from carafe_cupy._plan import planner as _planner
from carafe_cupy._plan import types as _plan_types
from carafe_cupy._runtime import launch as _launch

PAIRED = _planner.Geometry(1, 8, 5, 6, 3, 2, 2)  # even s, k = 3: pairs are built
ITEMSIZE = _planner.ITEMSIZE

# The tensors of each call, in the order of the plan's operand indices (the docstrings
# of plan_forward, plan_backward, plan_fused_forward and plan_fused_backward).
CALLS = {
    "forward": ("features", "masks", "output"),
    "backward": ("grad_output", "features", "masks", "grad_features", "grad_masks"),
    "fused_forward": ("features", "logits", "output"),
    "fused_backward": ("grad_output", "features", "logits", "grad_features", "grad_logits"),
}
# Each kernel's pointer parameters, as cuda_src declares them (the tiled kernels'
# a, b, c, out as their wrappers pass them on to the *_impl functions). None: unused.
KERNEL_POINTERS = {
    # carafe.cu
    ("forward", "general"): ("features", "masks", "output"),
    ("grad_features", "general"): ("grad_output", "masks", "grad_features"),
    ("grad_masks", "general"): ("grad_output", "features", "grad_masks"),
    # carafe_tiled.cuh
    ("forward", "tiled"): ("features", "masks", None, "output"),
    ("forward", "tiled_pair"): ("features", "masks", None, "output"),
    ("grad_features", "tiled"): ("grad_output", "masks", None, "grad_features"),
    ("grad_features", "tiled_pair"): ("grad_output", "masks", None, "grad_features"),
    ("grad_masks", "tiled"): ("grad_output", "features", None, "grad_masks"),
    ("grad_masks", "tiled_pair"): ("grad_output", "features", None, "grad_masks"),
    ("fused_forward", "fused"): ("features", "logits", None, "output"),
    ("fused_grad_features", "fused"): ("grad_output", "logits", None, "grad_features"),
    ("fused_grad_logits", "fused"): ("grad_output", "features", "logits", "grad_logits"),
}


def shapes(geometry):
    g = geometry
    out = (g.batch, g.channels, g.out_height, g.out_width)
    masks = (g.batch, g.mask_channels, g.out_height, g.out_width)
    features = (g.batch, g.channels, g.height, g.width)
    logits = (g.batch, g.mask_channels * g.scale_factor**2, g.height, g.width)
    return {
        "features": features,
        "masks": masks,
        "logits": logits,
        "output": out,
        "grad_output": out,
        "grad_features": features,
        "grad_masks": masks,
        "grad_logits": logits,
    }


def ref(shape, dtype="float32", pointer=0x10000, row_pitch=None):
    """A TensorRef of ``shape``; ``row_pitch`` pads each row (a view of a wider array)."""
    n, c, h, w = shape
    pitch = w if row_pitch is None else row_pitch
    plane = h * pitch + (h * pitch) % 2  # even: an odd row pitch is the only odd stride
    return _planner.TensorRef(pointer, (c * plane, plane, pitch, 1), dtype)


def call_refs(call, geometry, dtype="float32", odd=None, how="offset"):
    """The call's tensors, aligned and contiguous but for ``odd``, which gets an odd
    element offset (``how="offset"``) or an odd row stride (``how="row"``)."""
    tensors = []
    for index, name in enumerate(CALLS[call]):
        shape = shapes(geometry)[name]
        pointer = 0x100000 * (index + 1)
        pitch = None
        if name == odd and how == "offset":
            pointer += ITEMSIZE[dtype]
        if name == odd and how == "row":
            pitch = shape[3] + 1 if shape[3] % 2 == 0 else shape[3]  # an odd row stride
        tensors.append(ref(shape, dtype, pointer, pitch))
    return tensors


def plan(call, geometry, tensors):
    if call == "forward":
        return _planner.plan_forward(geometry, *tensors)
    if call == "backward":
        return _planner.plan_backward(geometry, *tensors)
    if call == "fused_forward":
        return _planner.plan_fused_forward(geometry, *tensors)
    return _planner.plan_fused_backward(geometry, tensors[0].dtype)


# ---------------------------------------------------------------- pairs_fit


def operand(strides=(240, 30, 6, 1), offset=0):
    return (strides, offset)


@pytest.mark.parametrize(
    "dtype, layout, fits",
    [
        ("float32", operand(), True),
        ("float32", operand(offset=8), True),  # 8-byte aligned: a pair of floats
        ("float32", operand(offset=4), False),  # one float off
        ("float32", operand((240, 30, 7, 1)), False),  # odd row stride: every other row off
        ("float32", operand((240, 31, 6, 1)), False),  # odd channel stride
        ("float32", operand((241, 30, 6, 1)), False),  # odd batch stride
        ("float32", operand((240, 30, 6, 2)), False),  # x not contiguous
        ("float32", operand((240, 30, 6, -1)), False),  # x reversed
        ("float32", operand((-240, 30, -6, 1)), True),  # flipped rows and images: still even
        ("float16", operand(offset=4), True),
        ("float16", operand(offset=2), False),
        ("bfloat16", operand((240, 30, 5, 1)), False),
    ],
)
def test_pairs_fit_needs_every_stride_even_x_contiguous_and_the_pair_aligned(dtype, layout, fits):
    assert _planner.pairs_fit(PAIRED, dtype, (operand(), layout)) is fits
    assert _planner.pairs_fit(PAIRED, dtype, (layout, operand())) is fits


def test_pairs_fit_needs_an_even_scale_and_built_pair_kernels():
    aligned = (operand(),)
    assert _planner.pairs_fit(PAIRED, "float32", aligned)
    odd_scale = _planner.Geometry(1, 8, 5, 6, 3, 2, 3)
    assert not _planner.pairs_fit(odd_scale, "float32", aligned)
    assert not _planner.pairs_fit(PAIRED, "float64", aligned)  # fp64 pairs are not built
    assert not _planner.pairs_fit(_planner.Geometry(1, 8, 5, 6, 7, 2, 2), "float32", aligned)


# ---------------------------------------------------------------- which input a decision reads

# For each call and its pair kernel: the tensors whose layout decides whether it runs.
PAIR_READERS = {
    "forward": ("forward_tiled_k3_p4", {"masks", "output"}),
    "backward": ("backward_masks_tiled_k3_p4", {"grad_output", "grad_masks"}),
    "fused_forward": ("fused_forward_k3_p4", {"output"}),
}


@pytest.mark.parametrize("how", ["offset", "row"])
@pytest.mark.parametrize("call", PAIR_READERS)
def test_only_the_pair_loaded_tensors_decide_the_pair_kernels(call, how):
    pair_kernel, readers = PAIR_READERS[call]
    aligned = [launch.kernel for launch in plan(call, PAIRED, call_refs(call, PAIRED))]
    assert any(pair_kernel in kernel for kernel in aligned), aligned
    for name in CALLS[call]:
        tensors = call_refs(call, PAIRED, odd=name, how=how)
        kernels = [launch.kernel for launch in plan(call, PAIRED, tensors)]
        paired = any(pair_kernel in kernel for kernel in kernels)
        assert paired is (name not in readers), f"{call}: {name} with an odd {how}: {kernels}"
        # everything else stays as it was
        assert len(kernels) == len(aligned)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_an_odd_row_stride_disqualifies_the_pair_kernels(dtype):
    """8-byte (fp32) or 4-byte loads from a row starting at an odd element are misaligned."""
    geometry = _planner.Geometry(1, 4, 3, 4, 5, 1, 2)
    features, masks, output = call_refs("forward", geometry, dtype)
    g = geometry
    odd_output = ref((1, 4, g.out_height, g.out_width), dtype, output.pointer, g.out_width + 1)
    assert odd_output.strides[2] % 2 == 1
    (launch,) = _planner.plan_forward(geometry, features, masks, odd_output)
    assert launch.kernel == f"carafe_forward_tiled_k5_p1_{dtype}"
    with _planner.forced_variant("tiled_pair"), pytest.raises(ValueError, match="tiled_pair"):
        _planner.plan_forward(geometry, features, masks, odd_output)


# ---------------------------------------------------------------- operands


def kernel_family(launch):
    return launch.kernel_id.operation, launch.kernel_id.variant


PLANS = [
    ("forward", "general"),
    ("forward", "tiled"),
    ("forward", "tiled_pair"),
    ("backward", "general"),
    ("backward", "tiled"),
    ("backward", "tiled_pair"),
    ("fused_forward", "auto"),
    ("fused_forward", "tiled"),
    ("fused_backward", "auto"),
]


@pytest.mark.parametrize("call, variant", PLANS)
def test_each_kernel_argument_is_the_tensor_the_kernel_declares(call, variant):
    with _planner.forced_variant(variant):
        launches = plan(call, PAIRED, call_refs(call, PAIRED))
    assert launches
    for launch in launches:
        family = kernel_family(launch)
        given = tuple(None if i is None else CALLS[call][i] for i in launch.operands)
        assert given == KERNEL_POINTERS[family], f"{launch.kernel}: {given}"


def test_grad_masks_alone_plans_only_grad_masks_from_its_own_tensors():
    tensors = call_refs("backward", PAIRED)
    tensors[3] = None  # no grad_features wanted
    (launch,) = _planner.plan_backward(PAIRED, *tensors)
    given = tuple(None if i is None else CALLS["backward"][i] for i in launch.operands)
    assert given == ("grad_output", "features", None, "grad_masks")


@pytest.mark.parametrize("call, variant", PLANS)
def test_each_pointer_and_stride_argument_comes_from_its_tensor(monkeypatch, call, variant):
    """The marshalled arguments: pointer i and stride block i are those of operand i's
    tensor (every tensor here has its own address and row pitch), zeros for no tensor."""
    runtime = recording_runtime.install(monkeypatch)
    tensors = []
    for index, name in enumerate(CALLS[call]):
        shape = shapes(PAIRED)[name]
        tensors.append(ref(shape, "float32", 0x100000 * (index + 1), shape[3] + 2 * (index + 1)))
    launch_function = getattr(_launch, f"launch_{call}")
    with _planner.forced_variant(variant):
        launch_function(PAIRED, *tensors)
        launches = plan(call, PAIRED, tensors)
    assert len(runtime.launches) == len(launches)
    for planned, recorded in zip(launches, runtime.launches):
        pointers = len(planned.operands)
        sizes = 9 if planned.kernel_id.variant == "general" else 7
        stride_args = recorded.args[pointers + sizes : pointers + sizes + 4 * pointers]
        for slot, index in enumerate(planned.operands):
            tensor = _launch._NO_TENSOR if index is None else tensors[index]
            assert int(recorded.args[slot]) == tensor.pointer, (planned.kernel, slot)
            strides = tuple(int(value) for value in stride_args[4 * slot : 4 * slot + 4])
            assert strides == tensor.strides, (planned.kernel, slot)


# ---------------------------------------------------------------- forced_variant


def test_nested_forced_variants_restore_the_outer_one(monkeypatch):
    monkeypatch.delenv("CARAFE_CUPY_KERNEL_VARIANT", raising=False)
    assert _planner.requested_variant() == "auto"
    with _planner.forced_variant("general"):
        with _planner.forced_variant("tiled"):
            assert _planner.requested_variant() == "tiled"
        assert _planner.requested_variant() == "general"
        with pytest.raises(RuntimeError), _planner.forced_variant("tiled_pair"):
            raise RuntimeError("inside")
        assert _planner.requested_variant() == "general"
    assert _planner.requested_variant() == "auto"


def test_a_forced_variant_wins_over_the_environment_until_it_ends(monkeypatch):
    monkeypatch.setenv("CARAFE_CUPY_KERNEL_VARIANT", "general")
    tensors = call_refs("forward", PAIRED)
    with _planner.forced_variant("tiled"):
        (launch,) = _planner.plan_forward(PAIRED, *tensors)
        assert launch.kernel == "carafe_forward_tiled_k3_p1_float32"
        with _planner.forced_variant("auto"):
            (launch,) = _planner.plan_forward(PAIRED, *tensors)
            assert launch.kernel == "carafe_forward_tiled_k3_p4_float32"
    assert _planner.requested_variant() == "general"
    (launch,) = _planner.plan_forward(PAIRED, *tensors)
    assert launch.kernel == "carafe_forward_float32"


def test_unknown_variants_are_refused_with_the_choices(monkeypatch):
    with pytest.raises(ValueError, match="variant must be one of.*'fast'"):
        with _planner.forced_variant("fast"):
            pass
    assert _plan_types._variant_override is None
    monkeypatch.setenv("CARAFE_CUPY_KERNEL_VARIANT", "pairs")
    with pytest.raises(ValueError, match="CARAFE_CUPY_KERNEL_VARIANT must be one of.*'pairs'"):
        _planner.requested_variant()
