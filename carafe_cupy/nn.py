"""torch.nn modules over :func:`carafe_cupy.carafe`."""

from __future__ import annotations

import torch
from torch import nn

from ._torch_ops import carafe
from ._validate import check_params


class CARAFE(nn.Module):
    """``CARAFE(kernel_size, group_size, scale_factor)(features, masks)``."""

    def __init__(self, kernel_size: int, group_size: int, scale_factor: int) -> None:
        super().__init__()
        self.kernel_size, self.group_size, self.scale_factor = check_params(
            kernel_size, group_size, scale_factor
        )

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return carafe(features, masks, self.kernel_size, self.group_size, self.scale_factor)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, group_size={self.group_size}, "
            f"scale_factor={self.scale_factor}"
        )
