"""The rest of ``mmcv.ops.carafe``'s public names, with mmcv's signatures.

``carafe``, ``carafe_naive``, ``CARAFE``, ``CARAFENaive`` and ``CARAFEPack``
live in the package itself; this module adds the autograd Functions and the two
initialisation helpers mmcv's module exports (from mmengine), so that replacing
``mmcv.ops.carafe`` (or ``mmcv.ops``) by ``carafe_cupy`` in an import line
changes nothing else. All of them are importable from ``carafe_cupy``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._core.validate import check_params
from ._torch import functional as _torch_functional


def _carafe_backward(
    grad_output: torch.Tensor, features: torch.Tensor, masks: torch.Tensor, params: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    # the op is differentiable, so backward(create_graph=True) works through .apply too
    dtype = torch.promote_types(features.dtype, masks.dtype)
    grad_features, grad_masks = _torch_functional.backward_op(
        grad_output.to(dtype), features.to(dtype), masks.to(dtype), *params
    )
    return grad_features.to(features.dtype), grad_masks.to(masks.dtype)


class CARAFEFunction(torch.autograd.Function):
    """``CARAFEFunction.apply(features, masks, kernel_size, group_size, scale_factor)``."""

    @staticmethod
    def forward(
        ctx: Any,
        features: torch.Tensor,
        masks: torch.Tensor,
        kernel_size: int,
        group_size: int,
        scale_factor: int,
    ) -> torch.Tensor:
        ctx.params = check_params(kernel_size, group_size, scale_factor)
        ctx.save_for_backward(features, masks)
        return _torch_functional.carafe(features, masks, *ctx.params)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        features, masks = ctx.saved_tensors
        grad_features, grad_masks = _carafe_backward(grad_output, features, masks, ctx.params)
        return grad_features, grad_masks, None, None, None


class CARAFENaiveFunction(CARAFEFunction):
    """mmcv's reference Function: same arguments, same results, same kernels here."""


def xavier_init(
    module: nn.Module, gain: float = 1, bias: float = 0, distribution: str = "normal"
) -> None:
    """Xavier-initialise ``module.weight`` (``distribution`` "normal" or "uniform")
    and fill ``module.bias`` with ``bias``; either may be absent or None."""
    initialisers = {"normal": nn.init.xavier_normal_, "uniform": nn.init.xavier_uniform_}
    if distribution not in initialisers:
        raise ValueError(
            f"xavier_init: distribution must be 'normal' or 'uniform', got {distribution!r}"
        )
    weight = getattr(module, "weight", None)
    if weight is not None:
        initialisers[distribution](weight, gain=gain)
    _fill_bias(module, bias)


def normal_init(module: nn.Module, mean: float = 0, std: float = 1, bias: float = 0) -> None:
    """Draw ``module.weight`` from N(mean, std²) and fill ``module.bias`` with ``bias``."""
    weight = getattr(module, "weight", None)
    if weight is not None:
        nn.init.normal_(weight, mean, std)
    _fill_bias(module, bias)


def _fill_bias(module: nn.Module, value: float) -> None:
    bias = getattr(module, "bias", None)
    if bias is not None:
        nn.init.constant_(bias, value)
