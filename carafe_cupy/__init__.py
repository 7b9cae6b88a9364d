"""CARAFE (content-aware reassembly of features) for PyTorch and CuPy.

``carafe(features, masks, kernel_size, group_size, scale_factor)`` takes torch
tensors, cupy arrays, or any other DLPack array (JAX, ...).
``reassemble(features, kernels, kernel_size, group_size, scale_factor, stride,
dilation)`` is the same op with a stride and a dilation: CARAFE++'s
content-aware downsampling and involution. Neither torch nor
CuPy is needed to import the package. Every public name of ``mmcv.ops.carafe``
is here too (``CARAFENaive``, ``CARAFEFunction``, ``normal_init``, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core.errors import KernelCompileError, KernelsUnavailableError

__version__ = "0.1.0"

__all__ = [
    "CARAFE",
    "CARAFEDownPack",
    "CARAFEFunction",
    "CARAFENaive",
    "CARAFENaiveFunction",
    "CARAFEPack",
    "Involution",
    "KernelCompileError",
    "KernelsUnavailableError",
    "__version__",
    "carafe",
    "carafe_backward",
    "carafe_from_logits",
    "carafe_naive",
    "decompositions",
    "normal_init",
    "reassemble",
    "reassemble_backward",
    "xavier_init",
]

# Names that need torch, loaded when first asked for: name -> submodule.
_TORCH_NAMES = {
    "CARAFE": "nn",
    "CARAFENaive": "nn",
    "CARAFEPack": "nn",
    "CARAFEDownPack": "nn_reassembly",
    "Involution": "nn_reassembly",
    "CARAFEFunction": "mmcv_compat",
    "CARAFENaiveFunction": "mmcv_compat",
    "normal_init": "mmcv_compat",
    "xavier_init": "mmcv_compat",
}

# Public submodules, reachable as attributes once the package is imported (loaded on
# first use, so that importing the package stays cheap and needs neither torch nor CuPy).
# carafe_cupy.mmengine_registry is left out: importing it registers with mmengine.
_SUBMODULES = ("arrays", "mmcv_compat", "nn", "nn_reassembly")

if TYPE_CHECKING:
    from . import arrays, mmcv_compat, nn, nn_reassembly  # noqa: F401 (for type checkers)
    from .mmcv_compat import CARAFEFunction, CARAFENaiveFunction, normal_init, xavier_init
    from .nn import CARAFE, CARAFENaive, CARAFEPack
    from .nn_reassembly import CARAFEDownPack, Involution


def _is_torch_tensor(value: Any) -> bool:
    """isinstance(value, torch.Tensor), without importing torch. Read from the type's
    classes, not sys.modules: under torch.compile that would trace all of sys.modules,
    and loading a lazily imported module found there changes it mid-iteration."""
    return any(
        cls.__module__ == "torch" and cls.__qualname__ == "Tensor" for cls in type(value).__mro__
    )


# Types whose every input was a torch tensor, and the torch front end once loaded:
# a call with tensors of these types finds its front end in one set lookup.
_torch_types: set[type] = set()
_torch_front_end: Any = None


def _front_end(function: str, **inputs: Any) -> Any:
    """The module that handles these inputs: torch, or the array front end
    (CuPy, numpy, and any other DLPack array), never a mix of torch and another kind."""
    global _torch_front_end
    if _torch_front_end is not None and _torch_types.issuperset(map(type, inputs.values())):
        return _torch_front_end
    from ._array import dlpack as _dlpack

    def kind(name: str, value: Any) -> str | None:
        if _is_torch_tensor(value):
            return "torch.Tensor"
        _dlpack.refuse_tracers(function, **{name: value})
        if _dlpack.is_kernel_array(value) or _dlpack.is_dlpack_array(value):
            return _dlpack.describe(value)
        return None

    kinds = {name: kind(name, value) for name, value in inputs.items()}
    found = {kind for kind in kinds.values() if kind is not None}
    if "torch.Tensor" in found and len(found) > 1:
        listing = ", ".join(f"{name} is {kind or 'neither'}" for name, kind in kinds.items())
        raise TypeError(
            f"{function}: inputs must all be torch tensors, or all arrays of one other kind "
            f"(cupy, numpy, ...); {listing}"
        )
    if "torch.Tensor" in found:  # its checks name any argument that is not a tensor
        from ._torch import functional as torch_functional

        if found == {"torch.Tensor"} and None not in kinds.values():
            _torch_types.update(type(value) for value in inputs.values())
            _torch_front_end = torch_functional
        return torch_functional
    if found:
        from ._array import api as array_api

        return array_api
    first = next(iter(inputs))
    value = inputs[first]
    raise TypeError(
        f"{function}: {first} must be a torch.Tensor or cupy.ndarray (or another array with "
        f"__dlpack__), got {type(value).__module__}.{type(value).__name__}"
    )


def carafe(features: Any, masks: Any, kernel_size: int, group_size: int, scale_factor: int) -> Any:
    """Reassemble ``features`` (N, C, H, W) with ``masks`` (N, G*k*k, H*s, W*s).

    For every output pixel (y, x) and channel c, with r = (k - 1) // 2 and
    g = c // (C // G)::

        out[n, c, y, x] = sum over i, j < k of
            masks[n, g*k*k + i*k + j, y, x] * features[n, c, y//s + i - r, x//s + j - r]

    Mask channel g*k*k + i*k + j weights kernel row i, column j of group g. Masks
    are used as given (not normalised: CARAFEPack applies a softmax over each
    group's k*k taps first); taps that fall outside the input contribute zero.

    Args:
        features: (N, C, H, W) torch tensor, cupy or numpy array, or another DLPack
            array (JAX, ...).
        masks: (N, G*k*k, H*s, W*s), same kind and device as ``features``.
        kernel_size: k, odd int >= 1.
        group_size: G, int >= 1 dividing C.
        scale_factor: s, int >= 1 (floats such as 2.0 are refused).

    Returns (N, C, H*s, W*s). dtypes: float32, float64, float16 and bfloat16
    (bfloat16 for torch tensors and DLPack arrays in host memory); float16/bfloat16
    accumulate in float32. Mixed feature/mask dtypes follow torch's type promotion;
    integer, bool and complex inputs raise TypeError. Arguments follow
    ``mmcv.ops.carafe``. torch tensors are differentiable; cupy arrays run on CuPy's
    current stream (see :func:`carafe_backward` for their gradients); other DLPack
    arrays run on their device (those in host memory, numpy's too, on the PyTorch
    CPU path, or the simulator when it is on) and come back as their own kind. JAX
    tracers are refused: the package runs eagerly, outside JAX transforms.
    """
    if type(features) in _torch_types and type(masks) in _torch_types:  # as _front_end finds
        return _torch_front_end.carafe(features, masks, kernel_size, group_size, scale_factor)
    front_end = _front_end("carafe", features=features, masks=masks)
    return front_end.carafe(features, masks, kernel_size, group_size, scale_factor)


# mmcv.ops.carafe's reference op: the same op and results here.
carafe_naive = carafe


def carafe_backward(
    grad_output: Any,
    features: Any,
    masks: Any,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> tuple[Any, Any]:
    """Gradients ``(grad_features, grad_masks)`` of :func:`carafe`, for CuPy users.

    Also accepts torch tensors: it then calls the same op autograd uses and
    returns plain values (not differentiable, even if the inputs require grad).
    """
    front_end = _front_end(
        "carafe_backward", grad_output=grad_output, features=features, masks=masks
    )
    return front_end.reassemble_backward(
        grad_output,
        features,
        masks,
        kernel_size,
        group_size,
        scale_factor,
        where="carafe_backward",
    )


def reassemble(
    features: Any,
    kernels: Any,
    kernel_size: int,
    group_size: int = 1,
    scale_factor: int = 1,
    stride: int = 1,
    dilation: int = 1,
) -> Any:
    """Reassemble each output pixel from a k x k window of ``features`` with its own kernel.

    ``features`` is (N, C, H, W) and ``kernels`` (N, G*k*k, Ho, Wo). With s the
    scale factor, t the stride, d the dilation, r = (k - 1) // 2 and
    g = c // (C // G)::

        out[n, c, y, x] = sum over i, j < k of
            kernels[n, g*k*k + i*k + j, y, x]
            * features[n, c, (y//s)*t + (i - r)*d, (x//s)*t + (j - r)*d]

    Taps that fall outside the input contribute zero. At most one of s and t
    exceeds 1: s upsamples (Ho, Wo = H*s, W*s: CARAFE), t downsamples
    (Ho, Wo = ceil(H/t), ceil(W/t): CARAFE++'s content-aware downsampling, and
    involution with its stride and dilation). Kernel channel g*k*k + i*k + j is
    row i, column j of group g's kernel: CARAFE's mask layout, and involution's
    weights (N, G, k*k, Ho, Wo) viewed as (N, G*k*k, Ho, Wo). Kernels are used as
    given (no normalisation). ``carafe(f, m, k, G, s)`` is
    ``reassemble(f, m, k, G, s)``, bit for bit.

    Args:
        features: (N, C, H, W) torch tensor, cupy or numpy array, or another DLPack
            array (JAX, ...).
        kernels: (N, G*k*k, Ho, Wo), same kind and device as ``features``.
        kernel_size: k, odd int >= 1.
        group_size: G, int >= 1 dividing C (channels c*C/G ... (c+1)*C/G - 1 share
            group c's kernels).
        scale_factor: s, int >= 1.
        stride: t, int >= 1 (window centers t input pixels apart).
        dilation: d, int >= 1 (taps d input pixels apart).

    Returns (N, C, Ho, Wo), with the dtypes, promotion, devices and autograd of
    :func:`carafe`; see :func:`reassemble_backward` for gradients of arrays.
    """
    front_end = _front_end("reassemble", features=features, kernels=kernels)
    return front_end.reassemble(
        features, kernels, kernel_size, group_size, scale_factor, stride, dilation
    )


def reassemble_backward(
    grad_output: Any,
    features: Any,
    kernels: Any,
    kernel_size: int,
    group_size: int = 1,
    scale_factor: int = 1,
    stride: int = 1,
    dilation: int = 1,
) -> tuple[Any, Any]:
    """Gradients ``(grad_features, grad_kernels)`` of :func:`reassemble`, for CuPy users.

    Also accepts torch tensors: it then calls the same op autograd uses and
    returns plain values (not differentiable, even if the inputs require grad).
    """
    front_end = _front_end(
        "reassemble_backward", grad_output=grad_output, features=features, kernels=kernels
    )
    return front_end.reassemble_backward(
        grad_output, features, kernels, kernel_size, group_size, scale_factor, stride, dilation
    )


def decompositions() -> dict:
    """``{carafe_cupy::carafe_forward: standard-op version}`` for exporters.

    ``torch.export.export(model, args).run_decompositions(carafe_cupy.decompositions())``
    replaces every CARAFE and reassemble call (one op, strided and dilated or not)
    with Pad/Slice/Reshape/Mul/Add, which any exporter (ONNX included) understands.
    Needs torch.
    """
    from ._torch.export import decompositions as carafe_decompositions

    return carafe_decompositions()


def __getattr__(name: str) -> Any:
    import importlib

    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def carafe_from_logits(
    features: Any, logits: Any, kernel_size: int, group_size: int, scale_factor: int
) -> Any:
    """CARAFE with masks taken from raw encoder logits (N, G*k*k*s*s, H, W):
    pixel_shuffle and a softmax over each group's k*k taps are applied inside
    the kernels, as in CARAFEPack. torch tensors only; differentiable."""
    from ._torch.fused import carafe_from_logits as torch_carafe_from_logits

    return torch_carafe_from_logits(features, logits, kernel_size, group_size, scale_factor)
