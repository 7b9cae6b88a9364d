"""Every kernel family with tensor elements past 2**31 and 2**32 elements from
their base pointer, on the simulator.

Each tensor lives in its own sparse memory mapping of about 2**33 elements
(anonymous and unreserved, or a sparse file where the system refuses that):
only the pages the kernels touch take memory. Strides put
channel 1 (or the last mask channel) past 2**31 and image 1 past 2**32. The
tensor starts 2**31 elements into its file, so an offset wrapped to 32 bits
lands on mapped zeros, a wrong answer rather than a crash. Results must equal,
bit for bit, the same kernels on compact copies.
"""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402
from sparse_memory import START, SparseArena  # noqa: E402

from carafe_cupy._kernels import sources as _sources  # noqa: E402
from carafe_cupy._kernels.names import (  # noqa: E402
    features_quads_instantiated,
    masks_rows_instantiated,
)
from carafe_cupy._plan import planner as _planner  # noqa: E402
from carafe_cupy._plan import record as _launch_record  # noqa: E402
from carafe_cupy._runtime import launch as _launch  # noqa: E402
from carafe_cupy._torch import common as _torch_common  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

IMAGE_STRIDE = 2**32 + 2**20  # image 1 past 2**32
CHANNEL_STRIDE = 2**31 + 2**18  # channel 1 of a 2-channel tensor past 2**31
ELEMENTS = START + IMAGE_STRIDE + CHANNEL_STRIDE + 2**22
DTYPES = {name: getattr(torch, name) for name in _sources.SUPPORTED_DTYPES}
CONFIG = (2, 2, 3, 4, None, 1, 2)  # (N, C, H, W, k, G, s): even s and W for pairs


class SparseTensors(SparseArena):
    """4-D tensors, each in its own sparse file, at offsets past 2**31 and 2**32."""

    def image_tensor(self, values: torch.Tensor | None, shape, dtype: torch.dtype) -> torch.Tensor:
        n, c, h, w = shape
        pitch = w + 2 + w % 2  # even: pairs need even strides
        if c == 2:
            channel_stride = CHANNEL_STRIDE
        else:  # many channels: the last one just past 2**31
            channel_stride = max((h + 1) * pitch, (2**31 + 2**10) // max(1, c - 1) // 2 * 2 + 2)
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.maps.append(self._mapping(ELEMENTS * itemsize))
        storage = torch.frombuffer(self.maps[-1], dtype=dtype)
        view = storage.as_strided(shape, (IMAGE_STRIDE, channel_stride, pitch, 1), START)
        assert view.data_ptr() % 16 == 0
        if values is None:
            view.fill_(float("nan"))
        else:
            view.copy_(values)
        return view


@pytest.fixture
def sparse(tmp_path):
    tensors = SparseTensors(tmp_path)
    yield tensors
    tensors.close()


def launch_all(make, dtype, k, variant):
    """Run one variant's kernels on tensors made by ``make(values, shape)``.
    "tiled_s1": the tiled kernels at s = 1, where grad_features takes one pixel
    per thread (at s = 2 it takes four, where those are built)."""
    n, c, h, w, _, g, s = CONFIG
    if variant == "tiled_s1":
        s, variant = 1, "tiled"
    generator = torch.Generator().manual_seed(k)
    shapes = {
        "features": (n, c, h, w),
        "second": (
            n,
            g * k * k * (s * s if variant.startswith("fused") else 1),
            *((h, w) if variant.startswith("fused") else (h * s, w * s)),
        ),
        "grad_output": (n, c, h * s, w * s),
    }
    values = {
        name: torch.randn(shape, generator=generator).to(dtype) for name, shape in shapes.items()
    }
    features, second, grad_output = (make(values[name], shape) for name, shape in shapes.items())
    output, grad_features, grad_second = (
        make(None, shape) for shape in (shapes["grad_output"], shapes["features"], shapes["second"])
    )
    geometry = _launch.Geometry(n, c, h, w, k, g, s)
    refs = [
        _torch_common.tensor_ref(t)
        for t in (features, second, grad_output, output, grad_features, grad_second)
    ]
    if variant.startswith("fused"):
        # the forced "tiled" variant makes the fused forward take one pixel per thread
        with _planner.forced_variant("auto" if variant == "fused_pair" else "tiled"):
            _launch.launch_fused_forward(geometry, refs[0], refs[1], refs[3])
            _launch.launch_fused_backward(geometry, refs[2], refs[0], refs[1], refs[4], refs[5])
    else:
        with _planner.forced_variant(variant):
            _launch.launch_forward(geometry, refs[0], refs[1], refs[3])
            _launch.launch_backward(geometry, refs[2], refs[0], refs[1], refs[4], refs[5])
    return [t.clone() for t in (output, grad_features, grad_second)]


def variants(dtype: str, k: int) -> list[str]:
    names = ["general", "tiled"]
    if _sources.pairs_instantiated(dtype, k):
        names.append("tiled_pair")
    if features_quads_instantiated(dtype, k):
        names.append("tiled_s1")
    if _sources.fused_instantiated(dtype, k):
        names.append("fused")
        if _sources.pairs_instantiated(dtype, k):
            names.append("fused_pair")
    if masks_rows_instantiated(dtype, k):
        names.append("auto")  # grid fit takes grad_masks' one-kernel-row form on this grid
    return names


@pytest.mark.parametrize("k", _sources.TILED_KERNEL_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_offsets_past_2_to_the_31_and_32(sparse, dtype, k):
    torch_dtype = DTYPES[dtype]

    def compact(values, shape):
        return torch.full(shape, float("nan"), dtype=torch_dtype) if values is None else values

    def far(values, shape):
        return sparse.image_tensor(values, shape, torch_dtype)

    with harness.simulator(), _launch_record.recording() as records:
        for variant in variants(dtype, k):
            want = launch_all(compact, torch_dtype, k, variant)
            got = launch_all(far, torch_dtype, k, variant)
            for name, a, b in zip(("output", "grad_features", "grad_masks/logits"), got, want):
                bits = harness.BITS[torch_dtype]
                assert torch.equal(a.view(bits), b.view(bits)), f"{variant} {name}"
    # every kernel of the module, and the general ones, ran on the far tensors
    launched = {record.kernel for record in records}
    wanted = set(_sources.module_kernel_names(_sources.tiled_module_name(dtype, k)))
    wanted |= set(_sources.kernel_names(dtype))
    assert launched == wanted
