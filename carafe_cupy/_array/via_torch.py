"""Host-memory DLPack arrays (numpy, JAX on the CPU, ...) through PyTorch.

Without the simulator the kernels cannot read host memory, and numpy has no
bfloat16, so such arrays are taken zero-copy with ``torch.from_dlpack`` and run
through the torch functions (the PyTorch CPU path; the simulated kernels when the
simulator is on). torch is imported only here, and only when such an array comes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import refs as _arrays

# Where torch.from_dlpack fails (a readonly or unsupported buffer), the message says why.
_DLPACK_ERRORS = (BufferError, RuntimeError, TypeError, ValueError)


def torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _as_tensors(where: str, values: dict[str, Any]) -> list[Any]:
    import torch

    tensors = []
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            tensors.append(value.detach())  # no autograd on the array side
            continue
        if isinstance(value, np.ndarray):
            _arrays.check_layout(where, name, value)
            if any(stride < 0 or stride % value.itemsize for stride in value.strides):
                # torch has no negative strides (its from_dlpack aborts the process on
                # them), and DLPack no uneven ones even along a size-1 axis: a copy
                value = np.ascontiguousarray(value)
        try:
            tensors.append(torch.from_dlpack(value))
        except _DLPACK_ERRORS as error:
            raise TypeError(
                f"{where}: {name} ({type(value).__module__}.{type(value).__name__}) cannot "
                f"be taken through DLPack: {error}"
            ) from error
    return tensors


def reassemble(where: str, inputs: dict[str, Any], params: tuple[int, ...]) -> Any:
    """The forward on torch tensors viewing ``inputs`` (features, kernels)."""
    from .._torch import functional as _torch_functional

    features, kernels = _as_tensors(where, inputs)
    return _torch_functional.reassemble(features, kernels, *params, where=where)


def reassemble_backward(
    where: str, inputs: dict[str, Any], params: tuple[int, ...]
) -> tuple[Any, Any]:
    """The gradients on torch tensors viewing ``inputs`` (grad_output, features, kernels)."""
    from .._torch import functional as _torch_functional

    grad_output, features, kernels = _as_tensors(where, inputs)
    return _torch_functional.reassemble_backward(
        grad_output, features, kernels, *params, where=where
    )
